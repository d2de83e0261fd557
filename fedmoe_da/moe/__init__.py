"""Mixture-of-Experts: router, experts, the MoE layer, aux losses, dispatch backends.

    router.py           top-k softmax reference, aux losses
    reference.py        sort-based dispatch in torch: the readable reference of every backend
    dense.py            dense-masked dispatch: every expert on every token, one batched matmul (small problems)
    triton_dispatch.py  the sort-based ops as Triton kernels (imports only the references)
    backend.py          the backend registry and the 'auto' rule (imports the implementations)
    layer.py            the MoE layer (imports backend and router)
"""
from .backend import resolve_backend, triton_available
from .layer import MoELayer, Routing
from .reference import RoutingIndex
from .router import load_balance_loss, topk_softmax_reference, z_loss

__all__ = ["MoELayer", "Routing", "RoutingIndex", "resolve_backend", "triton_available",
           "topk_softmax_reference", "load_balance_loss", "z_loss"]
