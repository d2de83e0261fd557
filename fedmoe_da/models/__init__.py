"""Models (backbones + MoE layers) and their parameter groups.

Parameter groups (DESIGN section 4), per MoE layer l in ``model.moe_layers`` order:

* ``gate[l]``: the router's weight (E, d), whose rows are the experts' proxies;
* ``expert[l][e]``: slice ``[e]`` of the layer's stacked w1, b1, w2, b2;
* ``head``: the final classifier outside the MoE layers (ViT only);
* ``backbone``: every other parameter.

A group is a list of :class:`ParamRef` (state key, slot): slot None means the
whole tensor, slot e means ``state[key][e]``. Clients hold *states* (dicts of
tensors keyed like ``model.named_parameters()``), not model copies.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import ExperimentConfig
from ..moe import MoELayer
from .networks import CNNMoE, MLPMoE, MoEModel, ViTMoE

State = dict[str, Tensor]


class ParamRef(NamedTuple):
    key: str
    slot: int | None = None


def build(config: ExperimentConfig, input_shape: tuple[int, int, int], num_classes: int) -> MoEModel:
    """The model of ``config`` for inputs of ``input_shape`` (C, H, W)."""
    moe = dict(d_model=config.d_model, d_hidden=config.expert_hidden, num_experts=config.num_experts,
               top_k=config.top_k, backend=config.backend, capacity_factor=config.capacity_factor,
               lb_coef=config.lb_coef, z_coef=config.z_coef)
    if config.model == "cnn":
        return CNNMoE(input_shape, num_classes, moe)
    if config.model == "mlp":
        return MLPMoE(input_shape, num_classes, moe)
    return ViTMoE(input_shape, num_classes, moe, depth=config.moe_layers, patch_size=config.patch_size)


def moe_prefixes(model: nn.Module) -> list[str]:
    """Module names of the model's MoE layers, in ``model.moe_layers`` order."""
    names = {id(m): name for name, m in model.named_modules() if isinstance(m, MoELayer)}
    return [names[id(m)] for m in model.moe_layers]  # type: ignore[attr-defined]


def param_groups(model: nn.Module) -> dict[str, list[ParamRef]]:
    """Group name -> the parameters it holds (see the module docstring)."""
    groups: dict[str, list[ParamRef]] = {"backbone": []}
    taken: set[str] = set()
    for l, (prefix, layer) in enumerate(zip(moe_prefixes(model), model.moe_layers)):  # type: ignore[attr-defined]
        groups[f"gate[{l}]"] = [ParamRef(f"{prefix}.gate.weight")]
        taken.add(f"{prefix}.gate.weight")
        for e in range(layer.num_experts):
            groups[f"expert[{l}][{e}]"] = [ParamRef(f"{prefix}.{p}", e) for p in layer.expert_param_names]
        taken.update(f"{prefix}.{p}" for p in layer.expert_param_names)
    head = [ParamRef(n) for n, _ in model.named_parameters() if n.startswith("head.")]
    if head:
        groups["head"] = head
        taken.update(r.key for r in head)
    groups["backbone"] = [ParamRef(n) for n, _ in model.named_parameters() if n not in taken]
    return groups


def get_state(model: nn.Module) -> State:
    """A detached copy of the model's parameters (a client's state)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def load_state(model: nn.Module, state: State) -> None:
    """Copy ``state`` into the model's parameters in place (no new module)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(state[n])


def read_group(state: State, refs: list[ParamRef]) -> dict[str, Tensor]:
    """The tensors of one group, keyed ``key`` or ``key[slot]``."""
    return {(r.key if r.slot is None else f"{r.key}[{r.slot}]"): (state[r.key] if r.slot is None else state[r.key][r.slot])
            for r in refs}


def write_group(state: State, refs: list[ParamRef], tensors: dict[str, Tensor]) -> None:
    """Write a group's tensors (as returned by read_group) back into ``state`` in place."""
    for r in refs:
        name = r.key if r.slot is None else f"{r.key}[{r.slot}]"
        if r.slot is None:
            state[r.key] = tensors[name]
        else:
            state[r.key][r.slot] = tensors[name]


__all__ = ["build", "param_groups", "moe_prefixes", "ParamRef", "State", "get_state", "load_state",
           "read_group", "write_group", "MoEModel", "CNNMoE", "MLPMoE", "ViTMoE"]
