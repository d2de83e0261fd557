"""Which dispatch backend runs a forward pass: the registry of names and the rule behind ``auto``.

    torch   sort-based, the readable reference (``reference.py``); runs everywhere
    dense   every expert on every token, masked (``dense.py``): no loop over experts, no host sync
    triton  the sort-based ops as Triton kernels (``triton_dispatch.py``); CUDA, or CPU tensors in the interpreter
    auto    triton on CUDA (torch if Triton does not import); elsewhere dense when no capacity is set
            and the problem is small (``dense_work <= DENSE_MAX_WORK``), torch otherwise

Why that rule: on a CPU the sort path pays a fixed cost per forward and
backward (a sort, E small matmuls per layer, a Python loop) of roughly a
millisecond at E = 8, while the dense path pays E/k times the expert FLOPs.
The default workload (one token per image, 16-64 images, d = h = 64) is far
below the crossover, a ViT's 1040 tokens far above; ``benchmarks/moe_cpu.py``
measures both and the crossover behind ``DENSE_MAX_WORK``. 'auto' with a
capacity keeps the sort path, which drops tokens without computing them.

This module sits above the implementations and is the only one that chooses
between them; the implementations import nothing from it.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .dense import dense_dispatch
from .reference import TORCH_OPS, DispatchOps, sort_dispatch
from .router import topk_softmax_reference

BACKENDS = ("auto", "torch", "dense", "triton")
# 'auto' off CUDA takes dense when dense_work(...), the multiply-adds of every expert on every token,
# is at most this (crossover measured with benchmarks/moe_cpu.py --sweep, one CPU thread).
DENSE_MAX_WORK = 2**24


@dataclass(frozen=True)
class Backend:
    """A way to run the layer: the router's ``topk_softmax`` (logits, k) -> weights, indices, then
    ``dispatch`` (x, weights, indices, w1, b1, w2, b2, activation, capacity) -> y (T, d_out), counts (E,)."""

    name: str
    topk_softmax: Callable[..., tuple[Tensor, Tensor]]
    dispatch: Callable[..., tuple[Tensor, Tensor]]


def _sort_backend(name: str, ops: DispatchOps) -> Backend:
    return Backend(name, ops.topk_softmax, functools.partial(sort_dispatch, ops))


TORCH = _sort_backend("torch", TORCH_OPS)
DENSE = Backend("dense", topk_softmax_reference, dense_dispatch)


@functools.lru_cache(maxsize=None)
def triton_available() -> tuple[bool, str]:
    """(True, '') if the Triton backend can run here, else (False, why). Checked once per process."""
    try:
        from . import triton_dispatch  # noqa: F401
    except Exception as exc:  # ImportError, or Triton failing to find a driver
        return False, f"triton cannot be imported ({type(exc).__name__}: {exc})"
    return True, ""


@functools.lru_cache(maxsize=None)
def _triton() -> Backend:
    from .triton_dispatch import TRITON_OPS
    return _sort_backend("triton", TRITON_OPS)


def dense_work(tokens: int, d_model: int, d_hidden: int, d_out: int, num_experts: int) -> int:
    """Multiply-adds of the dense path, every expert on every token: E * T * (d_model + d_out) * d_hidden."""
    return num_experts * tokens * (d_model + d_out) * d_hidden


def resolve_backend(name: str, device: torch.device, work: int | None = None) -> Backend:
    """A backend name from ``BACKENDS`` -> the :class:`Backend` that runs a forward pass on ``device``.

    ``work``: the forward pass's :func:`dense_work`, or None when 'auto' must not pick dense
    (a capacity is set, or the size is unknown). Only 'auto' looks at it.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is invalid: must be one of {', '.join(BACKENDS)}")
    if name == "auto" and device.type != "cuda":
        return DENSE if work is not None and work <= DENSE_MAX_WORK else TORCH
    if name == "torch":
        return TORCH
    if name == "dense":
        return DENSE
    ok, why = triton_available()
    if name == "auto":
        return _triton() if ok else TORCH
    if not ok:
        raise RuntimeError(f"backend='triton' is unavailable: {why}")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before Triton is imported")
    return _triton()
