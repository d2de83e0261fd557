"""The run folder seen from each rank (docs/ARCHITECTURE.md §6, §9): rank 0 writes it, as in process, plus the
client ranks' states in each checkpoint; a client rank reads it (to resume) but never writes."""
from __future__ import annotations

from ..run_folder import RunFolder


class RankFolder(RunFolder):
    """The run folder of one rank: ``ranks`` carries the messages, ``hosts(k)`` says if client k is this rank's."""

    def __init__(self, path, ranks, hosts) -> None:
        super().__init__(path)
        self.ranks, self.hosts = ranks, hosts


class ServerFolder(RankFolder):
    """Rank 0's run folder: as in process, plus the client ranks' states in each checkpoint."""

    def save_checkpoint(self, payload: dict) -> None:
        r = self.ranks
        r.where = f"round {payload.get('round')}: collecting client states for the checkpoint"
        states = list(payload["states"])
        for rank in range(1, r.world):
            for k, state in r.recv_object_from(rank).items():
                states[k] = state
        super().save_checkpoint({**payload, "states": states})

    def truncate(self, sizes, last_round) -> None:
        super().truncate(sizes, last_round)
        self.ranks.where = "resuming (the run folder cut back to its checkpoint)"
        self.ranks.barrier()   # the client ranks read the tables after this


class ClientFolder(RankFolder):
    """A client rank's view of the run folder: it reads (to resume) but never writes."""

    def start(self, config, clients) -> None:
        pass

    def append(self, name, rows) -> None:
        pass

    def save_matrices(self, matrices, rnd) -> None:
        pass

    def finish(self, summary) -> None:
        pass

    def save_checkpoint(self, payload: dict) -> None:
        r = self.ranks
        r.where = f"round {payload.get('round')}: sending client states for the checkpoint"
        mine = {k: {n: v.clone() for n, v in s.items()}       # rows of the stacked states: clones travel alone
                for k, s in enumerate(payload["states"]) if self.hosts(k)}
        r.send_object_to(mine, 0)

    def truncate(self, sizes, last_round) -> None:
        self.ranks.where = "resuming (waiting for rank 0 to cut the run folder back)"
        self.ranks.barrier()
