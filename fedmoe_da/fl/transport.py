"""Transport: every byte that moves between two parties goes through here.

Every transfer follows one skeleton (docs/ARCHITECTURE.md §5): deliver -> judge -> agree on the outcome
(an ``Outcome``) -> log. A strategy never counts bytes itself. It calls ``transport.send(...)`` with the
tensors that would cross the link; the transport hands back what the receiver
gets and writes one ledger row: (round, src, dst, channel, group, numel,
bytes, accepted), sized from the shapes and dtypes of the tensors actually
sent. Parties are client ids (0..N-1) and ``SERVER`` (-1).

The receiver validates what arrives against the shapes it expects: a payload
with a missing or wrong-shaped tensor, or a NaN/Inf, is *rejected* (the row is
still written, since the bytes did move, with accepted=False) and recorded in
``ledger.rejections``; ``send`` then returns None and the strategy carries on
without it. A *screen* (``robust.py``) can reject an intact payload the same
way: ``send(..., screen=f)`` asks ``f(received)`` for a reason, and ``gather``
(several senders, one receiver that judges them together, e.g. the server
against the median of the round's uploads) asks ``screen(received_by_src)``
for the reason of each rejected sender. Finiteness is checked once per call
(``payload_problems``): one stacked sum per tensor, moved to the host at once;
only a payload whose sum is not finite is looked at tensor by tensor, to name
the sender and the tensor (payloads delivered into one buffer, ``copy_payloads``,
are summed at once). The rows go to a ``CommLedger`` (``ledger.py``: compact columns).

``send_stacked`` moves many payloads of the same tensors at once (FedMoE-DA's
P2P fetches of one layer): row t of each stacked tensor is transfer t, checked
and logged exactly as ``send`` would, with one sum per tensor and row.

``InProcessTransport`` is the simulator's: it clones tensors (so a receiver
can never alias a sender's state); ``agree`` has nothing to do in one process. The torchrun transport
(``distributed/transport.py``) delivers real messages and broadcasts the outcomes, and writes the same rows.
"""
from __future__ import annotations

import math
from typing import Callable, Hashable, NamedTuple, TypeVar

import torch
from torch import Tensor

from .ledger import CHANNELS, LEDGER_COLUMNS, REJECTION_COLUMNS, CommLedger, payload_size

__all__ = ["SERVER", "CHANNELS", "LEDGER_COLUMNS", "REJECTION_COLUMNS", "CommLedger", "Payload", "Shapes",
           "payload_problem", "payload_problems", "copy_payloads", "Stacked", "Transfer", "Outcome", "Transport",
           "InProcessTransport"]

SERVER = -1

Payload = dict[str, Tensor]
Shapes = dict[str, "torch.Size | tuple[int, ...]"]
Screen = Callable[[Payload], "str | None"]
GroupScreen = Callable[[dict[int, Payload]], dict[int, str]]
K = TypeVar("K", bound=Hashable)


class Transfer(NamedTuple):
    """One payload of a batch delivered at once (``gather``'s uploads)."""
    src: int
    dst: int
    group: str
    tensors: Payload


def same_name(t: int, name: str) -> str:
    return name


class Stacked(NamedTuple):
    """Many transfers of the same tensors at once (``send_stacked``): transfer t sends row t of every tensor."""
    src: list[int]
    dst: list[int]
    group: list[str]
    tensors: dict[str, Tensor]                       # name -> (T, ...)
    key: Callable[[int, str], str] = same_name       # transfer t's payload key of a tensor (e.g. with its slot)


RowScreen = Callable[[dict[str, Tensor], Tensor], list]


# --------------------------------------------------------------------------- validation
def shape_problem(tensors: Payload, expect: Shapes | None) -> str | None:
    """Why a payload's names or shapes differ from ``expect`` (one line), or None."""
    if expect is None:
        return None
    if set(tensors) != set(expect):
        return f"tensors {sorted(tensors)} do not match the expected {sorted(expect)}"
    for name, shape in expect.items():
        if tuple(tensors[name].shape) != tuple(shape):
            return f"{name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}"
    return None


