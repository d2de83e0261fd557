"""The string keys this package uses for parameter groups, payload tensors and routing columns.

Built and parsed here only: nothing else formats ``"expert[0][3]"`` or splits it.

* parameter groups (docs/ARCHITECTURE.md §2): ``backbone``, ``head``, ``gate[l]``,
  ``expert[l][e]``, and FedMoE-DA's rows of the aggregation matrix ``A[l]``;
* a tensor inside a group payload: the state key, or ``key[slot]`` for slot
  ``slot`` of a stacked expert parameter;
* history columns of routed tokens: ``routed_l{l}_e{e}``.
"""
from __future__ import annotations

import re
from typing import NamedTuple

BACKBONE = "backbone"
HEAD = "head"
GATE = "gate"
EXPERT = "expert"
MATRIX = "A"
KINDS = (BACKBONE, HEAD, GATE, EXPERT, MATRIX)

_GROUP = re.compile(r"^(?P<kind>[A-Za-z]+)(?:\[(?P<layer>\d+)\])?(?:\[(?P<slot>\d+)\])?$")
_ROUTED = re.compile(r"^routed_l(?P<layer>\d+)_e(?P<slot>\d+)$")


class GroupName(NamedTuple):
    kind: str                 # one of KINDS
    layer: int | None = None  # MoE layer l (gate, expert, A)
    slot: int | None = None   # expert slot e (expert)


def gate_group(layer: int) -> str:
    """``gate[l]``: the router weight of MoE layer l, whose rows are the experts' proxies."""
    return f"{GATE}[{layer}]"


def expert_group(layer: int, slot: int) -> str:
    """``expert[l][e]``: slice e of layer l's stacked expert parameters."""
    return f"{EXPERT}[{layer}][{slot}]"


def matrix_group(layer: int) -> str:
    """``A[l]``: a client's rows of layer l's aggregation matrix (FedMoE-DA)."""
    return f"{MATRIX}[{layer}]"


def pool_key(layer: int) -> str:
    """``pool[l]``: the client ids of layer l's pool, in the row order of A[l] (run folder, matrices/)."""
    return f"pool[{layer}]"


def parse_group(name: str) -> GroupName:
    """'expert[0][3]' -> GroupName('expert', 0, 3); raises ValueError on a name this module did not build."""
    m = _GROUP.match(name)
    if m is None or m["kind"] not in KINDS:
        raise ValueError(f"group name {name!r} is invalid: expected one of backbone, head, gate[l], expert[l][e], A[l]")
    layer, slot = m["layer"], m["slot"]
    return GroupName(m["kind"], None if layer is None else int(layer), None if slot is None else int(slot))


def group_kind(name: str) -> str:
    """'expert[0][3]' -> 'expert', 'gate[1]' -> 'gate', 'backbone' -> 'backbone'."""
    return parse_group(name).kind


def tensor_key(key: str, slot: int | None) -> str:
    """Name of a tensor inside a group payload: the state key, or ``key[slot]`` for one slot of it."""
    return key if slot is None else f"{key}[{slot}]"


def routed_column(layer: int, slot: int) -> str:
    """History column: test tokens routed to expert ``slot`` of MoE layer ``layer``."""
    return f"routed_l{layer}_e{slot}"


def routed_columns(columns, layer: int) -> dict[str, int]:
    """The routed-token columns of ``layer`` among ``columns``: column name -> expert slot, in slot order."""
    found = {c: _ROUTED.match(c) for c in columns}
    picked = {c: int(m["slot"]) for c, m in found.items() if m is not None and int(m["layer"]) == layer}
    return dict(sorted(picked.items(), key=lambda item: item[1]))
