"""Comparing runs: run several strategies on one partition, tabulate them, and keep the README honest.

    table, results = compare(config, ["fedmoe_da", "fedmoe_da:proxy=gate", "fedavg"], seeds=3)
    print(format_table(table))

A strategy entry is a strategy name, optionally followed by ``:field=value``
overrides (e.g. ``fedmoe_da:proxy=gate:P=3``); the entry is the run's label.
Runs go to ``out/<label>/seed<s>/`` (``:`` written ``+``) (run folders, ``fl/run_folder.py``); a
run whose folder already holds a finished run of the same config is read
back instead of run again, so an interrupted ``compare`` resumes. The runs go
through the run pool (``pool.py``, docs/ARCHITECTURE.md §10): ``jobs`` at once,
each in a worker process, with the same files as one after another.

The README's results block is a copy of a committed ``comparison.md`` that
``compare`` wrote (``update_readme``); a test checks that they are equal.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .config import COMPARE_STRATEGIES, ConfigError, ExperimentConfig, parse_value
from .fl.checkpoint import resumable
from .fl.run_folder import RunFolder, load_run, versions
from .fl.simulation import simulate
from .fl.summary import SimulationResult
from .pool import Task, run_pool

README_BEGIN = "<!-- results: begin {source} -->"
README_END = "<!-- results: end -->"


def parse_entry(entry: str, config: ExperimentConfig) -> ExperimentConfig:
    """'fedmoe_da:proxy=gate:P=3' -> config with strategy, overrides and label set (validated)."""
    name, *overrides = entry.strip().split(":")
    changes: dict = {"strategy": name, "label": entry.strip()}
    for item in overrides:
        field, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"strategy entry {entry!r} is invalid: overrides are written name:field=value")
        changes[field] = parse_value(field, value)
    return config.replace(**changes).validate()


def folder_name(entry: str) -> str:
    """A strategy entry as a folder name that every file system takes:
    'fedmoe_da:proxy=gate' -> 'fedmoe_da+proxy=gate'."""
    return re.sub(r"[^A-Za-z0-9_.=+-]", "+", entry)


def run_or_load(config: ExperimentConfig) -> SimulationResult:
    """``simulate(config)``, unless ``config.out`` already holds a run of this config: a finished one is read
    back, an unfinished one continues from its checkpoint (``fl/checkpoint.py``; ``progress`` may differ)."""
    return simulate(config, resume=resumable(config))


def compare(config: ExperimentConfig, strategies=COMPARE_STRATEGIES, seeds: int = 1,
            jobs: int = 1) -> tuple[pd.DataFrame, list[SimulationResult]]:
    """Run each strategy entry on the same partition (same seed) for ``seeds`` seeds; returns (table, results).

    With ``config.out`` set, each run goes to out/<label>/seed<s>/ and the table to out/comparison.csv.
    ``jobs`` runs at once (``pool.run_pool``; workers show no per-run bars); a failed run raises
    ``pool.PoolFailed`` once the others have ended.
    """
    config.validate()
    entries = [s.strip() for s in strategies]
    if len(set(entries)) != len(entries):
        dup = next(e for e in entries if entries.count(e) > 1)
        raise ConfigError(f"strategies={','.join(entries)!r} is invalid: {dup!r} is listed twice")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r} is invalid: must be an integer >= 1")
    configs = [parse_entry(e, config) for e in entries]                  # every entry checked before any run
    runs = []
    for s in range(seeds):
        for c in configs:
            seed = config.seed + s
            out = None if config.out is None else str(Path(config.out) / folder_name(c.label) / f"seed{seed}")
            runs.append(c.replace(seed=seed, out=out))
    results = run_configs(runs, jobs, progress=config.progress)
    table = comparison_table(results)
    if config.out:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(config.out) / "comparison.csv", index=False)
        (Path(config.out) / "comparison.md").write_text(format_table(table) + "\n")
        (Path(config.out) / "config.json").write_text(json.dumps(
            {"config": config.to_dict(), "strategies": entries, "seeds": seeds, "versions": versions()},
            indent=2, sort_keys=True))
    return table, results


def run_configs(configs: list[ExperimentConfig], jobs: int = 1, progress: bool = True) -> list[SimulationResult]:
    """``run_or_load`` each config through the run pool, results in order; finished runs are read back here."""
    results: list[SimulationResult | None] = [None] * len(configs)
    todo = []
    for i, c in enumerate(configs):
        if resumable(c) and RunFolder(c.out).finished():   # type: ignore[arg-type]
            results[i] = load_run(c.out)                       # type: ignore[arg-type]
        else:
            todo.append(i)
    quiet = jobs > 1 and len(todo) > 1    # in workers, per-run bars would interleave: the pool's bar counts runs
    tasks = [Task(f"{configs[i].label or configs[i].strategy} seed {configs[i].seed}", run_or_load,
                  (configs[i].replace(progress=False) if quiet else configs[i],),
                  context=_config_context(configs[i])) for i in todo]
    for i, result in zip(todo, run_pool(tasks, jobs, progress=progress)):
        results[i] = result
    return results  # type: ignore[return-value]


def _config_context(config: ExperimentConfig) -> str:
    """Where a failed run's config is: its run folder's config.json, or the fields that differ from the defaults."""
    if config.out:
        return f"config: {Path(config.out) / 'config.json'}"
    default = ExperimentConfig().to_dict()
    return "config: " + ", ".join(f"{k}={v!r}" for k, v in config.to_dict().items() if default.get(k) != v)


def comparison_table(results: list[SimulationResult]) -> pd.DataFrame:
    """One row per strategy entry; numbers averaged over seeds (seed_std: std over seeds of the final mean)."""
    rows = [{"strategy": r.config.label or r.config.strategy, "seed": r.config.seed, **r.summary} for r in results]
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df["strategy"]))
    df["domain_purity_first"] = pd.to_numeric(df["domain_purity_first"], errors="coerce")
    agg = df.groupby("strategy", sort=False).agg(
        seeds=("seed", "count"), final_acc=("final_acc_mean", "mean"), seed_std=("final_acc_mean", "std"),
        client_std=("final_acc_std", "mean"), worst10=("final_acc_worst10", "mean"),
        best_acc=("best_acc_mean", "mean"), best_round=("best_round", "median"),
        server_MB=("server_bytes", "mean"), p2p_MB=("p2p_bytes", "mean"), total_MB=("total_bytes", "mean"),
        purity=("domain_purity_first", "mean")).reindex(order).reset_index()
    agg["seed_std"] = agg["seed_std"].fillna(0.0)
    agg[["server_MB", "p2p_MB", "total_MB"]] = agg[["server_MB", "p2p_MB", "total_MB"]] / 1e6
    fedavg = agg.loc[agg["strategy"] == "fedavg"]
    for col in ("server", "total"):
        base = float(fedavg[f"{col}_MB"].iloc[0]) if len(fedavg) else np.nan
        agg[f"{col}_vs_fedavg"] = agg[f"{col}_MB"] / base if base > 0 else np.nan
    return agg


def format_table(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table."""
    head = ("| strategy | final acc (mean ± std over clients) | worst 10% | best acc (round) | server MB | "
            "P2P MB | total MB | server / total vs FedAvg | purity of A | seeds |")
    lines = [head, "|" + "---|" * 10]
    for _, r in table.iterrows():
        seed = f" (± {r.seed_std:.3f} over seeds)" if r.seeds > 1 else ""
        ratio = "n/a" if pd.isna(r.server_vs_fedavg) else f"{r.server_vs_fedavg:.2f} / {r.total_vs_fedavg:.2f}"
        purity = "–" if pd.isna(r.purity) else f"{r.purity:.2f}"
        lines.append(f"| {r.strategy} | {r.final_acc:.3f} ± {r.client_std:.3f}{seed} | {r.worst10:.3f} | "
                     f"{r.best_acc:.3f} ({int(r.best_round)}) | {r.server_MB:.1f} | {r.p2p_MB:.1f} | "
                     f"{r.total_MB:.1f} | "
                     f"{ratio} | {purity} | {int(r.seeds)} |")
    return "\n".join(lines)


def readme_blocks(readme: str) -> dict[str, str]:
    """Every results block of the README: source file -> the text between its markers."""
    pattern = re.escape(README_BEGIN).replace(re.escape("{source}"), r"(?P<source>\S+)")
    blocks = {}
    for m in re.finditer(pattern + r"\n?(?P<body>.*?)" + re.escape(README_END), readme, re.S):
        blocks[m["source"]] = m["body"].strip("\n")
    return blocks


def update_readme(readme_path: str | Path, source: str | Path) -> None:
    """Copy the committed results file ``source`` (a comparison.md) between the README's markers."""
    readme_path, source = Path(readme_path), Path(source)
    text = readme_path.read_text()
    rel = source.as_posix()
    begin = README_BEGIN.format(source=rel)
    if begin not in text:
        raise ValueError(f"{readme_path} has no '{begin}' marker")
    before, rest = text.split(begin, 1)
    after = rest.split(README_END, 1)[1]
    readme_path.write_text(f"{before}{begin}\n{source.read_text().strip()}\n{README_END}{after}")
