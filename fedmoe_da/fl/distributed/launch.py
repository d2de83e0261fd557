"""The entry point under torchrun (docs/ARCHITECTURE.md §6)::

    torchrun --nproc-per-node R -m fedmoe_da run [the flags of fedmoe-da run]

gloo on CPU; NCCL when ``config.device`` is CUDA and every rank has a GPU of its own (else gloo, staging CUDA
tensors through the CPU). The process group times out after ``config.dist_timeout`` seconds. With
``torchrun --max-restarts N`` the group restarts and, if the run folder holds a checkpoint of this config,
resumes from it; each attempt uses its own store prefix (``TORCHELASTIC_RESTART_COUNT``).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Callable

from ...config import ExperimentConfig
from .failures import RankFailure, Terminated, claim_report, failure_line
from .faults import torchrun_placement
from .placement import TorchrunPlacement
from .transport import DistributedTransport


def launched() -> bool:
    """True when this process was started by torchrun (or with RANK and WORLD_SIZE set by hand)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def _raise_terminated(signum, frame):
    raise Terminated()


def main(config: ExperimentConfig, report: Callable, resume: bool = False) -> int:
    """``fedmoe-da run`` on one rank of a torchrun job; the process ends here with the exit code (``report``'s
    on rank 0), through ``os._exit`` once the group is closed and the output flushed.

    A fresh run, or a resumed one: with ``resume`` (``--resume``), or on a restart (torchrun
    ``--max-restarts``) when the run folder holds a checkpoint of this config; rank 0 decides for all.
    """
    from .. import checkpoint
    from ..simulation import simulate

    signal.signal(signal.SIGTERM, _raise_terminated)
    transport = placement = None
    try:
        transport = DistributedTransport(config)
        placement = torchrun_placement(transport, config.num_clients)
        transport.join()
        again = transport.attempt > 0 and checkpoint.resumable(config)
        transport.where = "start-up (agreeing whether to resume)"
        resume = bool(transport.broadcast_object(resume or again, root=0))
        run_config = config if transport.rank == 0 else config.replace(progress=False)
        begin = time.perf_counter()
        result = simulate(run_config, transport=transport, placement=placement, resume=resume)
        code = report(result) if transport.rank == 0 else 0
        _stats(transport, placement, result, time.perf_counter() - begin)
        transport.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)   # gloo's threads can abort a normal interpreter teardown; everything is written by now
    except (RankFailure, Terminated) as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # the report takes at most PROBE_SECONDS; then we exit
        if transport is None or placement is None or claim_report(transport):
            line = (failure_line(transport, placement.hosted, exc, config.out) if placement is not None
                    else f"fedmoe-da: error: could not join the process group: {exc}")
            print(line, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)   # never wait on a process group whose peers are gone


def _stats(transport: DistributedTransport, placement: TorchrunPlacement, result, seconds: float) -> None:
    """Rank 0's last line: ranks, backend, time per round and bytes (ledger and wire), for users and benchmarks."""
    wire = transport.all_gather_object(transport.wire)
    if transport.rank != 0:
        return
    ends = placement.round_end
    rounds = len(ends)
    per_round = (ends[-1] - placement.started) / rounds if rounds and placement.started else math.nan
    ledger = int(result.ledger["bytes"].sum()) if len(result.ledger) else 0
    print("distributed: " + json.dumps({"ranks": transport.world, "backend": transport.backend, "rounds": rounds,
                                        "s_per_round": per_round, "run_s": seconds, "ledger_bytes": ledger,
                                        **{f"wire_{kind}_bytes": sum(w[kind] for w in wire) for kind in wire[0]}}),
          flush=True)
