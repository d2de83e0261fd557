"""Explorers of the MoE layer (notebook 03): what a router decides, and where a trained run's tokens go.

    ex = router_explorer()                 # top-k and the logits' scale -> softmax, top-k weights, aux losses
    ex = routing_explorer(result)          # a home domain (or all, by domain) and a round -> routed token shares

The router explorer reuses the router's own functions on fixed random tokens; the
routing explorer only reads a run's history (``routed_l{l}_e{e}`` columns) and
clients table, so both redraw in well under a second.
"""
from __future__ import annotations

import ipywidgets as widgets
import torch

from .. import viz
from ..fl.summary import SimulationResult
from ..moe.router import load_balance_loss, topk_softmax_reference, z_loss
from ..widgets import Explorer

BY_DOMAIN = "all, by domain"
"""The routing explorer's first choice: one row per home domain instead of one per client."""


def toy_tokens(seed: int = 0, tokens: int = 12, d_model: int = 8,
               num_experts: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (T, d), gate weight (E, d)): random tokens and a random gate, the same for a seed."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_model, generator=gen)                              # (T, d)
    gate = torch.randn(num_experts, d_model, generator=gen) / d_model ** 0.5     # (E, d), nn.Linear's scale
    return x, gate


def plot_router(x: torch.Tensor, gate: torch.Tensor, top_k: int, scale: float = 1.0):
    """The router on tokens x with gate weight ``scale`` x gate: softmax, renormalised top-k, aux losses in the
    title (viz's (fig, axes, df))."""
    if not 1 <= top_k <= gate.shape[0]:
        raise ValueError(f"top_k={top_k} is invalid: must be between 1 and num_experts ({gate.shape[0]})")
    logits = scale * x @ gate.T                                                  # (T, E)
    probs = torch.softmax(logits, dim=-1)                                        # (T, E)
    weights, indices = topk_softmax_reference(logits, top_k)                     # (T, k), (T, k)
    lb = float(load_balance_loss(probs, indices, gate.shape[0]))
    fig, axes, df = viz.plot_token_routing(probs, weights, indices)
    fig.suptitle(f"top_k={top_k}, logit scale {scale:.3g}: load balance {lb:.3f} (1 = balanced), "
                 f"z-loss {float(z_loss(logits)):.3f}", fontsize=10)
    fig.tight_layout()
    return fig, axes, df


def router_explorer(seed: int = 0, tokens: int = 12, d_model: int = 8, num_experts: int = 4) -> Explorer:
    """top_k and a scale of the gate logits (sharper or flatter softmax) on fixed random tokens."""
    x, gate = toy_tokens(seed, tokens, d_model, num_experts)
    controls = {
        "top_k": widgets.IntSlider(value=min(2, num_experts), min=1, max=num_experts, description="top_k"),
        "scale": widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1.5, step=0.1, description="logit scale"),
    }
    return Explorer(lambda top_k, scale: plot_router(x, gate, top_k, scale), controls,
                    "The router: softmax over experts, top-k, renormalised weights")


def routing_explorer(result: SimulationResult, layer: int = 0) -> Explorer:
    """A home domain (or all of them, one row per domain) and a round -> the share of test tokens per expert."""
    history, clients = result.history, result.clients
    domains = list(dict.fromkeys(clients.sort_values("home_domain")["home_domain_name"]))
    last = int(history["round"].max())
    controls = {
        "domain": widgets.Dropdown(options=[BY_DOMAIN, *domains], value=BY_DOMAIN, description="domain"),
        "round": widgets.IntSlider(value=last, min=int(history["round"].min()), max=last, description="round"),
    }

    def plot(domain: str, round: int):
        if domain == BY_DOMAIN:
            return viz.plot_routing_by_domain(history, clients, round, layer)
        return viz.plot_routing(history, round, layer, clients=clients, domain=domain)

    return Explorer(plot, controls, "Where each domain's test tokens go in the trained run")


__all__ = ["BY_DOMAIN", "toy_tokens", "plot_router", "router_explorer", "routing_explorer"]
