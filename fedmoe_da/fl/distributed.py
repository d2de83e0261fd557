"""The torch.distributed runner: the same strategies, with every payload between two ranks really sent.

Launched by torchrun with the same CLI (DESIGN section 10)::

    torchrun --nproc-per-node R -m fedmoe_da run [the flags of fedmoe-da run]

gloo on CPU; NCCL when ``config.device`` is CUDA and every rank has a GPU of its
own (else gloo, staging CUDA tensors through the CPU).

Who runs what
-------------
Rank 0 is the server; ranks 1..R-1 host the clients, client k on rank
1 + k % (R - 1) (R = 1: rank 0 hosts every party). Every rank runs the *same*
loop (``simulation.py`` and the strategies, unchanged): same data, partition,
initial states and participant sampling, hence the same sequence of
``transport.send`` / ``gather`` calls. A rank trains and evaluates only the
clients it hosts (``hosts``); its copies of the other clients' states are
placeholders that never reach a result.

How ``send(round, src, dst, ...)`` works (on every rank)
-------------------------------------------------------
1. src's rank packs the payload into one buffer (a JSON header: names, dtypes,
   shapes; then the bytes) and sends it point to point to dst's rank: a length,
   then the buffer. Nothing moves when both live on one rank (dst gets a clone,
   as in process). FedMoE-DA's P2P expert fetches are messages between two
   client ranks that rank 0 never sees.
2. dst's rank validates what arrived exactly as in process
   (``transport.payload_problem``: names, shapes, NaN/Inf; then the screen) and
   decides.
3. dst's rank broadcasts the outcome (accepted, numel, bytes, the rejection
   reason) to every rank: every rank writes the same ledger row and rejection,
   and takes the same branch wherever a strategy tests ``got is None``
   (``FedMoEDA.download`` breaks out, ``server_version`` is bumped only if an
   upload was accepted, the pool is the set of accepted gates, ...).
4. ``send`` returns, on dst's rank, what arrived; elsewhere, if accepted, a
   clone of this rank's own view of the payload: the right names and shapes,
   used only on behalf of parties hosted elsewhere.

``gather`` (the round's uploads: many senders, one judge) sends each payload the
same way; dst judges them together and broadcasts every outcome at once.

The server's state on client ranks
----------------------------------
Every rank runs the server's code too (that is what keeps strategies
untouched), but only rank 0 gets the uploads: on a client rank the aggregate is
computed from placeholders. Two things make that harmless:

* a payload that is not a parameter group (FedMoE-DA's rows of A) decides
  which transfers follow (which peer sends which expert), so its *content* is
  broadcast with the outcome and every rank returns rank 0's rows; and where
  the server is a party, the expected shapes are rank 0's (they depend on A);
* after each round's communication, every rank loads rank 0's
  ``strategy.state_dict()`` (``settle``): between rounds every rank holds the
  server's real state, so a client rank evaluates the global model and Ditto
  trains against it with the server's values.

The history rows of a round are gathered to every rank (rank 0 writes them),
rank 0's ledger is complete by step 3, and only rank 0 writes the run folder;
the others contribute their clients' states to each checkpoint.

Same seed, same history
-----------------------
On CPU the run folder's history.csv and ledger.csv are identical to the
in-process run's: every number is computed by the same code on the same inputs
in the same order (a client's training and evaluation depend only on its state,
data and seed; the server aggregates bit-identical payloads in the same order;
nothing is summed across ranks). Only config.json differs (``out``).

Failures and restarts
---------------------
The process group times out after ``config.dist_timeout`` seconds (not the
30-minute default). A rank that dies makes the others stop with one line on
stderr naming it (whichever survivor reports first; the others stay quiet):
on one host a rank is dead if its process is gone, on another if it does not
answer within two seconds. A rank that hangs is named by its partner after
the timeout. With ``torchrun --max-restarts N`` the group restarts and, if the
run folder holds a checkpoint of this config, resumes from it. Each attempt
uses its own store prefix (``TORCHELASTIC_RESTART_COUNT``), so a restarted
group never reads the addresses of the one before. ``FEDMOE_DA_KILL=RANK:ROUND``
(tests) makes RANK kill itself with SIGKILL at the first transfer of ROUND, on
the first attempt only.

Wire bytes. The ledger counts what the strategies send (the same as in
process). On the wire come on top: each payload's header (about 100 bytes),
the outcome broadcasts (40 bytes per transfer per receiving rank), and per
round the server state to every client rank and the history rows.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import signal
import socket
import sys
import time
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import ExperimentConfig
from ..models.names import BACKBONE, EXPERT, GATE, HEAD, parse_group
from .run_folder import RunFolder
from .ledger import payload_size
from .transport import SERVER, CommLedger, Payload, Stacked, Transport, payload_problem, payload_problems

KILL_ENV = "FEDMOE_DA_KILL"
PARAMETER_KINDS = (BACKBONE, HEAD, GATE, EXPERT)
PROBE_SECONDS = 2.0   # how long the reporting survivor waits for the others to say they are alive (a hung rank,
#                       or a dead one on another host, never does)


class RankFailure(RuntimeError):
    """A collective or point-to-point operation failed: a peer died, hung past the timeout, or never joined."""

    def __init__(self, where: str, partner: int | None, cause: BaseException) -> None:
        first = (str(cause).splitlines() or [type(cause).__name__])[0]
        super().__init__(f"{where}: {first}")
        self.where, self.partner, self.cause = where, partner, first


class Terminated(BaseException):
    """SIGTERM (torchrun stops the survivors when a rank dies, before restarting or giving up)."""


def launched() -> bool:
    """True when this process was started by torchrun (or with RANK and WORLD_SIZE set by hand)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def rank_of(party: int, world: int) -> int:
    """The rank that hosts ``party``: 0 for the server, 1 + k % (R - 1) for client k (everything on 0 if R = 1)."""
    if party == SERVER or world == 1:
        return 0
    return 1 + party % (world - 1)


