"""Client states: a client's model is a dict of tensors, not a module.

One model workspace is shared by the whole simulation; a client's state is
loaded into it, trained and copied out (memory stays flat over rounds: N
states, one model). A parameter group (``models.param_groups``) names which
parts of a state travel together; ``read_group`` / ``write_group`` turn a group
of a state into a payload (tensor name -> tensor, names from ``models.names``)
and back.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models import ParamRef
from ..models.names import tensor_key

State = dict[str, Tensor]


def get_state(model: nn.Module) -> State:
    """A detached copy of the model's parameters (a client's state)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def load_state(model: nn.Module, state: State) -> None:
    """Copy ``state`` into the model's parameters in place (no new module)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(state[n])


def read_group(state: State, refs: list[ParamRef]) -> dict[str, Tensor]:
    """The tensors of one group, keyed by ``names.tensor_key(key, slot)``."""
    return {tensor_key(r.key, r.slot): state[r.key] if r.slot is None else state[r.key][r.slot] for r in refs}


def write_group(state: State, refs: list[ParamRef], tensors: dict[str, Tensor]) -> None:
    """Write a group's tensors (as returned by read_group) back into ``state`` in place."""
    for r in refs:
        value = tensors[tensor_key(r.key, r.slot)]
        if r.slot is None:
            state[r.key] = value
        else:
            state[r.key][r.slot] = value


def is_finite_state(state: State) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values())
