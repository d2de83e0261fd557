"""Transport and communication ledger: every byte that moves between two parties goes through here.

A strategy never counts bytes itself. It calls ``transport.send(...)`` with the
tensors that would cross the link; the transport hands back what the receiver
gets and writes one ledger row: (round, src, dst, channel, group, numel,
bytes, accepted). ``bytes`` is ``numel * element_size`` summed over the
tensors actually sent. Parties are client ids (0..N-1) and ``SERVER`` (-1).

The receiver validates what arrives against the shapes it expects: a payload
with a missing or wrong-shaped tensor, or a NaN/Inf, is *rejected* (the row is
still written, since the bytes did move, with accepted=False) and recorded in
``ledger.rejections``; ``send`` then returns None and the strategy carries on
without it. A *screen* (``robust.py``) can reject an intact payload the same
way: ``send(..., screen=f)`` asks ``f(received)`` for a reason, and ``gather``
(several senders, one receiver that judges them together, e.g. the server
against the median of the round's uploads) asks ``screen(received_by_src)``
for the reason of each rejected sender.

``InProcessTransport`` is the simulator's: it clones tensors (so a receiver
can never alias a sender's state). The distributed runner's transport sends
them for real and writes the same rows.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd
import torch
from torch import Tensor

SERVER = -1
CHANNELS = ("server-up", "server-down", "p2p")
LEDGER_COLUMNS = ["round", "src", "dst", "channel", "group", "numel", "bytes", "accepted"]
REJECTION_COLUMNS = ["round", "src", "dst", "channel", "group", "reason"]

Payload = dict[str, Tensor]
Screen = Callable[[Payload], "str | None"]
GroupScreen = Callable[[dict[int, Payload]], dict[int, str]]


def payload_problem(tensors: Payload, expect: dict[str, torch.Size] | None) -> str | None:
    """Why a received payload is unusable (one line), or None if it is fine."""
    if expect is not None:
        if set(tensors) != set(expect):
            return f"tensors {sorted(tensors)} do not match the expected {sorted(expect)}"
        for name, shape in expect.items():
            if tuple(tensors[name].shape) != tuple(shape):
                return f"{name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}"
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"{name} contains NaN or Inf"
    return None


class CommLedger:
    """Rows of every transfer, and of every rejected payload.

    ``rejected`` also holds what happened at a client without a transfer: channel
    ``local`` (the simulator discarded a non-finite local update) and ``dropout``
    (a participant dropped after local training and sent nothing: ``Strategy.answering``).
    """

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.rejected: list[tuple] = []

    def record(self, round: int, src: int, dst: int, channel: str, group: str, tensors: Payload,
               accepted: bool = True) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"channel={channel!r} is invalid: must be one of {', '.join(CHANNELS)}")
        numel = sum(t.numel() for t in tensors.values())
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        self.rows.append((round, src, dst, channel, group, numel, nbytes, accepted))

    def reject(self, round: int, src: int, dst: int, channel: str, group: str, reason: str) -> None:
        self.rejected.append((round, src, dst, channel, group, reason))

    def to_frame(self, start: int = 0) -> pd.DataFrame:
        """The transfers from row ``start`` on (all by default)."""
        return pd.DataFrame(self.rows[start:], columns=LEDGER_COLUMNS)

    def rejections(self, start: int = 0) -> pd.DataFrame:
        """The rejections from row ``start`` on (all by default)."""
        return pd.DataFrame(self.rejected[start:], columns=REJECTION_COLUMNS)


class Transport:
    """Moves payloads between parties and writes the ledger. Subclasses implement ``_deliver``."""

    def __init__(self, ledger: CommLedger | None = None) -> None:
        self.ledger = ledger if ledger is not None else CommLedger()

    def _deliver(self, src: int, dst: int, tensors: Payload, group: str) -> Payload:
        """Move ``tensors`` (parameter group ``group``) from src to dst; return what dst got."""
        raise NotImplementedError

    def send(self, round: int, src: int, dst: int, channel: str, group: str, tensors: Payload,
             expect: dict[str, torch.Size] | None = None, screen: Screen | None = None) -> Payload | None:
        """Send ``tensors`` from src to dst; return what dst received, or None if dst rejected it.

        dst rejects a payload with missing, wrong-shaped or non-finite tensors, then one ``screen`` objects to.
        """
        received = self._deliver(src, dst, tensors, group)
        problem = payload_problem(received, expect)
        if problem is None and screen is not None:
            problem = screen(received)
        self._log(round, src, dst, channel, group, received, problem)
        return received if problem is None else None

    def gather(self, round: int, dst: int, channel: str, group: str, sent: dict[int, Payload],
               expect: dict[str, torch.Size] | None = None, screen: GroupScreen | None = None) -> dict[int, Payload]:
        """Each src in ``sent`` sends its payload to dst, which judges them together; returns the accepted ones.

        As ``send`` for each sender, then ``screen`` sees every intact payload at once and names the
        senders dst rejects (with reasons). Rows are written in the order of ``sent``.
        """
        received = {src: self._deliver(src, dst, tensors, group) for src, tensors in sent.items()}
        problems = {src: payload_problem(got, expect) for src, got in received.items()}
        if screen is not None:
            problems.update(screen({src: got for src, got in received.items() if problems[src] is None}))
        for src, got in received.items():
            self._log(round, src, dst, channel, group, got, problems[src])
        return {src: got for src, got in received.items() if problems[src] is None}

    def _log(self, round, src, dst, channel, group, received: Payload, problem: str | None) -> None:
        self.ledger.record(round, src, dst, channel, group, received, accepted=problem is None)
        if problem is not None:
            self.ledger.reject(round, src, dst, channel, group, problem)

    # ------------------------------------------------------------------ placement: which process runs which party
    # The runner's hooks. In one process every party is here and they change nothing; the distributed runner
    # (``distributed.py``) overrides them: each rank trains and evaluates its own clients, rank 0 writes the folder.
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
        """The run folder as this process writes it (distributed: rank 0 writes, the others only read)."""
        return folder


class InProcessTransport(Transport):
    """Hands cloned tensors over in one process. ``tamper`` (tests, teaching) may alter a payload in flight."""

    def __init__(self, ledger: CommLedger | None = None,
                 tamper: Callable[[int, int, str, Payload], Payload] | None = None) -> None:
        super().__init__(ledger)
        self.tamper = tamper

    def _deliver(self, src: int, dst: int, tensors: Payload, group: str) -> Payload:
        out = {name: t.detach().clone() for name, t in tensors.items()}
        return self.tamper(src, dst, group, out) if self.tamper else out
