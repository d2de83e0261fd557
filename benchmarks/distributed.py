"""torch.distributed on loopback against the in-process run: seconds per round and bytes per second.

    python benchmarks/distributed.py                      # smoke and small, fedmoe_da and fedavg, 3 and 5 processes
    python benchmarks/distributed.py --sizes smoke --strategies fedavg --procs 3

For each (size, strategy) it runs the same command three ways, each in fresh
processes: in process (``fedmoe-da run``), and under ``torchrun --standalone
--nproc-per-node R`` (gloo over loopback) for each R. It checks that every
distributed run's history.csv and ledger.csv equal the in-process run's, and
times the rounds the same way in both: from the first round's local training
to the end of the last round's evaluation (setup, data and start-up excluded).

Bytes per second: the ledger's bytes (what the strategies send: the same in
both) over that time; for the distributed runs also what went on the wire
(payloads with their headers, the control traffic: outcome broadcasts, the
server state sent to client ranks each round, history rows; checkpoint states
sent to rank 0). Writes benchmarks/results/distributed/distributed.csv and a
JSON of the machine and versions beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "distributed"
SIZES = {
    "smoke": ["--smoke", "--rounds", "3"],
    "small": ["--num-clients", "8", "--max-samples", "2000", "--num-experts", "4", "--P", "4", "--local-epochs", "2",
              "--rounds", "3"],
}
COMMON = ["--no-progress", "--backend", "torch", "--seed", "0", "--I", "1"]

CHILD = """
import json, sys, time
from fedmoe_da import cli
from fedmoe_da.fl import simulation
from fedmoe_da.fl.placement import Placement

class Timed(Placement):
    started, ends = None, []
    def begin_round(self, rnd):
        if Timed.started is None:
            Timed.started = time.perf_counter()
    def evaluated(self, rows):
        Timed.ends.append(time.perf_counter())
        return rows

plain = simulation.simulate
simulation.simulate = lambda config, transport=None, placement=None, resume=False: plain(
    config, transport, Timed(), resume)
import fedmoe_da
fedmoe_da.simulate = simulation.simulate
code = cli.main(sys.argv[1:])
print("timing: " + json.dumps({"s_per_round": (Timed.ends[-1] - Timed.started) / len(Timed.ends),
                               "rounds": len(Timed.ends)}))
sys.exit(code)
"""


def run(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc, time.perf_counter() - start


def line(stdout: str, prefix: str) -> dict:
    return json.loads(next(text for text in stdout.splitlines() if text.startswith(prefix))[len(prefix):])


def ledger_bytes(folder: Path) -> int:
    import pandas as pd

    return int(pd.read_csv(folder / "ledger.csv")["bytes"].sum())


def one(size: str, strategy: str, procs: list[int], tmp: Path) -> list[dict]:
    flags = ["run", *SIZES[size], *COMMON, "--strategy", strategy]
    rows = []
    ref = tmp / f"{size}_{strategy}_inprocess"
    proc, wall = run([sys.executable, "-c", CHILD, *flags, "--out", str(ref)])
    t = line(proc.stdout, "timing: ")
    b = ledger_bytes(ref)
    rows.append({"size": size, "strategy": strategy, "mode": "in-process", "processes": 1, "rounds": t["rounds"],
                 "s_per_round": t["s_per_round"], "job_wall_s": wall, "ledger_bytes_per_round": b / t["rounds"],
                 "ledger_MB_per_s": b / t["rounds"] / t["s_per_round"] / 1e6, "wire_MB_per_s": float("nan"),
                 "wire_payload_bytes": 0, "wire_control_bytes": 0, "wire_checkpoint_bytes": 0, "identical": True})
    for n in procs:
        out = tmp / f"{size}_{strategy}_{n}"
        proc, wall = run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                          "-m", "fedmoe_da", *flags, "--out", str(out)])
        d = line(proc.stdout, "distributed: ")
        same = all((out / f).read_bytes() == (ref / f).read_bytes() for f in ("history.csv", "ledger.csv"))
        wire = d["wire_payload_bytes"] + d["wire_control_bytes"]   # per run, checkpoints apart
        seconds = d["s_per_round"] * d["rounds"]
        rows.append({"size": size, "strategy": strategy, "mode": "torchrun gloo loopback", "processes": n,
                     "rounds": d["rounds"], "s_per_round": d["s_per_round"], "job_wall_s": wall,
                     "ledger_bytes_per_round": d["ledger_bytes"] / d["rounds"],
                     "ledger_MB_per_s": d["ledger_bytes"] / seconds / 1e6, "wire_MB_per_s": wire / seconds / 1e6,
                     "wire_payload_bytes": d["wire_payload_bytes"], "wire_control_bytes": d["wire_control_bytes"],
                     "wire_checkpoint_bytes": d["wire_checkpoint_bytes"], "identical": same})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    import pandas as pd
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="smoke,small")
    parser.add_argument("--strategies", default="fedmoe_da,fedavg")
    parser.add_argument("--procs", default="3,5")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            for strategy in args.strategies.split(","):
                rows += one(size, strategy, procs, Path(tmp))
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "distributed.csv", index=False, float_format="%.4g")
    (out / "distributed.json").write_text(json.dumps({
        "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(), "platform": platform.platform(),
        "python": sys.version.split()[0], "torch": torch.__version__, "sizes": SIZES, "common_flags": COMMON,
        "note": "2 shared CPU cores: R processes share them, so the distributed rows measure the overhead of "
                "really sending, not a speed-up"}, indent=2))
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
