"""The router: linear gate -> softmax -> top-k -> renormalised weights, and its aux losses.

For T tokens of width d and E experts the gate is an ``nn.Linear(d, E, bias=False)``;
its weight (E, d) is also FedMoE-DA's *proxy* matrix: row e says which inputs
expert e is routed, so it stands for the expert's data domain.

All routing math runs in fp32, or in the input's dtype if it is wider (fp64: the engines' equivalence tests
compare float64 runs, whose routing must not round to fp32).
"""
from __future__ import annotations

import torch
from torch import Tensor


def routing_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype routing math runs in: fp32, or ``dtype`` if it is wider (fp64)."""
    return torch.promote_types(dtype, torch.float32)


def topk_softmax_reference(logits: Tensor, k: int, renormalize: bool = True) -> tuple[Tensor, Tensor]:
    """Softmax over experts, then the k largest probabilities per token.

    logits: (..., T, E). Returns weights (..., T, k) in ``routing_dtype`` and indices (..., T, k) int64 (leading
    dimensions, e.g. the stacked engine's clients, are independent problems).
    Ties break to the lower expert index: a *stable* descending sort keeps
    equal probabilities in index order (``torch.topk`` promises no order).
    """
    probs = torch.softmax(logits.to(routing_dtype(logits.dtype)), dim=-1)   # (T, E)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    weights, indices = sorted_p[..., :k], order[..., :k]             # (T, k)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices


def expert_counts(indices: Tensor, num_experts: int, mask: Tensor | None = None) -> Tensor:
    """Assignments per expert, (..., T, k) -> (..., E) int64. Comparisons and a sum: unlike bincount, no host
    sync on CUDA, and leading dimensions (the stacked engine's clients) stay apart. ``mask`` (..., T): only
    the tokens where it is True count (the stacked engine pads batches)."""
    chosen = indices.unsqueeze(-1) == torch.arange(num_experts, device=indices.device)   # (..., T, k, E)
    if mask is not None:
        chosen = chosen & mask[..., None, None]
    return chosen.sum(dim=(-3, -2))


def load_balance_loss(probs: Tensor, indices: Tensor, num_experts: int, mask: Tensor | None = None) -> Tensor:
    """Switch-style load balance, scaled so that perfect balance gives 1.

        L_lb = (E / k) * sum_e f_e * P_e
        f_e  = (tokens routed to e) / T      (sums to k over experts)
        P_e  = mean over tokens of softmax prob of e

    At perfect balance f_e = k/E and P_e = 1/E, so L_lb = 1. Only P_e carries
    gradient (the counts are not differentiable). With ``mask`` (..., T), T counts only the tokens where it
    is True (padding left out).
    """
    T, k = indices.shape[-2:]                                                     # leading dims: one loss each
    acc = routing_dtype(probs.dtype)
    if mask is None:
        f = expert_counts(indices, num_experts).to(acc) / T                       # (E,)
        P = probs.to(acc).mean(dim=-2)                                            # (E,)
    else:
        valid = mask.sum(dim=-1, keepdim=True).clamp(min=1)                       # (..., 1)
        f = expert_counts(indices, num_experts, mask).to(acc) / valid
        P = torch.where(mask.unsqueeze(-1), probs.to(acc), 0.0).sum(dim=-2) / valid
    return (num_experts / k) * torch.sum(f * P, dim=-1)


def z_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Router z-loss: mean over tokens of logsumexp(logits)^2 (keeps logits small); ``mask`` as in load_balance_loss."""
    # (..., T) leading dims: one loss each
    lse2 = torch.logsumexp(logits.to(routing_dtype(logits.dtype)), dim=-1).pow(2)
    if mask is None:
        return lse2.mean(dim=-1)
    return torch.where(mask, lse2, 0.0).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
