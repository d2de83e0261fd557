"""Dispatch: group tokens by expert, run each expert on a contiguous block, put results back.

This is the readable torch reference (sort-based, runs everywhere). The Triton
backend (``triton_dispatch.py``) implements the same four operations with the
same signatures and is tested against these functions.

With T tokens, k choices each and E experts there are T*k *assignments*. The
flat assignment a = t*k + j (token t, choice j) goes to expert indices[t, j].

    routing_index  -> counts (E,), offsets (E+1,), token_of (T*k,), pos_of (T, k)
    permute        x (T, d)       -> x_perm (T*k, d)   rows grouped by expert
    experts        x_perm         -> y_perm (T*k, d_out) one block per expert
    combine        y_perm, w (T,k) -> y (T, d_out)     y[t] = sum_j w[t,j] y_perm[pos_of[t,j]]

Rows inside an expert's block are ordered by flat assignment index (stable
by token), so results do not depend on the backend's thread schedule.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .router import topk_softmax_reference


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
    counts = torch.bincount(flat, minlength=num_experts)             # (E,)
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


# --------------------------------------------------------------------------- backends

TORCH_OPS = SimpleNamespace(
    name="torch",
    topk_softmax=topk_softmax_reference,
    routing_index=routing_index_reference,
    permute=permute_reference,
    combine=combine_reference,
)


@functools.lru_cache(maxsize=None)
def triton_available() -> tuple[bool, str]:
    """(True, '') if the Triton backend can run here, else (False, why). Checked once per process."""
    try:
        from . import triton_dispatch  # noqa: F401
    except Exception as exc:  # ImportError, or Triton failing to find a driver
        return False, f"triton cannot be imported ({type(exc).__name__}: {exc})"
    return True, ""


def resolve_backend(name: str, device: torch.device) -> SimpleNamespace:
    """'torch' | 'triton' | 'auto' -> the four dispatch ops.

    'auto' takes Triton on CUDA when it imports, the torch reference otherwise.
    'triton' on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter).
    """
    if name == "torch":
        return TORCH_OPS
    if name not in ("triton", "auto"):
        raise ValueError(f"backend={name!r} is invalid: must be one of auto, torch, triton")
    if name == "auto" and device.type != "cuda":
        return TORCH_OPS
    ok, why = triton_available()
    if name == "auto":
        if ok:
            from . import triton_dispatch
            return triton_dispatch.TRITON_OPS
        return TORCH_OPS
    if not ok:
        raise RuntimeError(f"backend='triton' is unavailable: {why}")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before Triton is imported")
    from . import triton_dispatch
    return triton_dispatch.TRITON_OPS
