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
without it.

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
    """Rows of every transfer, and of every rejected payload."""

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

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=LEDGER_COLUMNS)

    def rejections(self) -> pd.DataFrame:
        return pd.DataFrame(self.rejected, columns=REJECTION_COLUMNS)


class Transport:
    """Moves payloads between parties and writes the ledger. Subclasses implement ``_deliver``."""

    def __init__(self, ledger: CommLedger | None = None) -> None:
        self.ledger = ledger if ledger is not None else CommLedger()

    def _deliver(self, src: int, dst: int, tensors: Payload) -> Payload:
        raise NotImplementedError

    def send(self, round: int, src: int, dst: int, channel: str, group: str, tensors: Payload,
             expect: dict[str, torch.Size] | None = None) -> Payload | None:
        """Send ``tensors`` from src to dst; return what dst received, or None if dst rejected it."""
        received = self._deliver(src, dst, tensors)
        problem = payload_problem(received, expect)
        self.ledger.record(round, src, dst, channel, group, received, accepted=problem is None)
        if problem is not None:
            self.ledger.reject(round, src, dst, channel, group, problem)
            return None
        return received


class InProcessTransport(Transport):
    """Hands cloned tensors over in one process. ``tamper`` (tests, teaching) may alter a payload in flight."""

    def __init__(self, ledger: CommLedger | None = None,
                 tamper: Callable[[int, int, str, Payload], Payload] | None = None) -> None:
        super().__init__(ledger)
        self.tamper = tamper
        self._group = ""

    def send(self, round, src, dst, channel, group, tensors, expect=None):  # noqa: D102
        self._group = group
        return super().send(round, src, dst, channel, group, tensors, expect)

    def _deliver(self, src: int, dst: int, tensors: Payload) -> Payload:
        out = {name: t.detach().clone() for name, t in tensors.items()}
        return self.tamper(src, dst, self._group, out) if self.tamper else out
