"""The default comparison on each engine: ``fedmoe-da compare --engine E``, stacked against loop, alternating.

    python benchmarks/engines.py                       # 5 rounds, 2 repeats, pinned to core 1
    python benchmarks/engines.py --rounds 30 --repeats 1
    python benchmarks/engines.py --before 6d4de1e        # and the package before issue 8 (the stacked engine)

Each run is a fresh ``python -m fedmoe_da compare`` process (the five default strategies, the default config
but for ``--rounds``), pinned with taskset to one core, one torch thread; runs alternate (loop, stacked, loop,
stacked, ...) so that a change in the machine's load hits both. ``--before COMMIT`` adds the package as it was
at COMMIT (``git archive`` into a temporary folder, run from there on its own default engine) as a third
contender: the speed-up since then, on the same machine and load. Reported per run: wall seconds and CPU seconds
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
BEFORE = "before"


def one(engine: str, rounds: int, core: str, strategies: str, source: Path = ROOT) -> dict:
    """One ``compare`` run of ``strategies`` with ``engine`` (``before``: the package at ``source``, an older
    commit, as it ran then)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before, load = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        flags = [] if engine == BEFORE else ["--engine", engine]
        subprocess.run(["taskset", "-c", core, sys.executable, "-m", "fedmoe_da", "compare", *flags,
                        "--strategies", strategies, "--rounds", str(rounds), "--no-progress",
                        "--out", out],
                       cwd=source, env=env, check=True, capture_output=True)
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
    ap.add_argument("--before", metavar="COMMIT",
                    help="also run the package as it was at COMMIT (git archive into a temporary folder), e.g. the "
                         "commit before the stacked engine: 6d4de1e")
    ap.add_argument("--strategies", default=None,
                    help="strategies compared (default: compare's default; with --before, ones COMMIT knows)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/engines"))
    args = ap.parse_args()
    from fedmoe_da.config import COMPARE_STRATEGIES
    from fedmoe_da.fl.run_folder import versions

    args.strategies = args.strategies or ",".join(COMPARE_STRATEGIES)

    contenders = ["loop", "stacked"] + ([BEFORE] if args.before else [])
    with tempfile.TemporaryDirectory() as old:
        if args.before:
            archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True)
            if archive.returncode != 0:
                sys.exit(f"--before {args.before}: {archive.stderr.decode().strip().splitlines()[-1]}")
            subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        rows = run_all(args, contenders, Path(old))
    df = pd.DataFrame(rows)
    med = df.groupby("engine")[["wall_s", "cpu_s"]].median()
    summary = {f"{m}_{e}": float(med.loc[e, m]) for e in med.index for m in med.columns}
    summary.update({f"{m}_{e}_over_stacked": float(med.loc[e, m] / med.loc["stacked", m])
                    for m in med.columns for e in contenders if e != "stacked"})
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "engines.csv", index=False)
    (out / "engines.json").write_text(json.dumps(
        {"args": vars(args), "summary": summary, "machine": {"platform": platform.platform(), "cores": os.cpu_count()},
         "versions": versions()}, indent=2, default=str) + "\n")


def run_all(args, contenders: list[str], old: Path) -> list[dict]:
    """Every contender ``repeats`` times, alternating (loop, stacked[, before], loop, ...)."""
    rows = []
    for rep in range(args.repeats):
        for engine in contenders:
            row = {**one(engine, args.rounds, args.core, args.strategies, old if engine == BEFORE else ROOT),
                   "repeat": rep}
            rows.append(row)
            print(f"{engine:>7s} repeat {rep}: {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU "
                  f"(load {row['load1_before']:.2f} -> {row['load1_after']:.2f})", flush=True)
    return rows


if __name__ == "__main__":
    main()
