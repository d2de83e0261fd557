"""Domains: visibly different versions of the same images.

Each function maps a float image batch (n, C, H, W) in [0, 1] to another in
[0, 1]. A dataset becomes multi-domain by giving every sample exactly one
domain and applying that domain's transform, so "domain-aware" aggregation
has something to be aware of on a laptop in seconds.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def original(x: Tensor, gen: torch.Generator) -> Tensor:
    return x


def rotate(x: Tensor, gen: torch.Generator) -> Tensor:
    """A quarter turn counter-clockwise (exact, no interpolation)."""
    return torch.rot90(x, k=1, dims=(-2, -1))


def invert(x: Tensor, gen: torch.Generator) -> Tensor:
    """Colour inversion: ink becomes background."""
    return 1.0 - x


def noise(x: Tensor, gen: torch.Generator, sigma: float = 0.3) -> Tensor:
    """Additive Gaussian pixel noise, clipped back to [0, 1]."""
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)


def blur(x: Tensor, gen: torch.Generator, passes: int = 2) -> Tensor:
    """Binomial 3x3 blur ([1, 2, 1] outer [1, 2, 1] / 16), applied per channel, ``passes`` times."""
    C = x.shape[1]
    k1 = torch.tensor([1.0, 2.0, 1.0])
    kernel = (torch.outer(k1, k1) / 16.0).expand(C, 1, 3, 3).contiguous()   # (C, 1, 3, 3)
    for _ in range(passes):
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=C)
    return x


DOMAIN_TRANSFORMS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "original": original, "rotate": rotate, "invert": invert, "noise": noise, "blur": blur,
}


def apply_domains(x: Tensor, domain: Tensor, names: tuple[str, ...], seed: int) -> Tensor:
    """Transform each sample by its domain: x (n, C, H, W), domain (n,) indices into ``names``."""
    gen = torch.Generator().manual_seed(seed)
    out = x.clone()
    for d, name in enumerate(names):
        rows = (domain == d).nonzero(as_tuple=True)[0]
        if rows.numel():
            out[rows] = DOMAIN_TRANSFORMS[name](x[rows], gen)
    return out
