"""The peer-to-peer plan: which client fetches which (peer, slot) expert, and the round's graph.

After the server sends client k its rows of A (for its slots e: the pool pairs
(peer, slot) with a_ij > 0 and their weights), client k fetches from peers only
the *remote* experts it needs, each distinct (peer, slot) once, however many
of its rows use it. Its own experts (intra-client entries) cost nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import pandas as pd
import torch
from torch import Tensor


@dataclass
class ClientRows:
    """Client k's rows of one layer's A: entry n says slot ``row[n]`` takes ``weight[n]`` of (peer[n], slot[n])."""

    row: Tensor     # (nnz,) int64, the client's own slot e
    peer: Tensor    # (nnz,) int64, source client
    slot: Tensor    # (nnz,) int64, source slot
    weight: Tensor  # (nnz,) float32, a_ij
    version: int    # the refresh round this A was computed at
    _sources: list[tuple[int, int]] | None = field(default=None, init=False, repr=False, compare=False)

    def to_payload(self) -> dict[str, Tensor]:
        """What the server sends: the (row, peer, slot) indices and the weights."""
        return {"index": torch.stack([self.row, self.peer, self.slot], dim=1), "weight": self.weight}

    @classmethod
    def from_payload(cls, payload: dict[str, Tensor], version: int) -> "ClientRows":
        index = payload["index"]
        return cls(index[:, 0], index[:, 1], index[:, 2], payload["weight"], version)

    def sources(self) -> list[tuple[int, int]]:
        """The distinct (peer, slot) experts these rows use, sorted (the client's own included); computed once (the
        fetch plan, ``weight_matrix`` and Eq. 11 each read them every round)."""
        if self._sources is None:
            self._sources = sorted(set(zip(self.peer.tolist(), self.slot.tolist())))
        return self._sources

    def weight_matrix(self, num_experts: int) -> Tensor:
        """The rows as a dense (E, S) matrix over ``sources()``: entry (e, s) = a_ij."""
        col = {src: c for c, src in enumerate(self.sources())}
        W = torch.zeros(num_experts, len(col))                                    # (E, S)
        W[self.row, torch.tensor([col[src] for src in zip(self.peer.tolist(), self.slot.tolist())],
                                 dtype=torch.long)] = self.weight
        return W


def rows_for_client(A: Tensor, pool_clients: list[int], client: int, num_experts: int, version: int) -> ClientRows:
    """Client ``client``'s rows of A (M, M), dense or sparse (coalesced COO), over the pool ``pool_clients`` x
    slots, non-zeros only, row by row."""
    pos = pool_clients.index(client)
    first = pos * num_experts
    if A.is_sparse:
        (rows, cols), values = A.indices(), A.values()                        # sorted row by row
        lo, hi = torch.searchsorted(rows, torch.tensor([first, first + num_experts])).tolist()
        row, col, weight = rows[lo:hi] - first, cols[lo:hi], values[lo:hi]
        keep = weight != 0
        row, col, weight = row[keep], col[keep], weight[keep]
    else:
        block = A[first:first + num_experts]                                   # (E, M)
        row, col = block.nonzero(as_tuple=True)
        weight = block[row, col]
    peers = torch.tensor(pool_clients, dtype=torch.int64)[col // num_experts]
    return ClientRows(row, peers, col % num_experts, weight, version)


def fetch_plan(rows: ClientRows, client: int, present: set[int]) -> list[tuple[int, int]]:
    """The distinct remote (peer, slot) experts ``client`` fetches: present peers other than itself."""
    return [(p, s) for p, s in rows.sources() if p != client and p in present]


def p2p_graph(ledger: pd.DataFrame, rnd: int | None = None) -> nx.DiGraph:
    """Who fetched what from whom: edge peer -> client with ``bytes`` and ``experts`` (fetch count).

    Built from the ledger's accepted p2p rows of round ``rnd`` (all rounds if None).
    """
    rows = ledger[(ledger["channel"] == "p2p") & ledger["accepted"]]
    if rnd is not None:
        rows = rows[rows["round"] == rnd]
    g = nx.DiGraph()
    for (src, dst), part in rows.groupby(["src", "dst"]):
        g.add_edge(int(src), int(dst), bytes=int(part["bytes"].sum()), experts=len(part),
                   groups=sorted(part["group"].unique()))
    return g