def finite_sums(tensors: list[Tensor]) -> list[bool]:
    """Whether each tensor is finite, in a few passes: True means it is; False means it may not be (look at it).

    Contiguous tensors that share a storage (the payloads of a batch delivered into one buffer:
    ``copy_payloads``) are summed at once over the part of the buffer they cover (a sum streams through memory;
    ``isfinite`` would write a mask as large as the buffer); if that sum is not finite (or the group is a single
    tensor), each tensor's sum is computed, in one stacked tensor of sums per device moved to the
    host at once. A NaN or Inf anywhere makes the sum NaN or Inf; a sum of huge finite values can overflow,
    hence "may not be".
    """
    finite = [True] * len(tensors)
    shared: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        key = (t.device, t.dtype, t.untyped_storage().data_ptr()) if t.is_contiguous() else (t.device, None, i)
        shared.setdefault(key, []).append(i)
    by_device: dict[torch.device, list[int]] = {}
    with torch.no_grad():
        for (device, _, _), idx in shared.items():
            if len(idx) > 1:
                lo = min(tensors[i].storage_offset() for i in idx)
                hi = max(tensors[i].storage_offset() + tensors[i].numel() for i in idx)
                region = tensors[idx[0]].as_strided((hi - lo,), (1,), lo)
                if math.isfinite(float(region.sum(dtype=torch.float64 if region.dtype == torch.float64
                                                  else torch.float32))):
                    continue
            by_device.setdefault(device, []).extend(idx)
        for idx in by_device.values():
            sums = torch.stack([tensors[i].sum(dtype=torch.float64 if tensors[i].dtype == torch.float64
                                               else torch.float32) for i in idx])   # (len(idx),)
            for i, s in zip(idx, sums.tolist()):
                finite[i] = math.isfinite(s)
    return finite


def copy_payloads(payloads: list[Payload]) -> list[Payload]:
    """Copies of the payloads, made at once: one buffer per dtype and device, each tensor a view into it (the
    batch is then checked for NaN/Inf in one pass: ``finite_sums``)."""
    tensors = [t for p in payloads for t in p.values()]
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    copies: list[Tensor] = [None] * len(tensors)  # type: ignore[list-item]
    with torch.no_grad():
        for idx in groups.values():
            flat = torch.cat([tensors[i].detach().reshape(-1) for i in idx])
            for i, part in zip(idx, flat.split([tensors[i].numel() for i in idx])):
                copies[i] = part.view(tensors[i].shape)
    out, it = [], iter(copies)
    for p in payloads:
        out.append({name: next(it) for name in p})
    return out


def payload_problems(received: dict[K, Payload], expects: dict[K, Shapes | None]) -> dict[K, str | None]:
    """Why each received payload is unusable (one line), or None if it is fine.

    Names and shapes first (``shape_problem``); then the floating tensors of every intact payload in one
    ``finite_sums``; a payload whose sums are not all finite is checked tensor by tensor, in its order, and the
    first tensor holding a NaN or Inf is named.
    """
    problems = {key: shape_problem(p, expects[key]) for key, p in received.items()}
    floats = [(key, name, t) for key, p in received.items() if problems[key] is None
              for name, t in p.items() if t.is_floating_point()]
    suspects: dict[K, list[tuple[str, Tensor]]] = {}
    for (key, name, t), ok in zip(floats, finite_sums([t for _, _, t in floats])):
        if not ok:
            suspects.setdefault(key, []).append((name, t))
    for key, tensors in suspects.items():
        bad = next((name for name, t in tensors if not bool(torch.isfinite(t).all())), None)
        if bad is not None:
            problems[key] = f"{bad} contains NaN or Inf"
    return problems


