"""Simulator throughput: seconds per round and peak memory for 10, 50 and 200 clients.

    python benchmarks/sim_throughput.py                 # 10, 50, 200 clients, 5 rounds each
    python benchmarks/sim_throughput.py --clients 20 --rounds 10

Each size runs in a fresh subprocess so its peak RSS is its own. Memory must
not grow with rounds: the script also prints the RSS after the first and the
last round (clients hold parameter states, one model is shared). Writes a CSV
with the device and package versions beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one(clients: int, rounds: int, strategy: str, max_samples: int | None) -> dict:
    import torch

    from fedmoe_da.config import ExperimentConfig
    from fedmoe_da.fl import simulation

    config = ExperimentConfig(num_clients=clients, rounds=1, strategy=strategy, progress=False, min_samples=1,
                              max_samples=max_samples).validate()
    times, rss = [], []
    # time rounds one by one through the real loop: run R rounds, record wall time per round via a hook
    orig = simulation.evaluate_round
    last = [time.perf_counter()]

    def timed(*args, **kw):
        out = orig(*args, **kw)
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        rss.append(rss_mb())
        return out

    simulation.evaluate_round = timed
    last[0] = time.perf_counter()
    simulation.run_simulation(config.replace(rounds=rounds))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steady = times[1:] or times
    return {"clients": clients, "rounds": rounds, "strategy": strategy, "s_per_round": sum(steady) / len(steady),
            "first_round_s": times[0], "rss_after_round1_mb": rss[0], "rss_after_last_mb": rss[-1],
            "peak_rss_mb": peak, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--strategy", default="fedmoe_da")
    ap.add_argument("--out", default="benchmarks/results/sim_throughput.csv")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.clients[0], args.rounds, args.strategy, None)))
        return
    import pandas as pd

    from fedmoe_da.results import versions

    rows = []
    for n in args.clients:
        proc = subprocess.run([sys.executable, __file__, "--child", "--clients", str(n), "--rounds", str(args.rounds),
                               "--strategy", args.strategy], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{n} clients failed: {proc.stderr.strip().splitlines()[-1]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{n:4d} clients: {row['s_per_round']:.2f} s/round (first {row['first_round_s']:.2f} s), "
              f"RSS after round 1 {row['rss_after_round1_mb']:.0f} MB, after round {args.rounds} "
              f"{row['rss_after_last_mb']:.0f} MB, peak {row['peak_rss_mb']:.0f} MB", flush=True)
    df = pd.DataFrame(rows)
    df["cpu"] = platform.processor() or platform.machine()
    df["cores"] = os.cpu_count()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    out.with_suffix(".json").write_text(json.dumps(versions(), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
