"""Which dispatch backend runs a forward pass: the registry of names and the rule behind ``auto``.

    torch   sort-based, the readable reference (``reference.py``); runs everywhere
    triton  the same ops as Triton kernels (``triton_dispatch.py``); CUDA, or CPU tensors in the interpreter
    auto    triton on CUDA (torch if Triton does not import), torch elsewhere

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

from .reference import TORCH_OPS, DispatchOps, sort_dispatch

BACKENDS = ("auto", "torch", "triton")


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


def resolve_backend(name: str, device: torch.device) -> Backend:
    """A backend name from ``BACKENDS`` -> the :class:`Backend` that runs a forward pass on ``device``."""
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is invalid: must be one of {', '.join(BACKENDS)}")
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return TORCH
    ok, why = triton_available()
    if name == "auto":
        return _triton() if ok else TORCH
    if not ok:
        raise RuntimeError(f"backend='triton' is unavailable: {why}")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before Triton is imported")
    return _triton()
