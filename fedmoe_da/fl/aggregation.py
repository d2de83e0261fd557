"""Aggregation math: FedAvg, and FedMoE-DA's expert aggregation matrix (Eq. 8-11).

The FedMoE-DA pool is every pair i = (client k, slot e) of one MoE layer, M = N x E
pairs. Pair i has parameters theta_i (expert e of client k) and a proxy pi_i
(row e of client k's gate weight). Proxies that point the same way route the
same inputs, so their experts serve the same data domain.
"""
from __future__ import annotations

import torch
from torch import Tensor

TIE_TOLERANCE = 1e-6
"""Correlations within this of the selection threshold count as ties and are kept (Eq. 9)."""


def fedavg(tensors: list[Tensor], weights: list[float] | Tensor) -> Tensor:
    """Weighted mean sum_k w_k x_k / sum_k w_k (weights: usually each client's training-set size)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    w = (w / w.sum()).to(torch.float32)
    stacked = torch.stack([t.float() for t in tensors])                        # (N, ...)
    return torch.tensordot(w, stacked, dims=1).to(tensors[0].dtype)


def correlation(proxies: Tensor) -> Tensor:
    """Eq. 8: R_ij = cos(pi_i, pi_j) over the whole pool. proxies (M, d) -> R (M, M).

    R_ii is 1 by definition (also for an all-zero proxy, which is orthogonal to all others).
    """
    z = torch.nn.functional.normalize(proxies.double(), dim=1)                 # (M, d) unit rows
    R = z @ z.T                                                                # (M, M)
    R.fill_diagonal_(1.0)
    return R


def aggregation_matrix(proxies: Tensor, P: int, tau: float) -> Tensor:
    """The row-stochastic (M, M) matrix A of Eq. 8-10 for proxies (M, d).

    Row i puts weight on the expert itself and its P most correlated experts in
    the pool (intra- and inter-client, any slot), softmax-weighted by R / tau.
    Ties at the threshold are all kept, so a row may hold more than P + 1
    entries. P = 0 gives the identity; P >= M - 1 uses the whole pool.
    """
    if P < 0 or tau <= 0:
        raise ValueError(f"P={P}, tau={tau} are invalid: need P >= 0 and tau > 0")
    M = proxies.shape[0]
    R = correlation(proxies)                                                   # Eq. 8, (M, M)
    if P == 0:
        return torch.eye(M, dtype=torch.float32)
    # Eq. 9: S_i = { j : R_ij >= (P+1)-th largest value of row i } (row i contains i itself)
    threshold = R.topk(min(P + 1, M), dim=1).values[:, -1:]                    # (M, 1)
    selected = R >= threshold - TIE_TOLERANCE                                  # (M, M) bool
    # Eq. 10: a_ij = exp(R_ij / tau) / sum_{l in S_i} exp(R_il / tau), 0 outside S_i
    logits = (R / tau).masked_fill(~selected, float("-inf"))
    return torch.softmax(logits, dim=1).float()                                # (M, M), rows sum to 1


def aggregate_experts(A: Tensor, thetas: Tensor) -> Tensor:
    """Eq. 11: theta_i <- sum_j a_ij theta_j, from the pre-update thetas (synchronous).

    A (M, M) or the (m, M) rows of some pairs; thetas (M, ...) -> (m, ...).
    """
    flat = thetas.reshape(thetas.shape[0], -1).float()                         # (M, p)
    return (A.float() @ flat).reshape(A.shape[0], *thetas.shape[1:]).to(thetas.dtype)


def drop_absent(weights: Tensor, present: Tensor) -> Tensor:
    """Zero the weights of absent peers and renormalise the row(s); weights (..., M), present (..., M) bool.

    Each FedMoE-DA row holds its own expert (always present), so the sum never vanishes.
    """
    kept = weights * present
    return kept / kept.sum(dim=-1, keepdim=True)
