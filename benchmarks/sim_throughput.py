"""Simulator throughput: seconds per round, peak RSS and training GFLOP/s for 20 to 1,000 clients.

    python benchmarks/sim_throughput.py                                  # 20, 100, 200, 1000 clients, 20 rounds
    python benchmarks/sim_throughput.py --clients 20 100 --rounds 5 --engine stacked loop --repeats 2

Each (size, engine, repeat) runs ``simulate(config)`` in a fresh subprocess, so its peak RSS is its own;
with several engines the runs alternate (A, B, A, B) so that a change in the machine's load hits both.
The workload is the package's default config (3,200 samples, 1,920 of them for training: the total work
per round stays the same as clients grow, only the per-client overhead grows), dealt ``iid`` with
``min_samples`` 1, the one partition that gives each of 1,000 clients data (1 or 2 training images; the
domain partition's rounding leaves some of them none); strategy ``fedmoe_da``, ``--threads`` torch threads
(the config's ``threads``; default 1).

Rounds are timed by hooks around the runner, nothing in it changes: the strategy's ``begin_round`` and
``communicate`` and the runner's ``evaluate_round`` mark the start of a round, the end of local training,
the end of communication and the end of evaluation; the RSS is read after evaluation (``rss_mb``) and at the
end of the round (``rss_end_mb``), after the runner's ``release_freed_memory`` (glibc's ``malloc_trim``), which
is what the process holds between rounds. Reported per run (medians over rounds 2..R; round 1 is also given):

* ``s_per_round`` (whole round), ``train_s``, ``comm_s``, ``eval_s``;
* ``rss_growth_pct``: RSS at the end of the last round over RSS at the end of round 2 (``rss_growth_before_trim_pct``:
  the same after evaluation, before the trim: it also counts freed memory glibc still holds, and swings by
  +-5% from round to round);  ``peak_rss_mb``: the process's peak
  (rounds.csv has the peak so far at the end of each phase, so the phase that set it shows);
* ``train_gflops``: training FLOPs per round / training seconds per round. FLOPs per training sample are
  counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward + backward of a batch of the real
  model and data (what the dispatch backend executes, optimizer step not counted), times the samples a round
  trains (participants' training sets x local_epochs);
* ``matmul_peak_gflops``: the best fp32 ``torch.mm`` of 512..1024 squares with the run's ``--threads``,
  measured in the same process just before the run; ``pct_of_peak`` = train_gflops / it;
* ``threads``: the torch threads the run had (read inside it), ``cpus_allowed``: the cores it could use.

Writes ``<out>/sim_throughput.csv`` (one row per run), ``<out>/rounds.csv`` (one row per run and round)
and ``<out>/sim_throughput.json`` (config, machine, load averages, package versions).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = (20, 100, 200, 1000)
WORKLOAD = {"partition": "iid", "min_samples": 1, "progress": False, "threads": 1}
"""Fields the benchmark sets beyond num_clients, rounds, strategy and engine (why: the module docstring);
``--threads`` replaces ``threads``."""


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory in MB now (VmRSS), or its peak so far (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument exits 2 with one line (no usage block), as check_args does."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n")


def fail(message: str):
    """Exit 2 (a usage error) with ``message`` as the one line on stderr."""
    print(message, file=sys.stderr)
    sys.exit(2)


def check_args(args) -> None:
    """Bad --rounds, --repeats, --threads or --engine exit 2 with one line; --engine defaults to the config's
    default engine (shared with vs_flower.py)."""
    from fedmoe_da.config import ENGINES, ExperimentConfig

    if args.rounds < 2 or args.repeats < 1:
        fail(f"--rounds={args.rounds} --repeats={args.repeats} are invalid: need rounds >= 2, repeats >= 1")
    if args.threads < 1:
        fail(f"--threads={args.threads} is invalid: need an integer >= 1 (torch threads of this package's run)")
    args.engine = args.engine or [ExperimentConfig().engine]
    bad = [e for e in args.engine if e not in ENGINES]
    if bad:
        fail(f"--engine={bad[0]!r} is invalid: must be one of {', '.join(ENGINES)}")


def make_config(clients: int, rounds: int, strategy: str, engine: str, **fields):
    """The benchmark's config: the defaults but for these."""
    from fedmoe_da.config import ExperimentConfig

    return ExperimentConfig(num_clients=clients, rounds=rounds, strategy=strategy, engine=engine, **fields).validate()