def payload_problem(tensors: Payload, expect: Shapes | None) -> str | None:
    """Why one received payload is unusable (one line), or None if it is fine (``payload_problems``)."""
    return payload_problems({0: tensors}, {0: expect})[0]


def _fits(out: dict[str, Tensor], t: int, keys: dict[str, str], got: Payload, views: Payload) -> bool:
    """Write row t of a stacked delivery from ``got`` (payload key -> tensor) into ``out`` if it has the stack's
    names and shapes (a tensor that ``is`` its row view in ``views`` is there already); False if it does not fit."""
    if set(got) != set(keys) or any(got[k].shape != out[n].shape[1:] for k, n in keys.items()):
        return False
    for k, n in keys.items():
        if got[k] is not views.get(k):
            out[n][t] = got[k]
    return True


# --------------------------------------------------------------------------- transports
class Outcome(NamedTuple):
    """What the receiver decided about one transfer; every process agrees on it, then logs it."""
    accepted: bool
    numel: int
    nbytes: int
    reason: str | None = None
    content: Tensor | None = None   # torchrun: a control payload's bytes, sent to every rank with the outcome


class Transport:
    """Moves payloads between parties and writes the ledger, in one skeleton (docs/ARCHITECTURE.md §5):
    deliver -> judge -> agree on the outcome -> log. Subclasses implement ``_deliver`` (and may move a batch at
    once: ``_deliver_many``, ``_deliver_stacked``); under torchrun ``_deliver_to`` and ``agree`` send messages."""

    def __init__(self, ledger: CommLedger | None = None) -> None:
        self.ledger = ledger if ledger is not None else CommLedger()

    def _deliver(self, src: int, dst: int, tensors: Payload, group: str) -> Payload:
        """Move ``tensors`` (parameter group ``group``) from src to dst; return what dst got."""
        raise NotImplementedError

    def _deliver_many(self, transfers: list[Transfer]) -> list[Payload]:
        """What each transfer's dst got (``_deliver`` of each, unless a subclass moves a batch at once)."""
        return [self._deliver(t.src, t.dst, t.tensors, t.group) for t in transfers]

    def send(self, rnd: int, src: int, dst: int, channel: str, group: str, tensors: Payload,
             expect: Shapes | None = None, screen: Screen | None = None) -> Payload | None:
        """Send ``tensors`` from src to dst; return what dst received, or None if dst rejected it.

        dst rejects a payload with missing, wrong-shaped or non-finite tensors, then one ``screen`` objects to.
        """
        judge = None if screen is None else (
            lambda got: {k: reason for k, p in got.items() if (reason := screen(p)) is not None})
        return self._transfer(rnd, dst, channel, group, {src: tensors}, expect, judge).get(src)

    def gather(self, rnd: int, dst: int, channel: str, group: str, sent: dict[int, Payload],
               expect: Shapes | None = None, screen: GroupScreen | None = None) -> dict[int, Payload]:
        """Each src in ``sent`` sends its payload to dst, which judges them together; returns the accepted ones.

        As ``send`` for each sender, then ``screen`` sees every intact payload at once and names the
        senders dst rejects (with reasons). Rows are written in the order of ``sent``.
        """
        return self._transfer(rnd, dst, channel, group, sent, expect, screen)

    def _transfer(self, rnd: int, dst: int, channel: str, group: str, sent: dict[int, Payload],
                  expect: Shapes | None, screen: GroupScreen | None) -> dict[int, Payload]:
        """The skeleton: deliver, judge (where dst lives), agree on the outcomes, log; the accepted payloads."""
        received, expects = self._deliver_to(rnd, dst, channel, group, sent, expect)
        outcomes = None if received is None else self.judge(received, expects, group, screen)
        outcomes = self.agree(dst, outcomes, len(sent))
        accepted = {}
        for (src, tensors), outcome in zip(sent.items(), outcomes):
            self._log(rnd, src, dst, channel, group, outcome)
            if outcome.accepted:
                accepted[src] = received[src] if received is not None else self._stand_in(tensors, outcome)
        return accepted

    def _deliver_to(self, rnd: int, dst: int, channel: str, group: str, sent: dict[int, Payload],
                    expect: Shapes | None) -> tuple[dict[int, Payload] | None, dict[int, Shapes | None]]:
        """What dst got from each sender and the shapes to check it against; None where dst does not live."""
        got = self._deliver_many([Transfer(src, dst, group, tensors) for src, tensors in sent.items()])
        return dict(zip(sent, got)), dict.fromkeys(sent, expect)

    def judge(self, received: dict[int, Payload], expects: dict[int, Shapes | None], group: str,
              screen: GroupScreen | None = None) -> list[Outcome]:
        """dst's verdict on each payload: names and shapes, NaN/Inf, then ``screen`` on the intact ones."""
        problems = payload_problems(received, expects)
        if screen is not None:
            problems.update(screen({src: got for src, got in received.items() if problems[src] is None}))
        return [self._outcome(got, problems[src], group) for src, got in received.items()]

    def _outcome(self, received: Payload, problem: str | None, group: str) -> Outcome:
        return Outcome(problem is None, *payload_size(received), problem)

    def agree(self, dst: int, outcomes: list[Outcome] | None, n: int) -> list[Outcome]:
        """Every process learns dst's ``n`` outcomes (in one process: it knows them already)."""
        return outcomes   # type: ignore[return-value]

    def _stand_in(self, tensors: Payload, outcome: Outcome) -> Payload:
        """What a process other than dst's returns for an accepted payload (torchrun only)."""
        raise NotImplementedError

    def _log(self, rnd: int, src: int, dst: int, channel: str, group: str, outcome: Outcome) -> None:
        """One ledger row, and a rejection row when rejected."""
        self.ledger.add(rnd, src, dst, channel, group, outcome.numel, outcome.nbytes, outcome.accepted)
        if not outcome.accepted:
            self.ledger.reject(rnd, src, dst, channel, group, outcome.reason)   # type: ignore[arg-type]

    def send_stacked(self, rnd: int, channel: str, batch: Stacked,
                     screen: RowScreen | None = None) -> tuple[dict[str, Tensor], list[bool]]:
        """``send`` of every transfer of a stacked batch (a round's P2P fetches of one layer), at stack speed.

        Transfer t sends row t of each of ``batch.tensors`` (name -> (T, ...)) from ``src[t]`` to ``dst[t]`` as
        group ``group[t]``, its tensors keyed ``batch.key(t, name)``, and is judged as ``send`` judges it:
        shapes, then NaN/Inf (one sum per tensor and row), then ``screen(received_rows, rows)``, which gives
        the reasons (or None) for the batch rows ``rows`` (R,) whose received tensors are ``received_rows``
        (name -> (R, ...)). Same ledger rows and rejections, in the batch's order, as ``send`` one after another.
        Returns what arrived (name -> (T, ...); the rows of rejected transfers hold anything) and which were
        accepted.
        """
        T = len(batch.src)
        received, odd = self._deliver_stacked(batch)
        problems = self._judge_stacked(batch, received, odd, screen)
        uniform = payload_size({n: x[0] for n, x in received.items()}) if T else (0, 0)   # sizes from shapes
        for t in range(T):
            size = payload_size(odd[t]) if t in odd else uniform
            self._log(rnd, batch.src[t], batch.dst[t], channel, batch.group[t],
                      Outcome(problems[t] is None, *size, problems[t]))
        return received, [p is None for p in problems]

    def _judge_stacked(self, batch: Stacked, received: dict[str, Tensor], odd: dict[int, Payload],
                       screen: RowScreen | None) -> list[str | None]:
        """``judge`` of a stacked batch: the reason each row is rejected, or None."""
        T = len(batch.src)
        expect = {n: t.shape[1:] for n, t in batch.tensors.items()}
        problems: list[str | None] = [None] * T
        for t, payload in odd.items():                                    # a row that no longer fits the stack
            problems[t] = shape_problem(payload, {batch.key(t, n): s for n, s in expect.items()})
        rows_ok = torch.ones(T, dtype=torch.bool)
        with torch.no_grad():
            for n, x in received.items():
                if x.is_floating_point() and T:
                    rows_ok &= torch.isfinite(x.reshape(T, -1).sum(1, dtype=torch.float64 if x.dtype == torch.float64
                                                                     else torch.float32)).cpu()
        for t in (~rows_ok).nonzero().flatten().tolist():                 # may hold a NaN/Inf: look at the row
            if problems[t] is None:
                bad = next((n for n, x in received.items() if x.is_floating_point()
                            and not bool(torch.isfinite(x[t]).all())), None)
                if bad is not None:
                    problems[t] = f"{batch.key(t, bad)} contains NaN or Inf"
        if screen is not None:
            rows = [t for t in range(T) if problems[t] is None]
            if rows:
                index = torch.tensor(rows)
                for t, reason in zip(rows, screen({n: x[index] for n, x in received.items()}, index)):
                    problems[t] = reason
        return problems

    def _deliver_stacked(self, batch: Stacked) -> tuple[dict[str, Tensor], dict[int, Payload]]:
        """What arrived of a stacked batch, and the rows that arrived in another shape (row -> payload): here
        ``_deliver`` of each row (``InProcessTransport`` copies the stack at once)."""
        out = {n: torch.zeros_like(t) for n, t in batch.tensors.items()}
        odd: dict[int, Payload] = {}
        for t in range(len(batch.src)):
            keys = {batch.key(t, n): n for n in out}
            got = self._deliver(batch.src[t], batch.dst[t], {k: batch.tensors[n][t] for k, n in keys.items()},
                                batch.group[t])
            if not _fits(out, t, keys, got, {}):
                odd[t] = got
        return out, odd


