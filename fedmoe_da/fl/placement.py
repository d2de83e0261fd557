"""Placement: which process runs which party (docs/ARCHITECTURE.md §6).

The run loop (``simulation.py``) asks the placement which clients this process trains and evaluates
(``hosts``), gathers the round's training losses (``trained``) and history rows (``evaluated``) from every
process, makes every process hold the server's strategy state (``settle``) and picks the run folder this
process writes (``folder``); ``begin_round`` marks the start of each round. In one process every party is
here and all of it is a no-op: this base class. Under torchrun, ``distributed/placement.py`` does it for real.
"""
from __future__ import annotations


class Placement:
    """Every party in this process: each hook does nothing or returns its input."""

    def begin_round(self, rnd: int) -> None:
        """Round ``rnd`` starts (before sampling and training)."""

    def hosts(self, party: int) -> bool:
        """True if this process runs ``party``'s side (trains and evaluates client ``party``)."""
        return True

    def trained(self, train_loss: dict[int, float]) -> dict[int, float]:
        """The round's training losses (kept updates) of every participant, from every process."""
        return train_loss

    def settle(self, strategy) -> None:
        """After a round's communication: every process holds the server's strategy state."""

    def evaluated(self, rows: list[dict]) -> list[dict]:
        """The round's history rows of every client, from every process, in client order."""
        return rows

    def folder(self, folder):
        """The run folder as this process writes it."""
        return folder
