"""Fault injection for tests: ``FEDMOE_DA_KILL=RANK:ROUND[:SIGNAL]`` makes RANK send itself SIGNAL (KILL: dies;
STOP: hangs) at the start of ROUND, on the first attempt only (docs/ARCHITECTURE.md §6). It is a placement
installed only when the variable is set, so the send path knows nothing of it."""
from __future__ import annotations

import os
import signal
import sys

from .placement import TorchrunPlacement

KILL_ENV = "FEDMOE_DA_KILL"


def kill_spec(spec: str | None, rank: int, attempt: int) -> tuple[int, int] | None:
    """(round, signal) at which ``rank`` kills itself, from the variable's value; None if it does not."""
    if not spec or attempt != 0:
        return None
    who, rnd, *sig = spec.split(":")
    return (int(rnd), getattr(signal, f"SIG{sig[0] if sig else 'KILL'}")) if int(who) == rank else None


class KillSwitch:
    """Mixin before a placement: at the start of round ``at`` (or the first round after it) this process sends
    itself ``sig``, once."""

    def arm(self, at: int, sig: int) -> KillSwitch:
        self.kill_at, self.kill_signal = at, sig
        return self

    def begin_round(self, rnd: int) -> None:
        if getattr(self, "kill_at", None) is not None and rnd >= self.kill_at:
            self.kill_at = None
            sys.stderr.flush()
            os.kill(os.getpid(), self.kill_signal)
        super().begin_round(rnd)   # type: ignore[misc]


class KillingPlacement(KillSwitch, TorchrunPlacement):
    """The torchrun placement with the kill switch."""


def torchrun_placement(ranks, num_clients: int) -> TorchrunPlacement:
    """The placement of this rank: with the kill switch only when ``FEDMOE_DA_KILL`` names it."""
    spec = kill_spec(os.environ.get(KILL_ENV), ranks.rank, ranks.attempt)
    if spec is None:
        return TorchrunPlacement(ranks, num_clients)
    return KillingPlacement(ranks, num_clients).arm(*spec)
