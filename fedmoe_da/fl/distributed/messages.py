"""The process group and the messages between ranks: point to point buffers, broadcasts, the outcome broadcast
(docs/ARCHITECTURE.md §6). Every failure of a message is a ``RankFailure`` naming the partner and ``where``."""
from __future__ import annotations

import io
import os
import pickle
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ...config import ExperimentConfig
from ..transport import Outcome
from .failures import RankFailure


class Ranks:
    """This rank in the torchrun job: joins the group, sends and receives, counts what it put on the wire."""

    def __init__(self, config: ExperimentConfig) -> None:
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
        self.wire = {"payload": 0, "control": 0, "checkpoint": 0}   # bytes this rank put on the wire
        self.store = None

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

    def announce(self, root: int, outcomes: list[Outcome] | None, n: int) -> list[Outcome]:
        """Broadcast ``root``'s ``n`` outcomes (reasons and control contents included) to every rank."""
        if self.world == 1:
            return outcomes   # type: ignore[return-value]
        head = torch.zeros(n, 5, dtype=torch.int64)
        blob = b""
        if self.rank == root:
            parts = []
            for i, o in enumerate(outcomes):   # type: ignore[arg-type]
                r = (o.reason or "").encode()
                c = b"" if o.content is None else o.content.cpu().numpy().tobytes()
                head[i] = torch.tensor([int(o.accepted), o.numel, o.nbytes, len(r), len(c)])
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
            out.append(Outcome(bool(accepted), numel, nbytes, None if accepted else reason, content))
        return out

    def _broadcast(self, t: Tensor, root: int) -> Tensor:
        t = t.to(self.comm)
        self._guard(lambda: dist.broadcast(t, root), root)
        return t

    def broadcast_object(self, obj, root: int):
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

    def all_gather_object(self, obj) -> list:
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
