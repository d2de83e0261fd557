"""The Mixture-of-Experts layer: a router and E expert MLPs, dropless by default.

    logits = x W_g^T                       (T, E)   W_g: gate weight (E, d), the proxies
    w, idx = top-k(softmax(logits))        (T, k)   renormalised, ties -> lower index
    y[t]   = sum_j w[t, j] * expert_{idx[t, j]}(x[t])

Experts are stored stacked, ``w1`` (E, d, h), ``b1`` (E, h), ``w2`` (E, h, d_out),
``b2`` (E, d_out), so that expert e's parameters are the slices ``[e]`` of each
(parameter group ``expert[l][e]``) and a whole pool of experts aggregates with
one matrix product.

After every forward pass the layer keeps, for inspection and for the losses:

* ``layer.routing``: a :class:`Routing` with ``weights`` (T, k), ``indices``
  (T, k), ``logits`` (T, E), ``tokens_per_expert`` (E,) and ``dropped``
  (assignments beyond capacity);
* ``layer.aux_losses``: ``{"load_balance": ..., "z_loss": ...}`` (fp32 scalars; fp64 for a fp64 model);
* ``layer.aux_loss``: ``lb_coef * load_balance + z_coef * z_loss``, to add to the task loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backend import BACKENDS, Backend, dense_work, resolve_backend
from .router import load_balance_loss, routing_dtype, z_loss

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


@dataclass
class Routing:
    weights: Tensor            # (T, k) fp32 (fp64) routing weights (sum to 1 per token)
    indices: Tensor            # (T, k) int64 chosen experts
    logits: Tensor             # (T, E) gate logits
    tokens_per_expert: Tensor  # (E,) int64 assignments per expert
    dropped: int               # assignments dropped by the capacity limit (0 when dropless)


def moe_apply(backend: Backend, x: Tensor, gate: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, top_k: int,
              activation, capacity: int | None = None, mask: Tensor | None = None):
    """The layer's math on explicit parameters: x (T, d), gate (E, d), experts stacked as in ``MoELayer``.

    Returns y (T, d_out), weights (T, k), indices (T, k), logits (T, E), counts (E,) and the aux losses
    ``{"load_balance", "z_loss"}``. With the dense backend, leading dimensions are independent layers
    (x (G, T, d), gate (G, E, d), w1 (G, E, d, h), ...; losses (G,)): the stacked engine trains every
    client's layer at once with this same function (``fl/engine.py``), with ``mask`` (G, T) marking the
    real tokens of padded batches (the losses leave the rest out; padding goes last, so a capacity is
    filled by real tokens first).
    """
    logits = torch.matmul(x, gate.transpose(-1, -2))                     # (T, E)
    weights, indices = backend.topk_softmax(logits, top_k)               # (T, k), (T, k)
    y, counts = backend.dispatch(x, weights, indices, w1, b1, w2, b2, activation, capacity)   # (T, d_out), (E,)
    probs = torch.softmax(logits.to(routing_dtype(logits.dtype)), dim=-1)   # (T, E) for P_e
    aux = {"load_balance": load_balance_loss(probs, indices, gate.shape[-2], mask), "z_loss": z_loss(logits, mask)}
    return y, weights, indices, logits, counts, aux


class MoELayer(nn.Module):
    """Top-k routed MoE layer mapping (..., d_model) -> (..., d_out)."""

    def __init__(
        self, d_model: int, d_hidden: int, d_out: int | None = None, num_experts: int = 8, top_k: int = 2,
        backend: str = "auto", capacity_factor: float | None = None, lb_coef: float = 1e-2,
        z_coef: float = 1e-3, activation: str = "gelu",
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} is invalid: must be between 1 and num_experts ({num_experts})")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is invalid: must be one of {', '.join(BACKENDS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is invalid: must be one of {', '.join(ACTIVATIONS)}")
        d_out = d_model if d_out is None else d_out
        self.num_experts, self.top_k, self.backend = num_experts, top_k, backend
        self.capacity_factor, self.lb_coef, self.z_coef = capacity_factor, lb_coef, z_coef
        self.activation = ACTIVATIONS[activation]
        self.gate = nn.Linear(d_model, num_experts, bias=False)        # weight (E, d): the proxies
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, d_hidden))
        self.b1 = nn.Parameter(torch.empty(num_experts, d_hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_hidden, d_out))
        self.b2 = nn.Parameter(torch.empty(num_experts, d_out))
        for w, b, fan_in in ((self.w1, self.b1, d_model), (self.w2, self.b2, d_hidden)):
            bound = 1.0 / math.sqrt(fan_in)                                # nn.Linear's default init, per expert
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        self.routing: Routing | None = None
        self.aux_losses: dict[str, Tensor] = {}
        self.aux_loss: Tensor = torch.zeros(())

    @property
    def expert_param_names(self) -> tuple[str, ...]:
        """Names of the stacked expert parameters; slice [e] of each is expert e."""
        return ("w1", "b1", "w2", "b2")

    def capacity(self, num_tokens: int) -> int | None:
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)

    def forward(self, x: Tensor) -> Tensor:
        lead, d = x.shape[:-1], x.shape[-1]
        x = x.reshape(-1, d)                                             # (T, d)
        (T, d), (E, _, h), d_out = x.shape, self.w1.shape, self.w2.shape[2]
        capacity = self.capacity(T)
        work = dense_work(T, d, h, d_out, E) if capacity is None else None   # 'auto' picks dense only dropless
        backend = resolve_backend(self.backend, x.device, work)
        y, weights, indices, logits, counts, self.aux_losses = moe_apply(
            backend, x, self.gate.weight, self.w1, self.b1, self.w2, self.b2, self.top_k, self.activation, capacity)
        # a host sync: only paid when a capacity is set
        dropped = 0 if capacity is None else int((counts - capacity).clamp(min=0).sum())
        self.aux_loss = self.lb_coef * self.aux_losses["load_balance"] + self.z_coef * self.aux_losses["z_loss"]
        self.routing = Routing(weights.detach(), indices.detach(), logits.detach(), counts.detach(), dropped)
        return y.reshape(*lead, y.shape[-1])

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, top_k={self.top_k}, backend={self.backend!r}, "
                f"capacity_factor={self.capacity_factor}")