def matmul_peak_gflops(threads: int = 1, sizes=(512, 768, 1024), repeats: int = 5) -> float:
    """Best fp32 torch.mm GFLOP/s with ``threads`` torch threads over square sizes (2 n^3 flops each)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = 0.0
        for n in sizes:
            a, b = torch.randn(n, n), torch.randn(n, n)
            torch.mm(a, b)                                   # warm-up
            for _ in range(repeats):
                t = time.perf_counter()
                torch.mm(a, b)
                best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
        return best
    finally:
        torch.set_num_threads(before)


def train_flops_per_sample(config) -> float:
    """FLOPs of one training sample (forward + backward of one batch of the real model and data, / batch size)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from fedmoe_da import data as data_mod
    from fedmoe_da import models

    dataset = data_mod.build(config)
    model = models.build(config, dataset.input_shape, dataset.num_classes)
    x, y = dataset.x_train[:config.batch_size], dataset.y_train[:config.batch_size]
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(x), y) + model.aux_loss()
        loss.backward()
    return counter.get_total_flops() / len(y)


class RoundClock:
    """Wraps the runner's hooks to time each round's phases and read the RSS after evaluation and at its end."""

    def __init__(self) -> None:
        self.marks: list[dict] = []            # per round: begin, trained, communicated, evaluated, rss_mb
        self.samples_per_round: list[int] = []
        self.threads = 0

    def install(self, simulation) -> None:
        import torch

        make_strategy, evaluate_round = simulation.make_strategy, simulation.evaluate_round
        clock = self

        def timed_strategy(config, groups, template, num_train, *args, **kw):
            strategy = make_strategy(config, groups, template, num_train, *args, **kw)
            begin_round, communicate = strategy.begin_round, strategy.communicate

            def begin(rnd, participants, *a, **k):
                clock.marks.append({"round": rnd, "begin": time.perf_counter(), "peak_before_mb": rss_mb("VmHWM")})
                clock.samples_per_round.append(sum(num_train[p] for p in participants) * config.local_epochs)
                return begin_round(rnd, participants, *a, **k)

            def comm(*a, **k):
                clock.marks[-1].update(trained=time.perf_counter(), peak_trained_mb=rss_mb("VmHWM"))
                out = communicate(*a, **k)
                clock.marks[-1].update(communicated=time.perf_counter(), peak_communicated_mb=rss_mb("VmHWM"))
                return out

            strategy.begin_round, strategy.communicate = begin, comm
            return strategy

        def timed_eval(*a, **k):
            out = evaluate_round(*a, **k)
            clock.marks[-1].update(evaluated=time.perf_counter(), rss_mb=rss_mb(), peak_evaluated_mb=rss_mb("VmHWM"))
            clock.threads = torch.get_num_threads()
            return out

        release = simulation.release_freed_memory

        def end_of_round():                                   # the runner's last step of a round (malloc_trim)
            release()
            clock.marks[-1].update(rss_end_mb=rss_mb())

        simulation.make_strategy, simulation.evaluate_round = timed_strategy, timed_eval
        simulation.release_freed_memory = end_of_round

    def rounds(self) -> list[dict]:
        """Per round: seconds (end of eval to end of eval; round 1 from its begin), train_s, comm_s, eval_s, rss_mb
        (after the round), and the process's peak RSS so far at each phase's end (which phase raised it)."""
        rows, last = [], None
        for m in self.marks:
            missing = {"trained", "communicated", "evaluated", "rss_end_mb"} - set(m)
            if missing:
                raise RuntimeError(f"round {m['round']}: the runner never reached {sorted(missing)}: "
                                   "the hooks no longer match simulation.py")
            start = m["begin"] if last is None else last
            rows.append({"round": m["round"], "seconds": m["evaluated"] - start, "train_s": m["trained"] - m["begin"],
                         "comm_s": m["communicated"] - m["trained"], "eval_s": m["evaluated"] - m["communicated"],
                         "rss_mb": m["rss_mb"], "rss_end_mb": m["rss_end_mb"],
                         **{k: m[k] for k in ("peak_before_mb", "peak_trained_mb",
                                                                      "peak_communicated_mb", "peak_evaluated_mb")}})
            last = m["evaluated"]
        return rows


def one(clients: int, rounds: int, strategy: str, engine: str, threads: int = 1) -> dict:
    """One run in this process with ``threads`` torch threads: per-round rows and the run's summary."""
    import torch

    from fedmoe_da.fl import simulation

    config = make_config(clients, rounds, strategy, engine, **{**WORKLOAD, "threads": threads})
    peak = matmul_peak_gflops(threads)
    flops = train_flops_per_sample(config)
    clock = RoundClock()
    clock.install(simulation)
    start = time.perf_counter()
    simulation.simulate(config)
    total = time.perf_counter() - start
    per_round = clock.rounds()
    steady = per_round[1:] or per_round
    med = {k: statistics.median(r[k] for r in steady) for k in ("seconds", "train_s", "comm_s", "eval_s")}
    samples = statistics.median(clock.samples_per_round)
    gflops = flops * samples / med["train_s"] / 1e9
    second = per_round[min(1, len(per_round) - 1)]
    rss2, rss_last = second["rss_end_mb"], per_round[-1]["rss_end_mb"]
    evaluated2, evaluated_last = second["rss_mb"], per_round[-1]["rss_mb"]
    summary = {
        "clients": clients, "engine": engine, "rounds": rounds, "strategy": strategy,
        "s_per_round": med["seconds"], "train_s": med["train_s"], "comm_s": med["comm_s"], "eval_s": med["eval_s"],
        "first_round_s": per_round[0]["seconds"], "setup_s": total - sum(r["seconds"] for r in per_round),
        "rss_round2_mb": rss2, "rss_last_mb": rss_last, "rss_growth_pct": 100 * (rss_last - rss2) / rss2,
        "rss_growth_before_trim_pct": 100 * (evaluated_last - evaluated2) / evaluated2,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_samples_per_round": samples, "train_mflop_per_sample": flops / 1e6, "train_gflops": gflops,
        "matmul_peak_gflops": peak, "pct_of_peak": 100 * gflops / peak,
        "threads": clock.threads, "cpus_allowed": len(os.sched_getaffinity(0)),
        "torch_threads_default": torch.get_num_threads(),
    }
    return {"summary": summary, "rounds": per_round}


