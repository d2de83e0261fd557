"""The default comparison on each engine: ``fedmoe-da compare --engine E``, stacked against loop, alternating.

    python benchmarks/engines.py                       # 5 rounds, 2 repeats, pinned to core 1
    python benchmarks/engines.py --rounds 30 --repeats 1

Each run is a fresh ``python -m fedmoe_da compare`` process (the five default strategies, the default config
but for ``--rounds``), pinned with taskset to one core, one torch thread; runs alternate (loop, stacked, loop,
stacked, ...) so that a change in the machine's load hits both. Reported per run: wall seconds and CPU seconds
(user + system of the child: less sensitive than wall time to other processes on a shared machine), the load
average before and after. The summary gives the medians and loop / stacked ratios. Writes
``<out>/engines.csv`` and ``<out>/engines.json`` (args, machine, package versions, git commit).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def one(engine: str, rounds: int, core: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before, load = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(["taskset", "-c", core, sys.executable, "-m", "fedmoe_da", "compare", "--engine", engine,
                        "--rounds", str(rounds), "--no-progress", "--out", out],
                       cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"engine": engine, "rounds": rounds, "wall_s": wall, "cpu_s": cpu, "load1_before": load,
            "load1_after": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--core", default="1", help="taskset core list for every run (default 1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/engines"))
    args = ap.parse_args()
    from fedmoe_da.fl.run_folder import versions

    rows = []
    for rep in range(args.repeats):
        for engine in ("loop", "stacked"):
            row = {**one(engine, args.rounds, args.core), "repeat": rep}
            rows.append(row)
            print(f"{engine:>7s} repeat {rep}: {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU "
                  f"(load {row['load1_before']:.2f} -> {row['load1_after']:.2f})", flush=True)
    df = pd.DataFrame(rows)
    med = df.groupby("engine")[["wall_s", "cpu_s"]].median()
    summary = {f"{m}_{e}": float(med.loc[e, m]) for e in med.index for m in med.columns}
    summary.update({f"{m}_loop_over_stacked": float(med.loc["loop", m] / med.loc["stacked", m])
                    for m in med.columns})
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "engines.csv", index=False)
    (out / "engines.json").write_text(json.dumps(
        {"args": vars(args), "summary": summary, "machine": {"platform": platform.platform(), "cores": os.cpu_count()},
         "versions": versions()}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
