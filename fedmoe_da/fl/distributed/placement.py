"""The torchrun placement: which rank hosts what (docs/ARCHITECTURE.md §6).

Rank 0 is the server; ranks 1..R-1 host the clients, client k on rank 1 + k % (R - 1) (R = 1: rank 0 hosts
every party). Every rank runs the same loop, so a rank trains and evaluates only the clients it hosts; the
round's training losses and history rows are gathered to every rank; after each round's communication every
rank loads rank 0's ``strategy.state_dict()`` (``settle``: the server's real values, computed from the uploads
only rank 0 got); rank 0 writes the run folder (``folders.py``).
"""
from __future__ import annotations

import time

from ..placement import Placement
from ..run_folder import RunFolder
from ..transport import SERVER
from .folders import ClientFolder, ServerFolder


def rank_of(party: int, world: int) -> int:
    """The rank that hosts ``party``: 0 for the server, 1 + k % (R - 1) for client k (everything on 0 if R = 1)."""
    if party == SERVER or world == 1:
        return 0
    return 1 + party % (world - 1)


def party_name(party: int) -> str:
    return "the server" if party == SERVER else f"client {party}"


def clients_text(ids: list[int], most: int = 8) -> str:
    """'clients 1, 3' or, for many, 'clients 0, 2, 4, ... (100 clients)'."""
    shown = ", ".join(map(str, ids[:most]))
    return f"clients {shown}" if len(ids) <= most else f"clients {shown}, ... ({len(ids)} clients)"


class TorchrunPlacement(Placement):
    """This rank's share of the parties; ``ranks`` (the transport) carries the messages."""

    def __init__(self, ranks, num_clients: int) -> None:
        self.ranks, self.num_clients = ranks, num_clients
        self.rnd = 0                                 # the round under way
        self.round_end: list[float] = []             # perf_counter at the end of each round (``evaluated``)
        self.started: float | None = None            # at the first round's start

    def begin_round(self, rnd: int) -> None:
        if self.started is None:
            self.started = time.perf_counter()
        self.rnd = rnd

    def hosts(self, party: int) -> bool:
        return rank_of(party, self.ranks.world) == self.ranks.rank

    def hosted(self, rank: int) -> str:
        """What ``rank`` hosts, in words: 'the server', 'clients 1, 3'."""
        if rank == 0 and self.ranks.world > 1:
            return "the server"
        clients = [k for k in range(self.num_clients) if rank_of(k, self.ranks.world) == rank]
        text = clients_text(clients) if clients else "no clients"
        return f"the server and {text}" if rank == 0 else text

    def trained(self, train_loss: dict[int, float]) -> dict[int, float]:
        self.ranks.where = f"round {self.rnd}, sharing the training losses"
        merged: dict[int, float] = {}
        for part in self.ranks.all_gather_object(train_loss):
            merged.update(part)
        return merged

    def settle(self, strategy) -> None:
        """Every rank loads rank 0's strategy state."""
        if self.ranks.world == 1:
            return
        self.ranks.where = f"round {self.rnd}, sending the server state to the client ranks"
        state = strategy.state_dict() if self.ranks.rank == 0 else None
        state = self.ranks.broadcast_object(state, root=0)
        if self.ranks.rank != 0:
            strategy.load_state_dict(state)

    def evaluated(self, rows: list[dict]) -> list[dict]:
        self.ranks.where = f"round {self.rnd}, gathering the history rows"
        merged = [row for part in self.ranks.all_gather_object(rows) for row in part]
        self.round_end.append(time.perf_counter())
        return sorted(merged, key=lambda row: row["client"])

    def folder(self, folder: RunFolder) -> RunFolder:
        """Rank 0 writes the run folder; the others only read it (resume) and send their states to checkpoints."""
        return (ServerFolder if self.ranks.rank == 0 else ClientFolder)(folder.path, self.ranks, self.hosts)
