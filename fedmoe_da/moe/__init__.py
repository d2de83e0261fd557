"""Mixture-of-Experts: router, experts, the MoE layer, aux losses, dispatch backends."""
from .dispatch import RoutingIndex, resolve_backend, triton_available
from .layer import MoELayer, Routing
from .router import load_balance_loss, topk_softmax_reference, z_loss

__all__ = ["MoELayer", "Routing", "RoutingIndex", "resolve_backend", "triton_available",
           "topk_softmax_reference", "load_balance_loss", "z_loss"]
