"""Dense-masked dispatch: every expert on every token in one batched matmul, then a masked weighted sum.

    gate[t, e] = w[t, j] if e = idx[t, j] else 0          (T, E)      the top-k weights, scattered
    H          = act(x W1[e] + b1[e])   for all e at once  (E, T, h)   one baddbmm
    Y          = H W2[e] + b2[e]                           (E, T, d_out) one baddbmm
    y[t]       = sum_e gate[t, e] Y[e, t]                  (T, d_out)

It does E/k times the expert FLOPs of the sort-based path (``reference.py``),
but in a handful of kernels, with no sort, no loop over experts and no host
sync, so it wins when the problem is small: one token per image, a few dozen
images, tiny experts (the rule that picks it is in ``backend.py``). Results
equal the sort path's: each token gets only the experts it was routed to, and
the experts it was not routed to get exactly zero gradient from it (their gate
is 0). Like the combine of the reference it sums in fp32 (or fp64).

With a capacity C, an assignment is dropped when C earlier tokens already went
to the same expert (tokens in order, as in the sort path):

    rank[t, e] = #{t' < t routed to e} = cumsum_t(routed)[t, e] - 1,   kept iff rank < C
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def dense_dispatch(
    x: Tensor, weights: Tensor, indices: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
    activation: Callable[[Tensor], Tensor], capacity: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(T, d) tokens through all E experts, kept where routed: -> y (T, d_out), counts (E,) assignments per expert.

    weights, indices (T, k) from the router; w1 (E, d, h), b1 (E, h), w2 (E, h, d_out), b2 (E, d_out).
    """
    (T, d), E = x.shape, w1.shape[0]
    acc = torch.promote_types(x.dtype, torch.float32)
    routed = torch.zeros(T, E, dtype=torch.bool, device=x.device).scatter_(1, indices, True)     # (T, E)
    counts = routed.sum(0)                                                                        # (E,)
    gate = torch.zeros(T, E, dtype=acc, device=x.device).scatter(1, indices, weights.to(acc))    # (T, E)
    if capacity is not None:
        rank = torch.cumsum(routed, 0) - 1                                                        # (T, E)
        gate = gate * (rank < capacity)
    h = activation(torch.baddbmm(b1.unsqueeze(1), x.expand(E, T, d), w1))                        # (E, T, h)
    y_all = torch.baddbmm(b2.unsqueeze(1), h, w2)                                                 # (E, T, d_out)
    y = (gate.T.unsqueeze(-1) * y_all.to(acc)).sum(0)                                             # (T, d_out)
    return y.to(x.dtype), counts
