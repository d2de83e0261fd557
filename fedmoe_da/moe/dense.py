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

import math
from typing import Callable

import torch
from torch import Tensor


def dense_dispatch(
    x: Tensor, weights: Tensor, indices: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
    activation: Callable[[Tensor], Tensor], capacity: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(T, d) tokens through all E experts, kept where routed: -> y (T, d_out), counts (E,) assignments per expert.

    weights, indices (T, k) from the router; w1 (E, d, h), b1 (E, h), w2 (E, h, d_out), b2 (E, d_out).
    Leading dimensions (the stacked engine's clients, ``fl/engine.py``) are independent layers: x (G, T, d),
    w1 (G, E, d, h), ... -> y (G, T, d_out), counts (G, E).
    """
    *lead, T, d = x.shape
    E, h, d_out = w1.shape[-3], w1.shape[-1], w2.shape[-1]
    acc = torch.promote_types(x.dtype, torch.float32)
    # comparisons rather than scatters: the same values, and torch.func.vmap batches them (the stacked engine)
    chosen = indices.unsqueeze(-1) == torch.arange(E, device=x.device)                           # (T, k, E)
    routed = chosen.any(-2)                                                                       # (T, E)
    counts = routed.sum(-2)                                                                       # (E,)
    gate = (chosen * weights.to(acc).unsqueeze(-1)).sum(-2)                                       # (T, E)
    if capacity is not None:
        rank = torch.cumsum(routed, -2) - 1                                                       # (T, E)
        gate = gate * (rank < capacity)
    n = E * math.prod(lead)                                                                       # batched layers
    xs = x.unsqueeze(-3).expand(*lead, E, T, d).reshape(n, T, d)                                  # (E, T, d)
    hid = activation(torch.baddbmm(b1.reshape(n, 1, h), xs, w1.reshape(n, d, h)))                # (E, T, h)
    y_all = torch.baddbmm(b2.reshape(n, 1, d_out), hid, w2.reshape(n, h, d_out))                 # (E, T, d_out)
    y_all = y_all.view(*lead, E, T, d_out)
    y = (gate.transpose(-1, -2).unsqueeze(-1) * y_all.to(acc)).sum(-3)                            # (T, d_out)
    return y.to(x.dtype), counts
