"""Client states: a client's model is a dict of tensors, not a module.

One model workspace is shared by the whole simulation; a client's state is
loaded into it, trained and copied out (memory stays flat over rounds: N
states, one model). The runner keeps the N states stacked for the whole run
(``ClientStates``: one tensor per parameter, client first), and strategies
index them as a list of states. A parameter group (``models.param_groups``) names which
parts of a state travel together; ``read_group`` / ``write_group`` turn a group
of a state into a payload (tensor name -> tensor, names from ``models.names``)
and back.
"""
from __future__ import annotations

from collections.abc import MutableMapping, Sequence

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


class ClientStates(Sequence):
    """Every client's state for the whole run, stacked: one tensor per parameter name, client first (N, ...).

    Strategies index it like a list of states: ``states[k]`` is client k's state, a dict-like view whose
    tensors are rows of the stacked tensors (``ClientState``). Writing through the view
    (``states[k][name] = t``, ``states[k][name][slot] = t``, ``write_group``) and ``states[k] = new_state``
    copy into the rows in place, so nothing is allocated per client and round, and the engine and Eq. 11 can
    read every client's tensor at once (``stacked``). Reading gives views: clone what must not change.

    A checkpoint of ``[dict(s) for s in states]`` (``torch.save``) stores each stacked tensor once, as the views
    share their storage; loading gives dicts of tensors again.
    """

    def __init__(self, stacked: dict[str, Tensor]) -> None:
        sizes = {t.shape[0] for t in stacked.values()}
        if len(sizes) != 1:
            raise ValueError(f"stacked tensors must share their leading (client) size, got {sorted(sizes)}")
        self.stacked = stacked
        self._len = sizes.pop()

    @classmethod
    def from_states(cls, states: list[State]) -> "ClientStates":
        return cls({n: torch.stack([s[n] for s in states]) for n in states[0]})

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self._len))]
        if not -self._len <= k < self._len:
            raise IndexError(f"client {k} out of range: there are {self._len} clients")
        return ClientState(self, k % self._len)

    def __setitem__(self, k: int, state: State) -> None:
        """Client k's whole state becomes ``state`` (copied into its rows; it must name every tensor)."""
        if set(state) != set(self.stacked):
            raise ValueError(f"client {k}: a state must hold exactly the tensors {sorted(self.stacked)}, "
                             f"got {sorted(state)}")
        view = self[k]
        for n, t in state.items():
            view[n] = t


class ClientState(MutableMapping):
    """Client k's state inside a ``ClientStates``: ``[name]`` is a view of row k, assignment copies into it."""

    def __init__(self, owner: ClientStates, k: int) -> None:
        self.owner, self.k = owner, k

    def __getitem__(self, name: str) -> Tensor:
        return self.owner.stacked[name][self.k]

    def __setitem__(self, name: str, value: Tensor) -> None:
        row = self.owner.stacked[name][self.k]
        if tuple(value.shape) != tuple(row.shape):
            raise ValueError(f"client {self.k}: {name} has shape {tuple(value.shape)}, "
                             f"the state holds {tuple(row.shape)}")
        with torch.no_grad():
            row.copy_(value)

    def __delitem__(self, name: str) -> None:
        raise TypeError("a client's state keeps every parameter: it cannot delete one")

    def __iter__(self):
        return iter(self.owner.stacked)

    def __len__(self) -> int:
        return len(self.owner.stacked)

    def __repr__(self) -> str:
        return f"ClientState(client={self.k}, {len(self)} tensors)"