def machine() -> dict:
    """The machine in words: platform, processor, cores, and the load averages now."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count()}


def uncommitted() -> list[str]:
    """The package's files that differ from the commit in versions()'s git_sha (numbers then come from those)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "fedmoe_da"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent.parent).stdout
    except (OSError, subprocess.SubprocessError):
        return ["unknown: git not available"]
    return [line[3:] for line in out.splitlines()]


def load_average() -> tuple[float, float, float]:
    return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]


def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--strategy", default="fedmoe_da")
    ap.add_argument("--engine", nargs="+", default=None,
                    help="engines to run, alternating (default: the config's default engine; 'loop' without the field)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each (size, engine)")
    ap.add_argument("--threads", type=int, default=WORKLOAD["threads"], help="torch threads of each run (>= 1)")
    ap.add_argument("--out", default="benchmarks/results/sim_throughput")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    check_args(args)
    if args.child:
        print(json.dumps(one(args.clients[0], args.rounds, args.strategy, args.engine[0], args.threads)))
        return

    import pandas as pd

    from fedmoe_da.fl.run_folder import versions

    workload = {**WORKLOAD, "threads": args.threads}
    info = {"machine": machine(), "load_before": load_average(), "versions": versions(),
            "uncommitted": uncommitted(), "args": {k: v for k, v in vars(args).items() if k != "child"},
            "workload": workload, "config": make_config(args.clients[0], args.rounds, args.strategy, args.engine[0],
                                                        **workload).to_dict()}
    print(f"{info['machine']['cpu']}, {info['machine']['cores']} cores, {args.threads} torch thread(s) per run, "
          f"load average {info['load_before']}")
    summaries, rounds = [], []
    for n in args.clients:
        for rep in range(args.repeats):
            for engine in args.engine:     # alternating A, B, A, B
                load = load_average()
                proc = subprocess.run([sys.executable, __file__, "--child", "--clients", str(n), "--rounds",
                                       str(args.rounds), "--strategy", args.strategy, "--engine", engine,
                                       "--threads", str(args.threads)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{n} clients ({engine}) failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
                got = json.loads(proc.stdout.strip().splitlines()[-1])
                row = {**got["summary"], "repeat": rep, "load1_before": load[0], "load1_after": load_average()[0]}
                summaries.append(row)
                rounds += [{"clients": n, "engine": engine, "repeat": rep, **r} for r in got["rounds"]]
                print(f"{n:5d} clients {engine:>8s}: {row['s_per_round']:.3f} s/round (train {row['train_s']:.3f}, "
                      f"comm {row['comm_s']:.3f}, eval {row['eval_s']:.3f}; round 1 {row['first_round_s']:.2f} s), "
                      f"RSS round 2 {row['rss_round2_mb']:.0f} MB -> round {args.rounds} {row['rss_last_mb']:.0f} MB "
                      f"({row['rss_growth_pct']:+.2f}%; after evaluation, before the trim: "
                      f"{row['rss_growth_before_trim_pct']:+.2f}%), peak {row['peak_rss_mb']:.0f} MB, "
                      f"training {row['train_gflops']:.2f} GFLOP/s = {row['pct_of_peak']:.0f}% of the "
                      f"{row['matmul_peak_gflops']:.1f} GFLOP/s matmul peak, {row['threads']} thread(s), "
                      f"load {load[0]:.2f}", flush=True)
    info["load_after"] = load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(summaries).to_csv(out / "sim_throughput.csv", index=False)
    pd.DataFrame(rounds).to_csv(out / "rounds.csv", index=False)
    (out / "sim_throughput.json").write_text(json.dumps(info, indent=2, default=str))
    print(f"wrote {out}/sim_throughput.csv, rounds.csv, sim_throughput.json; load average {info['load_after']}")


if __name__ == "__main__":
    main()
