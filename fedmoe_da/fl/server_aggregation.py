"""The server's aggregate of one tensor over the clients' uploads: FedAvg's weighted mean, or a robust one.

``fedavg`` (McMahan et al. 2017) weights each client by its training-set size.
The robust aggregates (``coordinate_median``, ``trimmed_mean``) are
coordinate-wise and unweighted (Yin et al. 2018, "Byzantine-robust distributed
learning: towards optimal statistical rates"): a client's training-set size is
its own claim, so it gives no extra pull. They pair with the screens of
``robust.py`` (docs/ARCHITECTURE.md §12).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import SERVER_AGGREGATES

FEDAVG_CHUNK = 64   # clients stacked at once: at 1,000 clients one stack of a backbone weight is 260 MB


def fedavg(tensors: list[Tensor], weights: list[float] | Tensor) -> Tensor:
    """Weighted mean sum_k w_k x_k / sum_k w_k (weights: usually each client's training-set size): one weighted
    sum over the client dimension per ``FEDAVG_CHUNK`` clients. In the tensors' dtype, computed in its promotion
    with float32 (float64 stays float64)."""
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    w = torch.as_tensor(weights, dtype=torch.float64)
    w = (w / w.sum()).to(dtype)
    out = None
    for i in range(0, len(tensors), FEDAVG_CHUNK):
        stacked = torch.stack([t.to(dtype) for t in tensors[i:i + FEDAVG_CHUNK]])   # (n, ...)
        part = torch.tensordot(w[i:i + FEDAVG_CHUNK], stacked, dims=1)
        out = part if out is None else out + part
    return out.to(tensors[0].dtype)


def coordinate_median(tensors: list[Tensor]) -> Tensor:
    """Coordinate-wise median of n same-shaped tensors (numpy's: the mean of the two middle values if n is even)."""
    s = torch.stack([t.double() for t in tensors]).sort(dim=0).values         # (n, ...)
    n = s.shape[0]
    mid = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return mid.to(tensors[0].dtype)


def trimmed_mean(tensors: list[Tensor], fraction: float) -> Tensor:
    """Coordinate-wise mean after dropping the floor(fraction * n) smallest and largest values of each coordinate."""
    if not 0 <= fraction < 0.5:
        raise ValueError(f"fraction={fraction} is invalid: must be in [0, 0.5)")
    s = torch.stack([t.double() for t in tensors]).sort(dim=0).values         # (n, ...)
    n = s.shape[0]
    cut = math.floor(fraction * n)                                             # 2 * cut < n
    return s[cut:n - cut].mean(dim=0).to(tensors[0].dtype)


def server_aggregate(kind: str, tensors: list[Tensor], weights: list[float], trim_fraction: float) -> Tensor:
    """The server's aggregate of one tensor over the uploads: ``mean`` is FedAvg (weighted by ``weights``),
    ``trimmed_mean`` and ``median`` are coordinate-wise and unweighted."""
    if kind == "mean":
        return fedavg(tensors, weights)
    if kind == "trimmed_mean":
        return trimmed_mean(tensors, trim_fraction)
    if kind == "median":
        return coordinate_median(tensors)
    raise ValueError(f"server_aggregate={kind!r} is invalid: must be one of {', '.join(SERVER_AGGREGATES)}")
