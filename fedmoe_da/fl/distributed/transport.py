"""The torchrun transport: the skeleton of ``fl/transport.py`` with real messages (docs/ARCHITECTURE.md §5, §6).

deliver: src's rank packs the payload (``wire.pack``) and sends it point to point to dst's rank; nothing moves
when both live on one rank (dst gets a clone, as in process). judge: on dst's rank only, exactly as in
process. agree: dst's rank broadcasts the outcomes (accepted, numel, bytes, the reason) to every rank, so
every rank writes the same ledger rows and takes the same branch wherever a strategy tests ``got is None``.
A control payload (``wire.is_control``: FedMoE-DA's rows of A) decides which transfers follow, so its content
travels with the outcome and every rank returns dst's rows; where the server sends, the expected shapes are
rank 0's (they depend on A). Elsewhere than dst's rank an accepted payload is a clone of this rank's own view
(right names and shapes, used only on behalf of parties hosted elsewhere).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...config import ExperimentConfig
from ..transport import SERVER, CommLedger, Outcome, Payload, Shapes, Stacked, Transport
from .messages import Ranks
from .placement import clients_text, party_name, rank_of
from .wire import clone, is_control, pack, unpack


class DistributedTransport(Transport, Ranks):
    """Sends every payload whose two parties live on different ranks; every rank writes the same ledger."""

    def __init__(self, config: ExperimentConfig, ledger: CommLedger | None = None) -> None:
        Transport.__init__(self, ledger)
        Ranks.__init__(self, config)

    def _deliver_to(self, rnd: int, dst: int, channel: str, group: str, sent: dict[int, Payload],
                    expect: Shapes | None) -> tuple[dict[int, Payload] | None, dict[int, Shapes | None]]:
        b = rank_of(dst, self.world)
        if len(sent) == 1:
            src = next(iter(sent))
            who = f"{party_name(src)} (rank {rank_of(src, self.world)})"
        else:
            who = clients_text(list(sent))
        self.where = f"round {rnd}, {channel} {group} from {who} to {party_name(dst)} (rank {b})"
        pending = [self._isend_buffer(pack(tensors, self._extra(src, expect), self.comm), b)
                   for src, tensors in sent.items() if self.rank == rank_of(src, self.world) != b]
        received, expects = None, dict.fromkeys(sent, expect)
        if self.rank == b:
            received = {}
            for src, tensors in sent.items():
                received[src], expects[src] = self._receive(src, rank_of(src, self.world), b, tensors, expect)
        for work in pending:
            self._wait(work, b)
        return received, expects

    def _extra(self, src: int, expect) -> dict:
        """What travels in the header beside the tensors: the server's expectation when it sends (it may depend on
        the server state, real on rank 0 only)."""
        if src == SERVER and expect is not None:
            return {"expect": {n: list(s) for n, s in expect.items()}}
        return {}

    def _receive(self, src: int, a: int, b: int, tensors: Payload, expect) -> tuple[Payload, dict | None]:
        """On dst's rank: what arrived from src's rank ``a`` and the shapes to check it against."""
        if a == b:
            return clone(tensors), expect
        received, extra = unpack(self._recv_buffer(a), self.device)
        if src == SERVER:
            expect = extra.get("expect")
        return received, expect

    def _outcome(self, received: Payload, problem: str | None, group: str) -> Outcome:
        outcome = super()._outcome(received, problem, group)
        if is_control(group) and problem is None:
            outcome = outcome._replace(content=pack(received))
        return outcome

    def agree(self, dst: int, outcomes: list[Outcome] | None, n: int) -> list[Outcome]:
        """dst's rank broadcasts its outcomes to every rank."""
        return self.announce(rank_of(dst, self.world), outcomes, n)

    def _stand_in(self, tensors: Payload, outcome: Outcome) -> Payload:
        """The control content dst got, or a clone of this rank's own view."""
        return unpack(outcome.content, self.device)[0] if outcome.content is not None else clone(tensors)

    def send_stacked(self, rnd: int, channel: str, batch: Stacked, screen=None) -> tuple[dict[str, Tensor], list[bool]]:
        """One ``send`` per row: each transfer is its own message between two ranks (same rows, same order)."""
        received = {n: torch.zeros_like(x) for n, x in batch.tensors.items()}
        accepted = []
        for t in range(len(batch.src)):
            keys = {batch.key(t, n): n for n in batch.tensors}
            row_screen = None if screen is None else (
                lambda got, t=t, keys=keys: screen({n: got[k][None] for k, n in keys.items()}, torch.tensor([t]))[0])
            got = self.send(rnd, batch.src[t], batch.dst[t], channel, batch.group[t],
                            {k: batch.tensors[n][t] for k, n in keys.items()},
                            {k: batch.tensors[n].shape[1:] for k, n in keys.items()}, row_screen)
            if got is not None:
                for k, n in keys.items():
                    received[n][t] = got[k]
            accepted.append(got is not None)
        return received, accepted
