"""Eq. 8-11 as a run computes them: row blocks, a sparse A, Eq. 11 split over stacked clients and received experts.

The readable references are ``aggregation.py`` (dense (M, M), one equation a
line); this module computes the same numbers at pool sizes where dense would
not fit, and ``tests/test_aggregation_scaled.py`` compares the two on random
inputs in float64. What differs from the references, and why:

* Eq. 8-10 run a block of rows at a time (``row_blocks``): at 1,000 clients x
  8 experts one float64 (M, M) matrix is 512 MB.
* A is returned as a sparse COO tensor: a row holds about P + 1 non-zeros, so
  the softmax runs over the selected entries only.
* ``min_correlation`` (not in the paper) also drops every j != i with
  R_ij <= min_correlation: with degenerate proxies (orthogonal or all-zero
  rows) the (P+1)-th largest value is a tie at 0 shared by most of the pool,
  and Eq. 9 then keeps the whole pool.
* Eq. 11 (``aggregate_split``) reads the pre-update experts from where they
  are, the participants' stacked states and the experts received peer to peer,
  as two sparse products instead of one product over a concatenated pool.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .aggregation import TIE_TOLERANCE, aggregate_experts

ROW_BLOCK_ELEMENTS = 2**22   # pool-sized matrices are built this many elements (rows x M) at a time


def row_blocks(M: int) -> list[slice]:
    """Row slices of an (M, M) matrix, each of at most ``ROW_BLOCK_ELEMENTS`` elements."""
    step = max(1, ROW_BLOCK_ELEMENTS // max(M, 1))
    return [slice(r, min(r + step, M)) for r in range(0, M, step)]


def correlation_rows(proxies: Tensor, rows: slice) -> Tensor:
    """Rows ``rows`` (m, M) of Eq. 8's R for proxies (M, d), float64 (``aggregation.correlation``)."""
    z = torch.nn.functional.normalize(proxies.double(), dim=1)                 # (M, d) unit rows
    R = z[rows] @ z.T                                                          # (m, M)
    i = torch.arange(R.shape[0])
    R[i, i + rows.start] = 1.0
    return R


def sparse_aggregation_matrix(proxies: Tensor, P: int, tau: float, min_correlation: float | None = None,
                              dtype: torch.dtype = torch.float32) -> Tensor:
    """``aggregation.aggregation_matrix`` (Eq. 8-10) as a coalesced sparse COO (M, M) of ``dtype``, a block of rows
    at a time; ``min_correlation``: the guard above (None: Eq. 9 as published)."""
    if P < 0 or tau <= 0:
        raise ValueError(f"P={P}, tau={tau} are invalid: need P >= 0 and tau > 0")
    M = proxies.shape[0]
    parts = []
    for rows in row_blocks(M):                                                 # rows are independent
        if P == 0:                                                             # only the expert itself
            i = torch.arange(rows.start, rows.stop, device=proxies.device)
            parts.append((i, i, torch.ones(len(i), dtype=dtype, device=proxies.device)))
            continue
        R = correlation_rows(proxies, rows)                                    # Eq. 8, (m, M)
        top = R.topk(min(P + 1, M), dim=1).values                              # (m, P+1), largest first
        selected = R >= top[:, -1:] - TIE_TOLERANCE                            # Eq. 9, (m, M) bool
        if min_correlation is not None:                                        # the guard
            own = (torch.arange(rows.start, rows.stop, device=R.device)[:, None]
                   == torch.arange(M, device=R.device)[None, :])
            selected &= (R > min_correlation + TIE_TOLERANCE) | own
        r, c = selected.nonzero(as_tuple=True)                                 # (nnz,) row by row
        e = torch.exp((R[r, c] - top[r, 0]) / tau)                             # Eq. 10 numerators over the row max
        total = torch.zeros(R.shape[0], dtype=e.dtype, device=R.device).index_add_(0, r, e)   # (m,) per row
        parts.append((r + rows.start, c, (e / total[r]).to(dtype)))            # rows sum to 1
    r, c, v = (torch.cat(p) for p in zip(*parts)) if parts else (torch.zeros(0, dtype=torch.long),) * 2 + (
        torch.zeros(0, dtype=dtype),)
    return torch.sparse_coo_tensor(torch.stack([r, c]), v, (M, M), check_invariants=True).coalesce()


def drop_absent(weights: Tensor, present: Tensor) -> Tensor:
    """Zero the weights of absent peers and renormalise the row(s); weights (..., M), present (..., M) bool.

    Each FedMoE-DA row holds its own expert (always present), so the sum never vanishes.
    """
    kept = weights * present
    return kept / kept.sum(dim=-1, keepdim=True)


def aggregate_split(r: Tensor, s: Tensor, w: Tensor, m: int, own: dict[str, Tensor],
                    received: dict[str, Tensor]) -> dict[str, Tensor]:
    """Eq. 11 (``aggregation.aggregate_experts``) for m rows given by their non-zeros (r, s, w), (nnz,) each, over
    the pool [own; received] without building it: column s < n is own[name][s] ((n, ...) per tensor name), column
    n + t is received[name][t] ((T, ...)). Each result is in its tensor's dtype, computed in its promotion with
    float32: one sparse product over the own experts plus one over the received."""
    n = next(iter(own.values())).shape[0]
    T = next(iter(received.values())).shape[0]
    is_own = s < n

    def sparse(keep: Tensor, offset: int, width: int) -> Tensor:                # (m, width)
        return torch.sparse_coo_tensor(torch.stack([r[keep], s[keep] - offset]), w[keep], (m, width),
                                       check_invariants=True).coalesce()

    W_own, W_got = sparse(is_own, 0, n), sparse(~is_own, n, T)
    out = {}
    for name, thetas in own.items():
        # Eq. 11, theta_i <- sum_j a_ij theta_j, split by where theta_j is: an own expert or one received
        new = aggregate_experts(W_own, thetas)                                          # (m, ...)
        if T:
            new += aggregate_experts(W_got, received[name])
        out[name] = new
    return out

