"""Sort-based dispatch, the readable torch reference: group tokens by expert, run each
expert on a contiguous block of rows, put the results back.

It runs everywhere and is the oracle for the other backends: the Triton kernels
(``triton_dispatch.py``) implement the same four ops with the same signatures,
and the dense path (``dense.py``) must give the same results.

With T tokens, k choices each and E experts there are T*k *assignments*. The
flat assignment a = t*k + j (token t, choice j) goes to expert indices[t, j].

    routing_index  -> counts (E,), offsets (E+1,), token_of (T*k,), pos_of (T, k)
    permute        x (T, d)       -> x_perm (T*k, d)   rows grouped by expert
    experts        x_perm         -> y_perm (T*k, d_out) one block per expert
    combine        y_perm, w (T,k) -> y (T, d_out)     y[t] = sum_j w[t,j] y_perm[pos_of[t,j]]

Rows inside an expert's block are ordered by flat assignment index (stable
by token), so results do not depend on a backend's thread schedule, and a
capacity C keeps the C earliest tokens of each expert.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .router import expert_counts, topk_softmax_reference


@dataclass
class RoutingIndex:
    """Where every (token, choice) assignment lives in expert-contiguous order."""

    counts: Tensor    # (E,)   int64, assignments per expert
    offsets: Tensor   # (E+1,) int64, expert e owns rows offsets[e]:offsets[e+1]
    token_of: Tensor  # (T*k,) int64, source token of each permuted row
    pos_of: Tensor    # (T, k) int64, permuted row of assignment (t, j)


def routing_index_reference(indices: Tensor, num_experts: int) -> RoutingIndex:
    """Stable argsort of the flat expert ids: rows of one expert become contiguous."""
    T, k = indices.shape
    flat = indices.reshape(-1)                                       # (T*k,)
    order = torch.argsort(flat, stable=True)                         # (T*k,) permuted row -> flat a
    counts = expert_counts(indices, num_experts)                     # (E,)
    offsets = F.pad(torch.cumsum(counts, 0), (1, 0))                 # (E+1,)
    pos_of = torch.empty_like(order)
    pos_of[order] = torch.arange(order.numel(), device=order.device)  # inverse permutation
    return RoutingIndex(counts, offsets, order // k, pos_of.view(T, k))


def permute_reference(x: Tensor, index: RoutingIndex) -> Tensor:
    """Gather token rows into expert order: (T, d) -> (T*k, d). Autograd sums the k copies back."""
    return x[index.token_of]


def combine_reference(y_perm: Tensor, weights: Tensor, index: RoutingIndex) -> Tensor:
    """Un-permute and sum over k with the routing weights, accumulating in fp32 (or fp64): -> (T, d_out)."""
    acc = torch.promote_types(y_perm.dtype, torch.float32)
    picked = y_perm[index.pos_of].to(acc)                            # (T, k, d_out)
    y = (picked * weights.to(acc).unsqueeze(-1)).sum(dim=1)          # (T, d_out)
    return y.to(y_perm.dtype)


def run_experts(
    x_perm: Tensor, index: RoutingIndex, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
    activation: Callable[[Tensor], Tensor], capacity: int | None = None,
) -> Tensor:
    """Each expert e is a two-layer MLP applied to its block of rows.

    w1 (E, d, h), b1 (E, h), w2 (E, h, d_out), b2 (E, d_out). With a capacity,
    only the first ``capacity`` rows of each block (the earliest tokens) are
    computed; the rest stay zero (dropped).
    """
    outs = []
    counts = index.counts.tolist()   # one host sync; the loop is over experts, not tokens
    # unbind once: indexing w1[e] per expert would make autograd allocate a full (E, ...) gradient per expert
    W1, B1, W2, B2 = (t.unbind(0) for t in (w1, b1, w2, b2))
    start = 0
    for e, n in enumerate(counts):
        keep = n if capacity is None else min(n, capacity)
        block = x_perm[start:start + keep]                           # (n_e, d)
        h = activation(torch.addmm(B1[e], block, W1[e]))             # (n_e, h)
        outs.append(torch.addmm(B2[e], h, W2[e]))                    # (n_e, d_out)
        if keep < n:
            outs.append(x_perm.new_zeros(n - keep, w2.shape[2]))
        start += n
    if not outs:
        return x_perm.new_zeros(0, w2.shape[2])
    return torch.cat(outs, dim=0)                                    # (T*k, d_out)


@dataclass(frozen=True)
class DispatchOps:
    """The four ops of sort-based dispatch, one implementation each: ``TORCH_OPS`` here, ``TRITON_OPS`` in the
    kernels."""

    topk_softmax: Callable[..., tuple[Tensor, Tensor]]     # logits (T, E), k -> weights (T, k) fp32, indices (T, k)
    routing_index: Callable[[Tensor, int], RoutingIndex]   # indices (T, k), E -> RoutingIndex
    permute: Callable[[Tensor, RoutingIndex], Tensor]      # x (T, d) -> x_perm (T*k, d)
    combine: Callable[[Tensor, Tensor, RoutingIndex], Tensor]  # y_perm (T*k, d_out), w (T, k) -> y (T, d_out)


TORCH_OPS = DispatchOps(topk_softmax_reference, routing_index_reference, permute_reference, combine_reference)


def sort_dispatch(
    ops: DispatchOps, x: Tensor, weights: Tensor, indices: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
    activation: Callable[[Tensor], Tensor], capacity: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Route (T, d) tokens through their k experts with ``ops``: -> y (T, d_out), counts (E,) assignments per expert."""
    index = ops.routing_index(indices, w1.shape[0])
    x_perm = ops.permute(x, index)                                   # (T*k, d)
    y_perm = run_experts(x_perm, index, w1, b1, w2, b2, activation, capacity)  # (T*k, d_out)
    return ops.combine(y_perm, weights, index), index.counts         # (T, d_out), (E,)
