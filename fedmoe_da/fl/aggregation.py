"""FedMoE-DA's Eq. 8-11, as the paper writes them: dense, one equation a line (docs/ARCHITECTURE.md §7).

The pool is every pair i = (client k, slot e) of one MoE layer, M = N x E pairs
ordered (client, slot). Pair i has parameters theta_i (expert e of client k)
and a proxy pi_i (row e of client k's gate, or a transform of it:
``proxies.py``). Proxies that point the same way route the same inputs, so
their experts serve the same data domain.

These functions are the references: short, (M, M) and dense, for a student to
read beside the paper. What a run uses (row blocks, sparse A, the zero-correlation
guard, Eq. 11 split over stacked clients and received experts) is
``aggregation_scaled.py``, tested against them.
"""
from __future__ import annotations

import torch
from torch import Tensor

TIE_TOLERANCE = 1e-6
"""Correlations within this of the selection threshold count as ties and are kept (Eq. 9)."""


def correlation(proxies: Tensor) -> Tensor:
    """Eq. 8 for proxies (M, d) -> R (M, M), float64; R_ii = 1 (also for an all-zero proxy)."""
    z = torch.nn.functional.normalize(proxies.double(), dim=1)                 # (M, d) unit rows
    # Eq. 8: R_ij = cos(pi_i, pi_j) = <pi_i, pi_j> / (||pi_i|| ||pi_j||)
    return (z @ z.T).fill_diagonal_(1.0)                                       # (M, M)


def selection(R: Tensor, P: int) -> Tensor:
    """Eq. 9 for R (M, M) -> S (M, M) bool; ties at the threshold are all kept, P = 0 is no aggregation."""
    top = R.topk(min(P + 1, R.shape[0]), dim=1).values[:, -1:]               # (M, 1) (P+1)-th largest of row i
    # Eq. 9: S_i = { j : R_ij >= the (P+1)-th largest value of row i }   (row i holds R_ii = 1 itself)
    return R >= top - TIE_TOLERANCE if P > 0 else torch.eye(R.shape[0], dtype=torch.bool)


def softmax_weights(R: Tensor, S: Tensor, tau: float) -> Tensor:
    """Eq. 10 for R and S (M, M) -> A (M, M), row-stochastic; exp((R - 1) / tau) = exp(R / tau) / exp(1 / tau)
    (the factor cancels, and R_ij <= R_ii = 1 keeps every exponent <= 0: nothing overflows)."""
    # Eq. 10: a_ij = exp(R_ij / tau) / sum_{l in S_i} exp(R_il / tau) for j in S_i, 0 outside S_i
    e = torch.where(S, torch.exp((R - 1.0) / tau), 0.0)                       # (M, M)
    return e / e.sum(dim=1, keepdim=True)


def aggregation_matrix(proxies: Tensor, P: int, tau: float) -> Tensor:
    """A (M, M) float64 of Eq. 8-10 for proxies (M, d): each expert, its P most correlated peers (any client, any
    slot; more on ties), softmax-weighted by R / tau. P = 0 gives the identity, P >= M - 1 the whole pool."""
    if P < 0 or tau <= 0:
        raise ValueError(f"P={P}, tau={tau} are invalid: need P >= 0 and tau > 0")
    R = correlation(proxies)                                                   # Eq. 8
    return softmax_weights(R, selection(R, P), tau)                            # Eq. 9, Eq. 10


def aggregate_experts(A: Tensor, thetas: Tensor) -> Tensor:
    """Eq. 11 for A (m, M) (all rows, or those of some pairs) and thetas (M, ...) -> (m, ...), in thetas' dtype
    (computed in its promotion with float32)."""
    dtype = torch.promote_types(thetas.dtype, torch.float32)
    flat = thetas.reshape(thetas.shape[0], -1).to(dtype)                       # (M, p)
    # Eq. 11: theta_i <- sum_j a_ij theta_j, from the pre-update thetas (synchronous)
    return (A.to(dtype) @ flat).reshape(A.shape[0], *thetas.shape[1:]).to(thetas.dtype)
