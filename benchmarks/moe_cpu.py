"""Time the MoE layer on a CPU: the sort-based reference ('torch') against the dense-masked path ('dense').

    python benchmarks/moe_cpu.py            # the cases below, ~15 s; writes benchmarks/results/moe_cpu.csv (+ .json)
    python benchmarks/moe_cpu.py --sweep --runs 3 --reps 20   # tokens x shapes: where dense stops winning, ~1 min
    python benchmarks/moe_cpu.py --tiny     # a few steps of one case, for the smoke test

Each timed step is one ``MoELayer`` forward + backward (output and aux loss),
as in training. One torch thread, the process pinned to CPU 0 (what
``taskset -c 0`` does), both backends on the same weights and inputs, run in
alternation (torch, dense, torch, dense, ...) so that a neighbour's load hits
both alike; each row reports the median over all timed steps of a backend,
the medians of its separate runs, and the load average before and after.
``--sweep`` also prints the largest ``dense_work`` at which dense was still
faster for every shape: ``backend.DENSE_MAX_WORK`` (the rule of 'auto') was
chosen from it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmoe_da.moe import MoELayer, resolve_backend  # noqa: E402
from fedmoe_da.moe.backend import DENSE_MAX_WORK, dense_work  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("torch", "dense")
# name: (tokens, d_model, d_hidden, d_out, experts, top_k)
CASES = {
    "default_T16": (16, 64, 64, 10, 8, 2),      # one token per image: the classifier-head MoE, batch 16
    "default_T64": (64, 64, 64, 10, 8, 2),      # batch 64
    "default_T256": (256, 64, 64, 10, 8, 2),
    "vit": (16 * 65, 64, 128, 64, 8, 2),        # ViT-like: 16 images x 65 tokens, an MoE feed-forward block
}
SWEEP_TOKENS = (16, 32, 64, 128, 256, 512, 1024, 2048)
SWEEP_SHAPES = ((64, 64, 10, 8, 2), (64, 128, 64, 8, 2), (128, 128, 128, 8, 2), (64, 64, 10, 4, 1),
                (64, 64, 10, 16, 2))            # (d_model, d_hidden, d_out, experts, top_k)


def make_step(backend: str, T: int, d: int, h: int, d_out: int, E: int, k: int):
    """One training step of a fresh MoELayer (seed 0, so both backends share weights and inputs)."""
    torch.manual_seed(0)
    layer = MoELayer(d, h, d_out, num_experts=E, top_k=k, backend=backend)
    x = torch.randn(T, d, requires_grad=True)
    grad = torch.randn(T, d_out)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        ((layer(x) * grad).sum() + layer.aux_loss).backward()
    return step


def time_steps(step, warmup: int, reps: int) -> list[float]:
    """Microseconds of each of ``reps`` calls of step(), after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e6)
    return times


def compare(shape: tuple[int, ...], runs: int, warmup: int, reps: int) -> dict[str, dict]:
    """Alternate the backends ``runs`` times on one shape: {backend: {median_us, run_medians_us}}."""
    steps = {b: make_step(b, *shape) for b in BACKENDS}
    times: dict[str, list[list[float]]] = {b: [] for b in BACKENDS}
    for _ in range(runs):
        for b in BACKENDS:                                   # A, B, A, B, ...
            times[b].append(time_steps(steps[b], warmup, reps))
    return {b: {"median_us": statistics.median(t for run in ts for t in run),
                "run_medians_us": [round(statistics.median(run), 1) for run in ts]} for b, ts in times.items()}


def rows_for(name: str, shape: tuple[int, ...], args) -> list[dict]:
    T, d, h, d_out, E, k = shape
    load_before = os.getloadavg()[0]
    res = compare(shape, args.runs, args.warmup, args.reps)
    load_after = os.getloadavg()[0]
    work = dense_work(T, d, h, d_out, E)
    auto = resolve_backend("auto", torch.device("cpu"), work).name
    speedup = res["torch"]["median_us"] / res["dense"]["median_us"]
    print(f"{name:14s} T={T:5d} d={d} h={h} d_out={d_out} E={E} k={k} work={work:>11,d}  "
          f"torch {res['torch']['median_us']:8.0f} us  dense {res['dense']['median_us']:8.0f} us  "
          f"dense speed-up {speedup:5.2f}x  auto -> {auto}  (load {load_before:.2f} -> {load_after:.2f})", flush=True)
    return [dict(case=name, backend=b, tokens=T, d_model=d, d_hidden=h, d_out=d_out, experts=E, top_k=k,
                 dense_work=work, median_us=round(r["median_us"], 1),
                 run_medians_us=" ".join(map(str, r["run_medians_us"])), dense_speedup=round(speedup, 3),
                 auto_picks=auto, loadavg_before=load_before, loadavg_after=load_after)
            for b, r in res.items()]


def crossover(df) -> dict:
    """Per shape, the largest dense_work where dense was faster and the smallest where it was not."""
    out = {}
    for key, part in df[df.backend == "dense"].groupby(["d_model", "d_hidden", "d_out", "experts", "top_k"]):
        wins, losses = part[part.dense_speedup > 1].dense_work, part[part.dense_speedup <= 1].dense_work
        out["d=%d h=%d d_out=%d E=%d k=%d" % key] = {
            "largest_work_dense_faster": int(wins.max()) if len(wins) else None,
            "smallest_work_torch_faster": int(losses.min()) if len(losses) else None}
    return out


def main(argv: list[str] | None = None) -> None:
    import pandas as pd

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sweep", action="store_true", help="tokens x shapes grid instead of the named cases")
    p.add_argument("--tiny", action="store_true", help="one small case, few steps (smoke test)")
    p.add_argument("--runs", type=int, default=5, help="alternating runs per backend")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=40, help="timed steps per run")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pinned = hasattr(os, "sched_setaffinity")
    if pinned:
        os.sched_setaffinity(0, {0})                         # taskset -c 0
    if args.tiny:
        args.runs, args.warmup, args.reps = 2, 1, 3
        jobs = [("default_T16", CASES["default_T16"])]
    elif args.sweep:
        jobs = [(f"sweep_T{T}", (T, *shape)) for shape in SWEEP_SHAPES for T in SWEEP_TOKENS]
    else:
        jobs = list(CASES.items())
    out = args.out or RESULTS / ("moe_cpu_sweep.csv" if args.sweep else "moe_cpu.csv")

    print(f"torch {torch.__version__}, 1 thread, pinned to CPU 0: {pinned}, load average {os.getloadavg()}")
    df = pd.DataFrame([row for name, shape in jobs for row in rows_for(name, shape, args)])
    meta = {"device": f"CPU ({platform.processor() or platform.machine()})", "cpus": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "threads": 1, "pinned_cpu0": pinned,
            "DENSE_MAX_WORK": DENSE_MAX_WORK}
    for key in ("device", "torch"):
        df[key] = meta[key]
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    sidecar = {**meta, "args": {**vars(args), "out": os.path.relpath(out, RESULTS.parent.parent)}}
    if args.sweep:
        sidecar["crossover"] = crossover(df)
        print(json.dumps(sidecar["crossover"], indent=2))
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
