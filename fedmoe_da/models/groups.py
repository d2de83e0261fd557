"""Parameter groups: which parameters of a model travel together (docs/ARCHITECTURE.md §2).

Per MoE layer l, in ``model.moe_layers`` order (names from ``names.py``):

* ``gate[l]``: the router's weight (E, d), whose rows are the experts' proxies;
* ``expert[l][e]``: slice ``[e]`` of the layer's stacked w1, b1, w2, b2;
* ``head``: the final classifier outside the MoE layers (ViT only);
* ``backbone``: every other parameter.

Every parameter is in exactly one group. A group is a list of
:class:`ParamRef` (state key, slot): slot None means the whole tensor, slot e
means ``state[key][e]``.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import nn

from ..moe import MoELayer
from .names import BACKBONE, HEAD, expert_group, gate_group


class ParamRef(NamedTuple):
    key: str
    slot: int | None = None


def moe_prefixes(model: nn.Module) -> list[str]:
    """Module names of the model's MoE layers, in ``model.moe_layers`` order."""
    names = {id(m): name for name, m in model.named_modules() if isinstance(m, MoELayer)}
    return [names[id(m)] for m in model.moe_layers]  # type: ignore[attr-defined]


def param_groups(model: nn.Module) -> dict[str, list[ParamRef]]:
    """Group name -> the parameters it holds (see the module docstring)."""
    groups: dict[str, list[ParamRef]] = {BACKBONE: []}
    taken: set[str] = set()
    for index, (prefix, layer) in enumerate(zip(moe_prefixes(model), model.moe_layers)):  # type: ignore[attr-defined]
        groups[gate_group(index)] = [ParamRef(f"{prefix}.gate.weight")]
        taken.add(f"{prefix}.gate.weight")
        for e in range(layer.num_experts):
            groups[expert_group(index, e)] = [ParamRef(f"{prefix}.{p}", e) for p in layer.expert_param_names]
        taken.update(f"{prefix}.{p}" for p in layer.expert_param_names)
    head = [ParamRef(n) for n, _ in model.named_parameters() if n.startswith(f"{HEAD}.")]
    if head:
        groups[HEAD] = head
        taken.update(r.key for r in head)
    groups[BACKBONE] = [ParamRef(n) for n, _ in model.named_parameters() if n not in taken]
    return groups
