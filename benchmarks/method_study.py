"""Where does FedMoE-DA win? A one-factor-at-a-time screen on validation data, then 3 seeds on test data.

    python benchmarks/method_study.py [--jobs N] [--out benchmarks/results/method_study] [--smoke]

Stage 1 (screen, seed 0, ``eval_split="validation"``: each client holds out 20%
of its own training data; the test set is never touched): FedMoE-DA around a
base point, one factor at a time (proxy, gate init, P, tau, I, Eq. 11 schedule,
lb_coef, the zero-correlation guard, backbone channel), on two partitions:
``domain`` (each client one home domain, all labels) and ``domain_dirichlet``
(home domain x Dirichlet(0.5) labels).

Stage 1b (refine, same split): one factor at a time around the best variant of
stage 1, over the knobs that decide how much is shared (P, tau, I, schedule).

Stage 2 (test, seeds 0-2): the chosen FedMoE-DA (the best variant of stages 1
and 1b by mean validation accuracy over both partitions; the oracle proxy is
not a candidate), FedMoE-DA with the paper's gate proxy, and every baseline (FedAvg, FedProx,
FedPer, FedRep, Ditto, Local), on the ``domain`` partition (the regime the
method targets; both partitions did not fit the two-hour budget), reported once.

Writes ``screen.csv`` and ``test.csv`` (one row per run: its settings, final and
best personalised accuracy, std over clients, worst 10%, server / P2P / total
bytes, the purity of A), ``study.json`` (base config, factors, candidates,
package versions, wall time) and ``summary.md`` (the tables the README shows), appended run by run so an
interrupted study resumes where it stopped. Runs go through the run pool (``fedmoe_da/pool.py``,
docs/ARCHITECTURE.md §10): one torch thread each, ``--jobs`` at once (default: the usable cores); a failed
run is named, the others finish, and the study stops after that stage with exit code 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from fedmoe_da import ExperimentConfig, simulate
from fedmoe_da.cli import add_jobs_flag
from fedmoe_da.fl.run_folder import versions
from fedmoe_da.pool import PoolFailed, Task, run_pool, usable_cores

BASE = dict(dataset="digit_domains", num_clients=20, max_samples=3200, test_fraction=0.4, domain_purity=0.9,
            rounds=30, local_epochs=3, batch_size=16, lr=3e-3, lb_coef=0.0, strategy="fedmoe_da",
            proxy="gate_signature", gate_init="shared", P=3, tau=0.1, I=1, sync="every_round", progress=False)
PARTITIONS = ("domain", "domain_dirichlet")
TEST_PARTITIONS = ("domain",)   # the regime the method targets: each client one home domain, little data
FACTORS = {   # field -> levels screened besides the base level
    "proxy": ["gate", "gate_delta", "gate_centred", "domain"],
    "gate_init": ["per_client"],
    "P": [0, 1, 8],
    "tau": [0.03, 0.5],
    "I": [5, 10],
    "sync": ["refresh"],
    "lb_coef": [1e-2],
    "min_correlation": [0.0],
    "fedmoe_backbone": ["local"],
}
REFINE = {    # stage 1b: around the best variant of stage 1, the knobs that decide how much is shared
    "P": [1, 8, 19],
    "tau": [0.03, 0.5],
    "I": [5],
    "sync": ["refresh"],
}
BASELINES = ("fedavg", "fedprox", "fedper", "fedrep", "ditto", "local")
METRICS = ("final_acc_mean", "final_acc_std", "final_acc_worst10", "best_acc_mean", "best_round", "server_bytes",
           "p2p_bytes", "total_bytes", "domain_purity_first", "domain_purity_mean", "purity_chance",
           "discarded_updates")


def changes_in(job: dict) -> dict:
    """The config fields a job changes from the base point."""
    return {k: v for k, v in job.items() if k not in ("stage", "name")}


def run_one(job: dict, base: dict) -> dict:
    """One simulation -> one CSV row (the job's own fields, then the metrics). ``base``: BASE as the parent
    process has it (--smoke changes it there; a spawned worker imports this module afresh)."""
    start = time.time()
    config = ExperimentConfig(**{**base, **changes_in(job)})
    result = simulate(config)
    settings = {f: getattr(config, f) for f in ("strategy", "partition", "seed", "eval_split", *FACTORS)}
    return {"stage": job["stage"], "name": job["name"], **settings, **{m: result.summary.get(m) for m in METRICS},
            "seconds": round(time.time() - start, 1)}


def run_all(jobs: list[dict], path: Path, workers: int) -> pd.DataFrame:
    """Run the jobs not yet in ``path`` (keyed by stage, name, partition, seed), appending each row as it ends."""
    done = pd.read_csv(path) if path.exists() else pd.DataFrame()
    key = lambda j: (j["stage"], j["name"], j["partition"], int(j["seed"]))  # noqa: E731
    wanted = {key(j) for j in jobs}
    if len(done) and any(key(r) not in wanted for r in done.to_dict("records")):
        keep = [key(r) in wanted for r in done.to_dict("records")]        # rows of a previous design: dropped
        print(f"{path.name}: dropping {len(keep) - sum(keep)} rows that are not in this design", flush=True)
        done = done[keep]
        done.to_csv(path, index=False)
    have = {key(r) for r in done.to_dict("records")} if len(done) else set()
    todo = [j for j in jobs if key(j) not in have]
    print(f"{path.name}: {len(have)} done, {len(todo)} to run", flush=True)

    def append(_: int, row: dict) -> None:
        pd.DataFrame([row]).to_csv(path, mode="a", header=not path.exists(), index=False)
        print(f"  {row['name']:<28} {row['partition']:<17} seed {row['seed']}  acc {row['final_acc_mean']:.3f}  "
              f"purity {row['domain_purity_first']}  {row['seconds']} s", flush=True)

    tasks = [Task(f"{j['stage']} {j['name']} ({j['partition']}, seed {j['seed']})", run_one, (j, dict(BASE)),
                  context="config: BASE with " + ", ".join(f"{k}={v!r}" for k, v in changes_in(j).items()))
             for j in todo]
    run_pool(tasks, workers, on_result=append, desc=path.stem)
    return pd.read_csv(path)


def screen_jobs() -> list[dict]:
    jobs = []
    for partition in PARTITIONS:
        common = dict(stage="screen", partition=partition, seed=0, eval_split="validation")
        jobs.append({**common, "name": "base"})
        for field, levels in FACTORS.items():
            jobs += [{**common, "name": f"{field}={v}", field: v} for v in levels]
    return jobs


def best_variant(rows: pd.DataFrame) -> tuple[str, float]:
    """The variant with the best mean validation accuracy over both partitions (the oracle excluded)."""
    score = rows.groupby("name")["final_acc_mean"].mean().drop("proxy=domain", errors="ignore")
    return score.idxmax(), float(score.max())


def changes_of(name: str) -> dict:
    """'proxy=gate' -> {'proxy': 'gate'}; 'proxy=gate,P=8' -> both; 'base' -> {}."""
    if name == "base":
        return {}
    out = {}
    for item in name.split(","):
        field, value = item.split("=", 1)
        levels = FACTORS.get(field, []) + REFINE.get(field, [])
        out[field] = next(v for v in levels if str(v) == value)
    return out


def refine_jobs(best: dict) -> list[dict]:
    """Stage 1b: one factor at a time around the best variant of stage 1 (levels equal to it are skipped)."""
    jobs = []
    around = {**BASE, **best}
    prefix = ",".join(f"{k}={v}" for k, v in best.items())
    for partition in PARTITIONS:
        common = dict(stage="refine", partition=partition, seed=0, eval_split="validation", **best)
        for field, levels in REFINE.items():
            jobs += [{**common, "name": ",".join(filter(None, [prefix, f"{field}={v}"])), field: v}
                     for v in levels if around[field] != v]
    return jobs


def test_jobs(cands: dict[str, dict], seeds: int) -> list[dict]:
    """Stage 2: the chosen FedMoE-DA, the paper's gate proxy (if not the chosen one) and every baseline."""
    jobs = []
    for partition in TEST_PARTITIONS:
        for seed in range(seeds):
            common = dict(stage="test", partition=partition, seed=seed, eval_split="test")
            jobs += [{**common, "name": name, **changes} for name, changes in cands.items()]
            if {**BASE, **cands["fedmoe_da[chosen]"]} != {**BASE, "proxy": "gate"}:
                jobs.append({**common, "name": "fedmoe_da[paper gate proxy]", "proxy": "gate"})
            jobs += [{**common, "name": b, "strategy": b} for b in BASELINES]
    return jobs


def report(out: Path) -> str:
    """summary.md: the screen (validation) and the test stage (mean ± std over seeds), per partition."""
    lines = []
    screen = pd.concat([pd.read_csv(out / f) for f in ("screen.csv", "refine.csv") if (out / f).exists()])
    lines += ["### Screen (seed 0, validation split: each client's own held-out 20%; refine rows vary the best "
              "variant)",
              "", "| variant | " + " | ".join(PARTITIONS) + " | purity of A (first refresh) |",
              "|---|" + "---|" * (len(PARTITIONS) + 1)]
    for name, part in screen.groupby("name", sort=False):
        accs = [part.loc[part["partition"] == p, "final_acc_mean"] for p in PARTITIONS]
        purity = part["domain_purity_first"].mean()
        lines.append(f"| {name} | " + " | ".join(f"{a.mean():.3f}" if len(a) else "–" for a in accs)
                     + f" | {'–' if pd.isna(purity) else f'{purity:.2f}'} |")
    base = ", ".join(f"{k}={v}" for k, v in BASE.items() if k != "progress")
    lines += ["", f"Base point: {base}."]
    if (out / "study.json").exists():
        study = json.loads((out / "study.json").read_text())
        lines.append(f"Chosen on validation (mean over both partitions): `{study['chosen']}` "
                     f"({study['chosen_validation_accuracy']:.3f}); `fedmoe_da[chosen]` below is the base with that "
                     "change.")
    if (out / "test.csv").exists():
        test = pd.read_csv(out / "test.csv")
        for partition in TEST_PARTITIONS:
            t = test[test["partition"] == partition]
            fedavg = t[t["name"] == "fedavg"][["server_bytes", "total_bytes"]].mean()
            lines += ["", f"### Test, partition `{partition}` ({t['seed'].nunique()} seeds, mean ± std over seeds)", "",
                      "| strategy | final acc | worst 10% | best acc | server MB | total MB | "
                      "server / total vs FedAvg | purity of A |",
                      "|---|---|---|---|---|---|---|---|"]
            rows = t.groupby("name", sort=False).agg(
                acc=("final_acc_mean", "mean"), acc_sd=("final_acc_mean", "std"), worst=("final_acc_worst10", "mean"),
                best=("best_acc_mean", "mean"), server=("server_bytes", "mean"), total=("total_bytes", "mean"),
                purity=("domain_purity_first", "mean"))
            for name, r in rows.sort_values("acc", ascending=False).iterrows():
                purity = "–" if pd.isna(r.purity) else f"{r.purity:.2f}"
                lines.append(f"| {name} | {r.acc:.3f} ± {r.acc_sd:.3f} | {r.worst:.3f} | {r.best:.3f} | "
                             f"{r.server / 1e6:.1f} | {r.total / 1e6:.1f} | {r.server / fedavg.server_bytes:.2f} / "
                             f"{r.total / fedavg.total_bytes:.2f} | {purity} |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_jobs_flag(ap)
    ap.add_argument("--out", default="benchmarks/results/method_study")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 2 rounds (checks the script, not the method)")
    ap.add_argument("--report", action="store_true", help="only rewrite summary.md from the CSVs already there")
    args = ap.parse_args()
    args.jobs = args.jobs or usable_cores()
    if args.report:
        print(report(Path(args.out)))
        return
    if args.smoke:
        BASE.update(num_clients=8, max_samples=800, rounds=2, local_epochs=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        study(args, out)
    except PoolFailed as exc:
        print("\n".join(f"method_study: {line}" for line in exc.failures), file=sys.stderr)
        print(f"method_study: {len(exc.failures)} runs failed; the others are in {out}: run again to retry them",
              file=sys.stderr)
        sys.exit(1)


def study(args: argparse.Namespace, out: Path) -> None:
    """Stages 1, 1b and 2, then study.json and summary.md."""
    start = time.time()
    screen = run_all(screen_jobs(), out / "screen.csv", args.jobs)
    best1, _ = best_variant(screen)
    refine = run_all(refine_jobs(changes_of(best1)), out / "refine.csv", args.jobs)
    chosen, score = best_variant(pd.concat([screen, refine]))
    cands = {"fedmoe_da[chosen]": changes_of(chosen)}
    print(f"chosen on validation: {chosen} ({score:.3f})", flush=True)
    run_all(test_jobs(cands, args.seeds), out / "test.csv", args.jobs)
    (out / "study.json").write_text(json.dumps(
        {"base": BASE, "partitions": PARTITIONS, "test_partitions": TEST_PARTITIONS, "factors": FACTORS,
         "refine": REFINE, "baselines": BASELINES, "stage1_best": best1,
         "chosen": chosen, "chosen_validation_accuracy": score, "candidates": cands,
         "seeds": args.seeds, "jobs": args.jobs, "wall_seconds_last_call": round(time.time() - start),
         "versions": versions()}, indent=2, default=str))
    print(report(out))


if __name__ == "__main__":
    main()
