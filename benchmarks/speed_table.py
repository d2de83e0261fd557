"""The README's speed table, written from the committed benchmark results (no number is typed by hand).

    python benchmarks/speed_table.py            # writes benchmarks/results/speed.md
    python benchmarks/speed_table.py --readme   # and copies it into README.md's speed block

Reads, under ``benchmarks/results/``: ``sim_throughput/sim_throughput.csv`` (20/100/200 clients, both
engines), ``sim_throughput/clients_1000/sim_throughput.csv`` (1,000 clients, stacked),
``engines/engines.json`` (``compare`` against the loop engine and the package before issue 8),
``vs_flower/vs_flower.json`` (one thread) and ``vs_flower/threads2/vs_flower.json`` (two threads, if present).
Each row names the command that wrote its file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
OUT = RESULTS / "speed.md"


def _median(df: pd.DataFrame, clients: int, engine: str, column: str) -> float:
    rows = df[(df["clients"] == clients) & (df["engine"] == engine)]
    if rows.empty:
        raise SystemExit(f"speed_table: no {engine} run with {clients} clients in the sim_throughput results")
    return float(rows[column].median())


def _flower(path: Path) -> dict[tuple[int, str], dict]:
    ratios = json.loads(path.read_text())["ratios"]
    return {(r["clients"], r["engine"]): r for r in ratios}


def table() -> str:
    st = pd.read_csv(RESULTS / "sim_throughput/sim_throughput.csv")
    big = pd.read_csv(RESULTS / "sim_throughput/clients_1000/sim_throughput.csv")
    engines = json.loads((RESULTS / "engines/engines.json").read_text())
    summary, before = engines["summary"], engines["args"].get("before")
    sizes = sorted(st["clients"].unique())
    loads = pd.concat([st, big])[["load1_before", "load1_after"]]
    per = lambda engine, col, fmt: " / ".join(format(_median(st, n, engine, col), fmt) for n in sizes)  # noqa: E731
    n_list = " / ".join(str(n) for n in sizes)
    rows = [
        ("| what | result | file (command) |", "|---|---|---|"),
        (f"| `fedmoe-da compare`, {engines['args']['rounds']} rounds, alternating, CPU time | stacked "
         f"{summary['cpu_s_stacked']:.1f} s; loop {summary['cpu_s_loop']:.1f} s "
         f"({summary['cpu_s_loop_over_stacked']:.2f}x)"
         + (f"; the package before issue 8 (`{before}`) {summary['cpu_s_before']:.1f} s "
            f"({summary['cpu_s_before_over_stacked']:.2f}x)" if before else "")
         + " | `engines/` (`python benchmarks/engines.py"
         + (f" --before {before}" if before else "") + "`) |",),
    ]
    for name, label in (("vs_flower/vs_flower.json", "one thread"),
                        ("vs_flower/threads2/vs_flower.json", "two threads")):
        path = RESULTS / name
        if not path.exists():
            continue
        flower = _flower(path)
        cells = []
        for engine in ("stacked", "loop"):
            got = [(n, r) for (n, e), r in sorted(flower.items()) if e == engine]
            if got:
                cells.append(f"{engine} " + ", ".join(f"{r['ratio']:.2f}x at {n} clients" for n, r in got))
        threads = "" if label == "one thread" else " --threads 2"
        rows.append((f"| FedAvg, Flower 1.42's simulation (Ray, 2 actors on the same 2 cores) against this package on "
                     f"{label}: Flower's s/round over ours, no evaluation | {'; '.join(cells)} | "
                     f"`{Path(name).parent}/` (`python benchmarks/vs_flower.py{threads}`, Flower in its own venv) |",))
    rows += [
        (f"| seconds per round, {n_list} clients (the default data dealt IID), 20 rounds, FedMoE-DA | stacked "
         f"{per('stacked', 's_per_round', '.2f')}; loop {per('loop', 's_per_round', '.2f')} | "
         f"`sim_throughput/` (`python benchmarks/sim_throughput.py --clients {' '.join(map(str, sizes))}`) |",),
        (f"| training GFLOP/s (share of a single-thread matmul) | stacked {per('stacked', 'train_gflops', '.1f')} "
         f"({per('stacked', 'pct_of_peak', '.0f')}%); loop {per('loop', 'train_gflops', '.1f')} "
         f"({per('loop', 'pct_of_peak', '.0f')}%) | same |",),
        (f"| RSS growth, end of round 2 to end of round 20 (after the runner's `malloc_trim`) | stacked "
         f"{per('stacked', 'rss_growth_pct', '+.1f')}%; loop {per('loop', 'rss_growth_pct', '+.1f')}% | same |",),
        (f"| 1,000 clients, 20 rounds, stacked | {_median(big, 1000, 'stacked', 's_per_round'):.2f} s/round "
         f"(training {_median(big, 1000, 'stacked', 'train_s'):.2f}, communication "
         f"{_median(big, 1000, 'stacked', 'comm_s'):.2f}); peak RSS "
         f"{_median(big, 1000, 'stacked', 'peak_rss_mb') / 1024:.2f} GiB; RSS growth "
         f"{_median(big, 1000, 'stacked', 'rss_growth_pct'):+.1f}% | `sim_throughput/clients_1000/` "
         f"(`python benchmarks/sim_throughput.py --clients 1000 --engine stacked --out "
         f"benchmarks/results/sim_throughput/clients_1000`) |",),
    ]
    lines = [cell for row in rows for cell in row]
    lines.append(f"\nLoad averages during these runs: {loads.min().min():.2f} to {loads.max().max():.2f} "
                 "(2 cores); every file's json has the machine and package versions.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", action="store_true", help="also copy the table into README.md's speed block")
    args = ap.parse_args()
    try:
        text = table()
    except FileNotFoundError as exc:
        sys.exit(f"speed_table: {exc.filename} is missing: run the benchmark that writes it first")
    OUT.write_text(text)
    print(text)
    if args.readme:
        sys.path.insert(0, str(ROOT))
        from fedmoe_da.results import update_readme
        os.chdir(ROOT)                                   # the block names the file relative to the repository
        update_readme("README.md", OUT.relative_to(ROOT))


if __name__ == "__main__":
    main()