def is_control(group: str) -> bool:
    """True for a payload that is not a parameter group (FedMoE-DA's rows of A): its content is broadcast."""
    try:
        return parse_group(group).kind not in PARAMETER_KINDS
    except ValueError:
        return True


def party_name(party: int) -> str:
    return "the server" if party == SERVER else f"client {party}"


def clients_text(ids: list[int], most: int = 8) -> str:
    """'clients 1, 3' or, for many, 'clients 0, 2, 4, ... (100 clients)'."""
    shown = ", ".join(map(str, ids[:most]))
    return f"clients {shown}" if len(ids) <= most else f"clients {shown}, ... ({len(ids)} clients)"


# --------------------------------------------------------------------------- payload <-> one uint8 buffer
def pack(tensors: Payload, extra: dict | None = None, device: torch.device | str = "cpu") -> Tensor:
    """One uint8 buffer: 8 bytes of header length, a JSON header (names, dtypes, shapes, ``extra``), the bytes."""
    meta = json.dumps({"tensors": [[n, str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in tensors.items()],
                       **(extra or {})}).encode()
    parts = [torch.frombuffer(bytearray(len(meta).to_bytes(8, "little") + meta), dtype=torch.uint8).to(device)]
    parts += [t.detach().contiguous().reshape(-1).view(torch.uint8).to(device) for t in tensors.values()]
    return torch.cat(parts)


def unpack(buf: Tensor, device: torch.device | str) -> tuple[Payload, dict]:
    """``pack``'s inverse: the tensors (on ``device``) and the header's other fields."""
    n = int.from_bytes(bytes(buf[:8].cpu().tolist()), "little")
    meta = json.loads(bytes(buf[8:8 + n].cpu().numpy()))
    out, offset = {}, 8 + n
    for name, dtype, shape in meta.pop("tensors"):
        dt = getattr(torch, dtype)
        size = math.prod(shape) * torch.empty((), dtype=dt).element_size()
        out[name] = buf[offset:offset + size].clone().view(dt).reshape(shape).to(device)
        offset += size
    return out, meta


def _clone(tensors: Payload) -> Payload:
    return {n: t.detach().clone() for n, t in tensors.items()}


def _pid_alive(pid: int) -> bool:
    """True if process ``pid`` on this host runs (a zombie is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


# --------------------------------------------------------------------------- the transport
class DistributedTransport(Transport):
    """Sends every payload whose two parties live on different ranks; every rank writes the same ledger."""

    def __init__(self, config: ExperimentConfig, ledger: CommLedger | None = None) -> None:
        super().__init__(ledger)
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.timeout = float(config.dist_timeout)
        self.device = torch.device(config.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            self.device = torch.device("cuda", torch.cuda.current_device())
        nccl = (self.device.type == "cuda" and dist.is_nccl_available()
                and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", self.world)))
        self.backend = "nccl" if nccl else "gloo"
        self.comm = self.device if nccl else torch.device("cpu")
        self.where = "start-up (joining the process group)"
        self.kill_round = self._kill_round()
        self.wire = {"payload": 0, "control": 0, "checkpoint": 0}   # bytes this rank put on the wire
        self.round_end: list[float] = []             # perf_counter at the end of each round (``evaluated``)
        self.started: float | None = None            # at the first round's training
        self.num_clients = config.num_clients
        self.round = 0                               # the round under way (the checkpoint's, when resumed)
        self.store = None

    # ------------------------------------------------------------------ process group
    def join(self) -> None:
        """One store per attempt (a PrefixStore keyed by the restart count), then the process group on it."""
        timeout = timedelta(seconds=self.timeout)
        addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)   # torchrun hosts the store
        try:
            base = dist.TCPStore(addr, port, world_size=self.world, is_master=self.rank == 0 and not agent,
                                 timeout=timeout, wait_for_workers=False, multi_tenant=True)
            run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
            self.store = dist.PrefixStore(f"fedmoe_da/{run}/attempt{self.attempt}", base)
            self.store.set(f"proc/{self.rank}", f"{socket.gethostname()} {os.getpid()}")
            dist.init_process_group(self.backend, store=self.store, rank=self.rank, world_size=self.world,
                                    timeout=timeout)
            self.where = "start-up"
            dist.barrier()   # everyone is here: a rank that never comes is named at start-up
        except Exception as exc:
            raise RankFailure(self.where, None, exc) from exc

    def close(self) -> None:
        """Leave together: a rank that tears gloo down while a peer still talks to it can abort at exit
        ("terminate called without an active exception"), so every rank passes a barrier first."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def _kill_round(self) -> int | None:
        """``FEDMOE_DA_KILL=RANK:ROUND[:SIGNAL]``: the round at whose first transfer this rank sends itself SIGNAL
        (KILL: dies; STOP: hangs), on the first attempt only."""
        spec = os.environ.get(KILL_ENV)
        if not spec or self.attempt != 0:
            return None
        rank, rnd, *sig = spec.split(":")
        self.kill_signal = getattr(signal, f"SIG{sig[0] if sig else 'KILL'}")
        return int(rnd) if int(rank) == self.rank else None

    def _maybe_die(self, rnd: int) -> None:
        if self.kill_round is not None and rnd >= self.kill_round:
            self.kill_round = None
            sys.stderr.flush()
            os.kill(os.getpid(), self.kill_signal)

    # ------------------------------------------------------------------ placement (simulation.py's hooks)
    def hosts(self, party: int) -> bool:
        if self.started is None:
            self.started = time.perf_counter()
        return rank_of(party, self.world) == self.rank

    def hosted(self, rank: int) -> str:
        """What ``rank`` hosts, in words: 'the server', 'clients 1, 3'."""
        if rank == 0 and self.world > 1:
            return "the server"
        clients = [k for k in range(self.num_clients) if rank_of(k, self.world) == rank]
        text = clients_text(clients) if clients else "no clients"
        return f"the server and {text}" if rank == 0 else text

    def trained(self, train_loss: dict[int, float]) -> dict[int, float]:
        self.round += 1   # called once a round, after local training
        self.where = f"round {self.round}, sharing the training losses"
        merged: dict[int, float] = {}
        for part in self._all_gather_object(train_loss):
            merged.update(part)
        return merged

    def settle(self, strategy) -> None:
        """Every rank loads rank 0's strategy state (the server's real values: see the module docstring)."""
        if self.world == 1:
            return
        self.where = f"round {self.round}, sending the server state to the client ranks"
        state = strategy.state_dict() if self.rank == 0 else None
        state = self._broadcast_object(state, root=0)
        if self.rank != 0:
            strategy.load_state_dict(state)

    def evaluated(self, rows: list[dict]) -> list[dict]:
        self.where = f"round {self.round}, gathering the history rows"
        merged = [row for part in self._all_gather_object(rows) for row in part]
        self.round_end.append(time.perf_counter())
        return sorted(merged, key=lambda row: row["client"])

    def folder(self, folder: RunFolder) -> RunFolder:
        """Rank 0 writes the run folder; the others only read it (resume) and send their states to checkpoints."""
        return (_ServerFolder if self.rank == 0 else _ClientFolder)(folder.path, self)

    # ------------------------------------------------------------------ send and gather
    def send(self, round: int, src: int, dst: int, channel: str, group: str, tensors: Payload,
             expect: dict[str, torch.Size] | None = None, screen=None) -> Payload | None:
        self._maybe_die(round)
        a, b = rank_of(src, self.world), rank_of(dst, self.world)
        self.where = f"round {round}, {channel} {group} from {party_name(src)} (rank {a}) to {party_name(dst)} (rank {b})"
        control = is_control(group)
        mine = None
        if self.rank == a and a != b:
            self._send_buffer(pack(tensors, self._extra(src, expect), self.comm), b)
        if self.rank == b:
            received, expect = self._receive(src, a, b, tensors, expect)
            problem = payload_problem(received, expect)
            if problem is None and screen is not None:
                problem = screen(received)
            mine = [self._outcome(received, problem, control)]
        outcome = self._announce(b, mine, 1)[0]
        self._row(round, src, dst, channel, group, outcome)
        if not outcome[0]:
            return None
        return received if self.rank == b else self._placeholder(tensors, outcome)

    def send_stacked(self, round: int, channel: str, batch: Stacked, screen=None) -> tuple[dict, list[bool]]:
        """One ``send`` per row: each transfer is its own message between two ranks (same rows, same order)."""
        received = {n: torch.zeros_like(x) for n, x in batch.tensors.items()}
        accepted = []
        for t in range(len(batch.src)):
            keys = {batch.key(t, n): n for n in batch.tensors}
            row_screen = None if screen is None else (
                lambda got, t=t, keys=keys: screen({n: got[k][None] for k, n in keys.items()}, torch.tensor([t]))[0])
            got = self.send(round, batch.src[t], batch.dst[t], channel, batch.group[t],
                            {k: batch.tensors[n][t] for k, n in keys.items()},
                            {k: batch.tensors[n].shape[1:] for k, n in keys.items()}, row_screen)
            if got is not None:
                for k, n in keys.items():
                    received[n][t] = got[k]
            accepted.append(got is not None)
        return received, accepted

    def gather(self, round: int, dst: int, channel: str, group: str, sent: dict[int, Payload],
               expect: dict[str, torch.Size] | None = None, screen=None) -> dict[int, Payload]:
        self._maybe_die(round)
        b = rank_of(dst, self.world)
        self.where = f"round {round}, {channel} {group} from {clients_text(list(sent))} to {party_name(dst)} (rank {b})"
        control = is_control(group)
        pending = [self._isend_buffer(pack(tensors, self._extra(src, expect), self.comm), b)
                   for src, tensors in sent.items() if self.rank == rank_of(src, self.world) != b]
        mine = None
        if self.rank == b:
            received, expects = {}, {}
            for src, tensors in sent.items():
                received[src], expects[src] = self._receive(src, rank_of(src, self.world), b, tensors, expect)
            problems = payload_problems(received, expects)
            if screen is not None:
                problems.update(screen({src: got for src, got in received.items() if problems[src] is None}))
            mine = [self._outcome(received[src], problems[src], control) for src in sent]
        for work in pending:
            self._wait(work, b)
        outcomes = self._announce(b, mine, len(sent))
        accepted = {}
        for (src, tensors), outcome in zip(sent.items(), outcomes):
            self._row(round, src, dst, channel, group, outcome)
            if outcome[0]:
                accepted[src] = received[src] if self.rank == b else self._placeholder(tensors, outcome)
        return accepted

    # ------------------------------------------------------------------ the steps of a transfer
    def _extra(self, src: int, expect) -> dict:
        """What travels in the header beside the tensors: the server's expectation when it sends (it may depend on
        the server state, real on rank 0 only)."""
        if src == SERVER and expect is not None:
            return {"expect": {n: list(s) for n, s in expect.items()}}
        return {}

    def _receive(self, src: int, a: int, b: int, tensors: Payload, expect) -> tuple[Payload, dict | None]:
        """On dst's rank: what arrived from src's rank ``a`` and the shapes to check it against."""
        if a == b:
            return _clone(tensors), expect
        received, extra = unpack(self._recv_buffer(a), self.device)
        if src == SERVER:
            expect = extra.get("expect")
        return received, expect

    def _outcome(self, received: Payload, problem: str | None, control: bool) -> tuple:
        numel, nbytes = payload_size(received)
        content = pack(received) if control and problem is None else None
        return (problem is None, numel, nbytes, problem, content)

    def _placeholder(self, tensors: Payload, outcome: tuple) -> Payload:
        """What a rank other than dst's gets back for an accepted payload: the control content dst got, or a clone
        of its own view."""
        content = outcome[4]
        return unpack(content, self.device)[0] if content is not None else _clone(tensors)

    def _row(self, round, src, dst, channel, group, outcome) -> None:
        """The ledger row (and rejection) every rank writes: the same as ``Transport._log`` on what dst received."""
        accepted, numel, nbytes, reason, _ = outcome
        self.ledger.add(round, src, dst, channel, group, numel, nbytes, accepted)
        if not accepted:
            self.ledger.reject(round, src, dst, channel, group, reason)

    # ------------------------------------------------------------------ messages
    def _guard(self, fn, partner: int | None):
        try:
            return fn()
        except Exception as exc:   # gloo and NCCL raise RuntimeError / DistError subclasses
            raise RankFailure(self.where, partner, exc) from exc

    def _send_buffer(self, buf: Tensor, dst: int, kind: str = "payload") -> None:
        self.wire[kind] += buf.numel() + 8
        self._guard(lambda: (dist.send(torch.tensor([buf.numel()], dtype=torch.int64, device=self.comm), dst),
                             dist.send(buf, dst)), dst)

    def _isend_buffer(self, buf: Tensor, dst: int):
        self.wire["payload"] += buf.numel() + 8
        size = torch.tensor([buf.numel()], dtype=torch.int64, device=self.comm)
        return self._guard(lambda: (dist.isend(size, dst), dist.isend(buf, dst), size, buf), dst)

    def _wait(self, work, partner: int) -> None:
        self._guard(lambda: (work[0].wait(), work[1].wait()), partner)

    def _recv_buffer(self, src: int) -> Tensor:
        def go():
            size = torch.zeros(1, dtype=torch.int64, device=self.comm)
            dist.recv(size, src)
            buf = torch.empty(int(size.item()), dtype=torch.uint8, device=self.comm)
            dist.recv(buf, src)
            return buf
        return self._guard(go, src)

    def _announce(self, root: int, outcomes: list[tuple] | None, n: int) -> list[tuple]:
        """Broadcast dst's outcomes (accepted, numel, bytes, reason, control content) from ``root`` to every rank."""
        if self.world == 1:
            return outcomes   # type: ignore[return-value]
        head = torch.zeros(n, 5, dtype=torch.int64)
        blob = b""
        if self.rank == root:
            parts = []
            for i, (accepted, numel, nbytes, reason, content) in enumerate(outcomes):   # type: ignore[arg-type]
                r = (reason or "").encode()
                c = b"" if content is None else content.cpu().numpy().tobytes()
                head[i] = torch.tensor([int(accepted), numel, nbytes, len(r), len(c)])
                parts += [r, c]
            blob = b"".join(parts)
            self.wire["control"] += (head.numel() * 8 + len(blob)) * (self.world - 1)
        head = self._broadcast(head, root)
        total = int(head[:, 3:].sum())
        if total:
            t = (torch.frombuffer(bytearray(blob), dtype=torch.uint8) if self.rank == root
                 else torch.empty(total, dtype=torch.uint8))
            blob = self._broadcast(t, root).cpu().numpy().tobytes()
        if self.rank == root:
            return outcomes   # type: ignore[return-value]
        out, offset = [], 0
        for accepted, numel, nbytes, rlen, clen in head.tolist():
            reason = blob[offset:offset + rlen].decode() if rlen else None
            content = (torch.frombuffer(bytearray(blob[offset + rlen:offset + rlen + clen]), dtype=torch.uint8)
                       if clen else None)
            offset += rlen + clen
            out.append((bool(accepted), numel, nbytes, None if accepted else reason, content))
        return out

    def _broadcast(self, t: Tensor, root: int) -> Tensor:
        t = t.to(self.comm)
        self._guard(lambda: dist.broadcast(t, root), root)
        return t

    def _broadcast_object(self, obj, root: int):
        """Broadcast tensors, lists, dicts and numbers (torch.save; read back with weights_only=True)."""
        if self.rank == root:
            data = io.BytesIO()
            torch.save(obj, data)
            buf = torch.frombuffer(bytearray(data.getvalue()), dtype=torch.uint8)
            self.wire["control"] += (buf.numel() + 8) * (self.world - 1)
            size = torch.tensor([buf.numel()], dtype=torch.int64)
        else:
            size = torch.zeros(1, dtype=torch.int64)
        size = self._broadcast(size, root)
        if self.rank != root:
            buf = torch.empty(int(size.item()), dtype=torch.uint8)
        buf = self._broadcast(buf, root)
        if self.rank == root:
            return obj
        return torch.load(io.BytesIO(buf.cpu().numpy().tobytes()), map_location=self.device, weights_only=True)

    def _all_gather_object(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        self._guard(lambda: dist.all_gather_object(out, obj), None)
        self.wire["control"] += (len(pickle.dumps(obj)) + 8) * (self.world - 1)
        return out

    def send_object_to(self, obj, dst: int) -> None:
        """torch.save ``obj`` and send it to rank ``dst`` (checkpoint states)."""
        data = io.BytesIO()
        torch.save(obj, data)
        self._send_buffer(torch.frombuffer(bytearray(data.getvalue()), dtype=torch.uint8).to(self.comm), dst,
                          "checkpoint")

    def recv_object_from(self, src: int):
        buf = self._recv_buffer(src)
        return torch.load(io.BytesIO(buf.cpu().numpy().tobytes()), map_location=self.device, weights_only=True)

    def barrier(self) -> None:
        if self.world > 1:
            self._guard(lambda: dist.barrier(), None)

    # ------------------------------------------------------------------ when it goes wrong
    def silent_ranks(self) -> tuple[list[int], list[int]]:
        """(dead, silent): ranks whose process is gone (on this host) or that never joined; and, if none is dead,
        the ranks that do not say they are alive within PROBE_SECONDS (hung, or dead on another host)."""
        if self.store is None:
            return [], []
        host, dead, others = socket.gethostname(), [], []
        try:
            for r in range(self.world):
                if r == self.rank or self.store.check([f"alive/{r}"]):   # a survivor (it may have exited since)
                    continue
                if not self.store.check([f"proc/{r}"]):
                    dead.append(r)          # never joined
                    continue
                their_host, pid = self.store.get(f"proc/{r}").decode().split()
                if their_host == host and not _pid_alive(int(pid)):
                    dead.append(r)
                else:
                    others.append(r)
            if dead:
                return dead, []
            deadline = time.monotonic() + PROBE_SECONDS
            while others and time.monotonic() < deadline:
                others = [r for r in others if not self.store.check([f"alive/{r}"])]
                time.sleep(0.05)
        except Exception:   # the store itself is gone: say what we know
            return dead, []
        return dead, others

    def claim_report(self) -> bool:
        """Say this rank is alive; True for the first rank to ask (one error line per failure, not per survivor)."""
        try:
            self.store.set(f"alive/{self.rank}", "1")   # type: ignore[union-attr]
            return self.store.add("reported", 1) == 1   # type: ignore[union-attr]
        except Exception:
            return True

    def failure_line(self, exc: BaseException, out: str | None) -> str:
        """The one line that says which rank failed, where, and how to go on."""
        dead, silent = self.silent_ranks()
        where = exc.where if isinstance(exc, RankFailure) else self.where
        if dead:
            who = "; ".join(f"rank {r} ({self.hosted(r)})" for r in dead)
            what = f"{who} died" if len(dead) == 1 else f"ranks died: {who}"
        elif silent:
            who = "; ".join(f"rank {r} ({self.hosted(r)})" for r in silent)
            what = f"{who} stopped answering (no reply within dist_timeout={self.timeout:g}s)"
        elif isinstance(exc, RankFailure) and exc.partner is not None:
            what = (f"rank {exc.partner} ({self.hosted(exc.partner)}) did not answer within "
                    f"dist_timeout={self.timeout:g}s ({exc.cause})")
        elif isinstance(exc, RankFailure):
            what = f"a rank did not answer within dist_timeout={self.timeout:g}s ({exc.cause})"
        else:
            what = "the launcher stopped this rank (SIGTERM)"
        return f"fedmoe-da: error: {what} during {where}; the run stopped.{_resume_hint(out)}"


def _resume_hint(out: str | None) -> str:
    if not out:
        return ""
    from .checkpoint import saved_round

    try:
        done = saved_round(out)
    except Exception:
        done = None
    if done is None:
        return " No checkpoint was saved yet."
    return (f" Round {done} is saved in {out}: torchrun --max-restarts resumes from it, as does "
            f"torchrun ... -m fedmoe_da run --resume {out}.")


# --------------------------------------------------------------------------- the run folder, seen from each rank
class _Folder(RunFolder):
    def __init__(self, path, transport: DistributedTransport) -> None:
        super().__init__(path)
        self.transport = transport

    def load_checkpoint(self) -> dict:
        ckpt = super().load_checkpoint()
        self.transport.round = int(ckpt.get("round", 0))
        return ckpt


class _ServerFolder(_Folder):
    """Rank 0's run folder: as in process, plus the client ranks' states in each checkpoint."""

    def save_checkpoint(self, payload: dict) -> None:
        t = self.transport
        t.where = f"round {payload.get('round')}: collecting client states for the checkpoint"
        states = list(payload["states"])
        for r in range(1, t.world):
            for k, state in t.recv_object_from(r).items():
                states[k] = state
        super().save_checkpoint({**payload, "states": states})

    def truncate(self, sizes, last_round) -> None:
        super().truncate(sizes, last_round)
        self.transport.where = "resuming (the run folder cut back to its checkpoint)"
        self.transport.barrier()   # the client ranks read the tables after this


class _ClientFolder(_Folder):
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
        t = self.transport
        t.where = f"round {payload.get('round')}: sending client states for the checkpoint"
        mine = {k: {n: v.clone() for n, v in s.items()}       # rows of the stacked states: clones travel alone
                for k, s in enumerate(payload["states"]) if rank_of(k, t.world) == t.rank}
        t.send_object_to(mine, 0)

    def truncate(self, sizes, last_round) -> None:
        self.transport.where = "resuming (waiting for rank 0 to cut the run folder back)"
        self.transport.barrier()


# --------------------------------------------------------------------------- the entry point under torchrun
def _raise_terminated(signum, frame):
    raise Terminated()


def main(config: ExperimentConfig, report: Callable, resume: bool = False) -> int:
    """``fedmoe-da run`` on one rank of a torchrun job; the process ends here with the exit code (``report``'s
    on rank 0), through ``os._exit`` once the group is closed and the output flushed.

    A fresh run, or a resumed one: with ``resume`` (``--resume``), or on a restart (torchrun
    ``--max-restarts``) when the run folder holds a checkpoint of this config; rank 0 decides for all.
    """
    from . import checkpoint
    from .simulation import simulate

    signal.signal(signal.SIGTERM, _raise_terminated)
    transport = None
    try:
        transport = DistributedTransport(config)
        transport.join()
        again = transport.attempt > 0 and checkpoint.resumable(config)
        transport.where = "start-up (agreeing whether to resume)"
        resume = bool(transport._broadcast_object(resume or again, root=0))
        run_config = config if transport.rank == 0 else config.replace(progress=False)
        begin = time.perf_counter()
        result = simulate(run_config, transport=transport, resume=resume)
        code = report(result) if transport.rank == 0 else 0
        _stats(transport, result, time.perf_counter() - begin)
        transport.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)   # gloo's threads can abort a normal interpreter teardown; everything is written by now
    except (RankFailure, Terminated) as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # the report takes at most PROBE_SECONDS; then we exit
        if transport is None or transport.claim_report():
            line = (transport.failure_line(exc, config.out) if transport is not None
                    else f"fedmoe-da: error: could not join the process group: {exc}")
            print(line, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)   # never wait on a process group whose peers are gone


def _stats(transport: DistributedTransport, result, seconds: float) -> None:
    """Rank 0's last line: ranks, backend, time per round and bytes (ledger and wire), for users and benchmarks."""
    wire = transport._all_gather_object(transport.wire)
    if transport.rank != 0:
        return
    ends = transport.round_end
    rounds = len(ends)
    per_round = (ends[-1] - transport.started) / rounds if rounds and transport.started else math.nan
    ledger = int(result.ledger["bytes"].sum()) if len(result.ledger) else 0
    print("distributed: " + json.dumps({"ranks": transport.world, "backend": transport.backend, "rounds": rounds,
                                        "s_per_round": per_round, "run_s": seconds, "ledger_bytes": ledger,
                                        **{f"wire_{kind}_bytes": sum(w[kind] for w in wire) for kind in wire[0]}}),
          flush=True)
