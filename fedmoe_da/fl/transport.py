"""Transport: every byte that moves between two parties goes through here.

A strategy never counts bytes itself. It calls ``transport.send(...)`` with the
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
can never alias a sender's state). The distributed runner's transport sends
them for real and writes the same rows.
"""
from __future__ import annotations

import math
from typing import Callable, Hashable, NamedTuple, TypeVar

import torch
from torch import Tensor

from .ledger import CHANNELS, LEDGER_COLUMNS, REJECTION_COLUMNS, CommLedger, payload_size

__all__ = ["SERVER", "CHANNELS", "LEDGER_COLUMNS", "REJECTION_COLUMNS", "CommLedger", "Payload", "Shapes",
           "payload_problem", "payload_problems", "copy_payloads", "Stacked", "Transfer", "Transport", "InProcessTransport"]

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
    ``isfinite`` writes a mask as large as the buffer: 20x slower on 100M floats); if that sum is not finite (or the group
    is a single tensor), each tensor's sum is computed, in one stacked tensor of sums per device moved to the
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
class Transport:
    """Moves payloads between parties and writes the ledger. Subclasses implement ``_deliver`` (and may move a
    batch at once: ``_deliver_many``, ``_deliver_stacked``)."""

    def __init__(self, ledger: CommLedger | None = None) -> None:
        self.ledger = ledger if ledger is not None else CommLedger()

    def _deliver(self, src: int, dst: int, tensors: Payload, group: str) -> Payload:
        """Move ``tensors`` (parameter group ``group``) from src to dst; return what dst got."""
        raise NotImplementedError

    def _deliver_many(self, transfers: list[Transfer]) -> list[Payload]:
        """What each transfer's dst got (``_deliver`` of each, unless a subclass moves a batch at once)."""
        return [self._deliver(t.src, t.dst, t.tensors, t.group) for t in transfers]

    def send(self, round: int, src: int, dst: int, channel: str, group: str, tensors: Payload,
             expect: Shapes | None = None, screen: Screen | None = None) -> Payload | None:
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
               expect: Shapes | None = None, screen: GroupScreen | None = None) -> dict[int, Payload]:
        """Each src in ``sent`` sends its payload to dst, which judges them together; returns the accepted ones.

        As ``send`` for each sender, then ``screen`` sees every intact payload at once and names the
        senders dst rejects (with reasons). Rows are written in the order of ``sent``.
        """
        received = dict(zip(sent, self._deliver_many([Transfer(src, dst, group, tensors) for src, tensors in sent.items()])))
        problems = payload_problems(received, dict.fromkeys(received, expect))
        if screen is not None:
            problems.update(screen({src: got for src, got in received.items() if problems[src] is None}))
        for src, got in received.items():
            self._log(round, src, dst, channel, group, got, problems[src])
        return {src: got for src, got in received.items() if problems[src] is None}

    def send_stacked(self, round: int, channel: str, batch: Stacked,
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
        uniform = payload_size({n: x[0] for n, x in received.items()}) if T else (0, 0)   # sizes from shapes
        for t in range(T):
            size = payload_size(odd[t]) if t in odd else uniform
            self.ledger.add(round, batch.src[t], batch.dst[t], channel, batch.group[t], *size, problems[t] is None)
            if problems[t] is not None:
                self.ledger.reject(round, batch.src[t], batch.dst[t], channel, batch.group[t], problems[t])
        return received, [p is None for p in problems]

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

    def _deliver_many(self, transfers: list[Transfer]) -> list[Payload]:
        """The batch copied at once (``copy_payloads``); ``tamper`` then sees each payload as ``_deliver`` does."""
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
