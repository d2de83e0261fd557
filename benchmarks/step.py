"""The stacked training step of one default round: ``StackedTrainer.train_jobs`` on 20 clients, alternating contenders.

    python benchmarks/step.py                                   # this tree, 3 alternations, pinned to core 1
    python benchmarks/step.py --before 2bff672 --profile        # and the package at a commit, with profiles
    python benchmarks/step.py --variant compile --variant autocast_bf16

The workload is round 1 of the default config (digit_domains, 20 clients, the domain partition, 3 local
epochs of Adam, batch 16): every client's job from the initial state, trained at once by the stacked engine
(``fl/engine.py``, docs/ARCHITECTURE.md §8). A contender is this tree (``current``), the package at a commit
(``--before``, ``git archive`` into a temporary folder, its own fedmoe_da on the path), or a variant of this
tree: ``compile`` (``config.compile_step``, if this tree has the field; its compile time is the first call's,
reported apart as ``first_s``), ``autocast_bf16`` (the step under ``torch.autocast("cpu", torch.bfloat16)``,
measured, not a config option). Each run is a fresh process pinned with taskset to one core, one torch
thread: one warm-up call (``first_s``), then ``--calls`` timed calls (their medians are ``step_s``, wall, and
``step_cpu_s``, the process's CPU time: less sensitive to other processes on a shared machine, so the ratios
and GFLOP/s use it); contenders alternate (A, B, A, B, ...) ``--repeats`` times.

Reported per run, besides the seconds: ``train_gflops`` = training FLOPs of the round / ``step_cpu_s`` (FLOPs per
sample from ``torch.utils.flop_counter`` on the model module's forward + backward, as ``sim_throughput.py``
counts them), ``matmul_peak_gflops`` (the best single-thread fp32 ``torch.mm`` of 512..1024 squares, in the
same process) and ``pct_of_peak``; the load average before and after. A busy machine slows the peak's
short matmuls too, so the summary also gives ``pct_of_best_peak``: the median GFLOP/s over the best peak
of all runs. ``--profile`` saves each contender's
``torch.profiler`` table (top ops by self CPU time over one call) as ``profile_<contender>.txt``.
Writes ``<out>/step.csv`` and ``<out>/step.json`` (args, summary, machine, versions, load averages).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
VARIANTS = ("compile", "autocast_bf16")


def child(variant: str | None, calls: int, profile: str | None) -> dict:
    """One run in this process (fedmoe_da is whichever the path gives: this tree or an old commit's)."""
    import torch
    from sim_throughput import matmul_peak_gflops, train_flops_per_sample

    from fedmoe_da import data as data_mod
    from fedmoe_da import models
    from fedmoe_da.config import ExperimentConfig
    from fedmoe_da.fl.client import Job
    from fedmoe_da.fl.engine import StackedTrainer
    from fedmoe_da.fl.state import get_state

    torch.set_num_threads(1)
    fields = {"progress": False}
    if variant == "compile":
        fields["compile_step"] = True
    config = ExperimentConfig(**fields).validate()
    peak = matmul_peak_gflops(1)
    flops = train_flops_per_sample(config)
    dataset = data_mod.build(config)
    clients = data_mod.partition(dataset, config)
    torch.manual_seed(0)
    model = models.build(config, dataset.input_shape, dataset.num_classes)
    state = get_state(model)
    jobs = [Job(state, c.x_train, c.y_train, k) for k, c in enumerate(clients)]
    trainer = StackedTrainer(model, config)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "autocast_bf16")

    def step():
        with autocast:
            return trainer.train_jobs(jobs)

    t = time.perf_counter()
    first = step()
    first_s = time.perf_counter() - t
    times, cpu = [], []
    for _ in range(calls):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        Path(profile).write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25) + "\n")
    samples = sum(len(c.y_train) for c in clients) * config.local_epochs
    step_s, step_cpu_s = statistics.median(times), statistics.median(cpu)
    gflops = flops * samples / step_cpu_s / 1e9
    losses = [loss for _, loss in first]
    return {"step_s": step_s, "step_cpu_s": step_cpu_s, "first_s": first_s, "min_s": min(times), "samples": samples,
            "train_mflop_per_sample": flops / 1e6, "train_gflops": gflops, "matmul_peak_gflops": peak,
            "pct_of_peak": 100 * gflops / peak, "mean_train_loss": statistics.mean(losses),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", metavar="COMMIT", help="also run the package as it was at COMMIT")
    ap.add_argument("--variant", action="append", default=[], choices=VARIANTS, help="also run this tree so")
    ap.add_argument("--no-current", action="store_true", help="leave this tree's default out")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3, help="timed calls per run, after one warm-up call")
    ap.add_argument("--core", default="1", help="taskset core list for every run (default 1)")
    ap.add_argument("--profile", action="store_true", help="save each contender's profiler table")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/step"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-variant", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-profile", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child_variant, args.calls, args.child_profile)))
        return

    import pandas as pd
    from sim_throughput import load_average, machine, uncommitted

    from fedmoe_da.fl.run_folder import versions

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    contenders = ([] if args.no_current else [("current", None)]) + [(v, v) for v in args.variant]
    contenders += [(f"before_{args.before}", None)] if args.before else []
    info = {"args": {k: v for k, v in vars(args).items() if not k.startswith("child")}, "machine": machine(),
            "load_before": load_average(), "versions": versions(), "uncommitted": uncommitted()}
    rows = []
    with tempfile.TemporaryDirectory() as old:
        if args.before:
            archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        for rep in range(args.repeats):
            for name, variant in contenders:
                source = old if name.startswith("before_") else str(ROOT)
                cmd = ["taskset", "-c", args.core, sys.executable, __file__, "--child", "--calls", str(args.calls)]
                cmd += ["--child-variant", variant] if variant else []
                if args.profile and rep == 0:
                    cmd += ["--child-profile", str(out / f"profile_{name}.txt")]
                env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": source}
                load = load_average()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=source)
                if proc.returncode != 0:
                    sys.exit(f"{name} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
                row = {"contender": name, "repeat": rep, **json.loads(proc.stdout.strip().splitlines()[-1]),
                       "load1_before": load[0], "load1_after": load_average()[0]}
                rows.append(row)
                print(f"{name:>22s} repeat {rep}: step {row['step_s']:.3f} s, CPU {row['step_cpu_s']:.3f} s "
                      f"(first {row['first_s']:.2f} s), "
                      f"{row['train_gflops']:.1f} GFLOP/s = {row['pct_of_peak']:.0f}% of "
                      f"{row['matmul_peak_gflops']:.0f}, load {load[0]:.2f}", flush=True)
    df = pd.DataFrame(rows)
    cols = ["step_s", "step_cpu_s", "first_s", "pct_of_peak", "train_gflops", "matmul_peak_gflops"]
    med = df.groupby("contender")[cols].median()
    ref = contenders[0][0]
    best_peak = float(df["matmul_peak_gflops"].max())          # the least disturbed peak of the session
    summary = {name: {**{k: float(v) for k, v in med.loc[name].items()},
                      f"step_cpu_s_over_{ref}": float(med.loc[name, "step_cpu_s"] / med.loc[ref, "step_cpu_s"]),
                      "pct_of_best_peak": float(100 * med.loc[name, "train_gflops"] / best_peak)}
               for name, _ in contenders}
    info.update(summary=summary, load_after=load_average())
    print(json.dumps(summary, indent=1))
    df.to_csv(out / "step.csv", index=False)
    (out / "step.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    print(f"wrote {out}/step.csv, step.json; load average {info['load_after']}")


if __name__ == "__main__":
    main()