class InProcessTransport(Transport):
    """Hands cloned tensors over in one process. ``tamper`` (tests, teaching) may alter a payload in flight."""

    def __init__(self, ledger: CommLedger | None = None,
                 tamper: Callable[[int, int, str, Payload], Payload] | None = None) -> None:
        super().__init__(ledger)
        self.tamper = tamper

    def _deliver(self, src: int, dst: int, tensors: Payload, group: str) -> Payload:
        out = {name: t.detach().clone() for name, t in tensors.items()}
        return self.tamper(src, dst, group, out) if self.tamper else out

    def _deliver_many(self, transfers: list[Transfer]) -> list[Payload]:
        """The batch copied at once (``copy_payloads``); ``tamper`` then sees each payload as ``_deliver`` does.
        One transfer (``send``) is ``_deliver``'s clone."""
        if len(transfers) == 1:
            return super()._deliver_many(transfers)
        out = copy_payloads([t.tensors for t in transfers])
        if self.tamper:
            out = [self.tamper(t.src, t.dst, t.group, got) for t, got in zip(transfers, out)]
        return out

    def _deliver_stacked(self, batch: Stacked) -> tuple[dict[str, Tensor], dict[int, Payload]]:
        """One copy per stacked tensor; ``tamper`` sees each row as the payload ``_deliver`` would hand it. A row
        it returns with the same names and shapes goes back into the stack, any other stays apart (``odd``)."""
        out = {n: t.detach().clone() for n, t in batch.tensors.items()}
        odd: dict[int, Payload] = {}
        if self.tamper:
            for t in range(len(batch.src)):
                keys = {batch.key(t, n): n for n in out}
                views = {k: out[n][t] for k, n in keys.items()}                # changed in place: changed in the stack
                got = self.tamper(batch.src[t], batch.dst[t], batch.group[t], dict(views))
                if not _fits(out, t, keys, got, views):
                    odd[t] = got
        return out, odd
