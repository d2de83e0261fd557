"""The router: linear gate -> softmax -> top-k -> renormalised weights, and its aux losses.

For T tokens of width d and E experts the gate is an ``nn.Linear(d, E, bias=False)``;
its weight (E, d) is also FedMoE-DA's *proxy* matrix: row e says which inputs
expert e is routed, so it stands for the expert's data domain.

All routing math runs in fp32 whatever the input dtype.
"""
from __future__ import annotations

import torch
from torch import Tensor


def topk_softmax_reference(logits: Tensor, k: int, renormalize: bool = True) -> tuple[Tensor, Tensor]:
    """Softmax over experts, then the k largest probabilities per token.

    logits: (T, E). Returns weights (T, k) fp32 and indices (T, k) int64.
    Ties break to the lower expert index: a *stable* descending sort keeps
    equal probabilities in index order (``torch.topk`` promises no order).
    """
    probs = torch.softmax(logits.float(), dim=-1)                   # (T, E)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    weights, indices = sorted_p[:, :k], order[:, :k]                 # (T, k)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices


def expert_counts(indices: Tensor, num_experts: int) -> Tensor:
    """Assignments per expert, (T, k) -> (E,) int64. A scatter-add: unlike bincount, no host sync on CUDA."""
    flat = indices.reshape(-1)                                                    # (T*k,)
    return torch.zeros(num_experts, dtype=torch.int64, device=indices.device).scatter_add_(
        0, flat, torch.ones_like(flat))


def load_balance_loss(probs: Tensor, indices: Tensor, num_experts: int) -> Tensor:
    """Switch-style load balance, scaled so that perfect balance gives 1.

        L_lb = (E / k) * sum_e f_e * P_e
        f_e  = (tokens routed to e) / T      (sums to k over experts)
        P_e  = mean over tokens of softmax prob of e

    At perfect balance f_e = k/E and P_e = 1/E, so L_lb = 1. Only P_e carries
    gradient (the counts are not differentiable).
    """
    T, k = indices.shape
    f = expert_counts(indices, num_experts).float() / T                          # (E,)
    P = probs.float().mean(dim=0)                                                 # (E,)
    return (num_experts / k) * torch.sum(f * P)


def z_loss(logits: Tensor) -> Tensor:
    """Router z-loss: mean over tokens of logsumexp(logits)^2 (keeps logits small)."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
