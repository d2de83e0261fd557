"""Results: summaries of a run, run folders, and the strategy comparison table.

A run folder (DESIGN section 8) holds everything a figure needs:

    config.json      the config, plus package versions, python, platform and git sha
    history.csv      one row per (round, client): accuracy, losses, routed tokens per expert
    ledger.csv       one row per transfer: round, src, dst, channel, group, numel, bytes, accepted
    rejections.csv   one row per rejected payload or discarded local update
    summary.json     the numbers of :func:`summarize`
"""
from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .config import ExperimentConfig
from .fl.simulation import SimulationResult, run_simulation
from .fl.transport import Transport

SERVER_CHANNELS = ("server-up", "server-down")


def versions() -> dict[str, str]:
    """Versions of python and the packages a run depends on, and the git sha if in a checkout."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("fedmoe-da", "torch", "numpy", "pandas", "scikit-learn", "matplotlib", "triton"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
        out["git_sha"] = sha or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["git_sha"] = "unknown"
    return out


def worst_fraction_mean(values: pd.Series, fraction: float = 0.1) -> float:
    """Mean of the lowest ``fraction`` of values (at least one)."""
    v = values.dropna().sort_values()
    if v.empty:
        return math.nan
    return float(v.iloc[: max(1, math.ceil(fraction * len(v)))].mean())


def summarize(history: pd.DataFrame, ledger: pd.DataFrame) -> dict:
    """Final and best-round personalised accuracy, and the bytes per channel."""
    per_round = history.groupby("round")["personalised_accuracy"].mean()
    last = int(history["round"].max())
    final = history[history["round"] == last]
    by_channel = ledger.groupby("channel")["bytes"].sum() if len(ledger) else pd.Series(dtype=float)
    glob = final["global_accuracy"].mean()
    return {
        "final_round": last,
        "final_acc_mean": float(final["personalised_accuracy"].mean()),
        "final_acc_std": float(final["personalised_accuracy"].std(ddof=0)),
        "final_acc_worst10": worst_fraction_mean(final["personalised_accuracy"]),
        "best_round": int(per_round.idxmax()),
        "best_acc_mean": float(per_round.max()),
        "final_global_acc": None if pd.isna(glob) else float(glob),
        "server_up_bytes": int(by_channel.get("server-up", 0)),
        "server_down_bytes": int(by_channel.get("server-down", 0)),
        "server_bytes": int(sum(by_channel.get(c, 0) for c in SERVER_CHANNELS)),
        "p2p_bytes": int(by_channel.get("p2p", 0)),
        "rejected_transfers": int((~ledger["accepted"]).sum()) if len(ledger) else 0,
    }


def write_run_folder(result: SimulationResult, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"config": result.config.to_dict(), "versions": versions()},
                                                 indent=2, sort_keys=True))
    result.history.to_csv(path / "history.csv", index=False)
    result.ledger.to_csv(path / "ledger.csv", index=False)
    result.rejections.to_csv(path / "rejections.csv", index=False)
    (path / "summary.json").write_text(json.dumps(result.summary, indent=2))
    return path


def load_run(path: str | Path) -> SimulationResult:
    """Read a run folder back into a SimulationResult."""
    path = Path(path)
    cfg = ExperimentConfig.from_dict(json.loads((path / "config.json").read_text())["config"])
    return SimulationResult(cfg, pd.read_csv(path / "history.csv"), pd.read_csv(path / "ledger.csv"),
                            pd.read_csv(path / "rejections.csv"), json.loads((path / "summary.json").read_text()),
                            str(path))


def simulate(config: ExperimentConfig, transport: Transport | None = None) -> SimulationResult:
    """Run one strategy; returns .history, .ledger, .rejections, .summary and writes config.out if set."""
    result = run_simulation(config, transport)
    result.summary = summarize(result.history, result.ledger)
    if config.out:
        result.run_dir = str(write_run_folder(result, config.out))
    return result


def compare(config: ExperimentConfig, strategies: tuple[str, ...] = ("fedmoe_da", "fedavg", "local"),
            seeds: int = 1) -> tuple[pd.DataFrame, list[SimulationResult]]:
    """Run each strategy on the same partition (same seed) for ``seeds`` seeds; returns (table, results).

    With ``config.out`` set, each run goes to out/<strategy>/seed<s>/ and the table to out/comparison.csv.
    """
    config.validate()
    results = []
    for s in range(seeds):
        for strategy in strategies:
            out = None if config.out is None else str(Path(config.out) / strategy / f"seed{config.seed + s}")
            results.append(simulate(replace(config, strategy=strategy, seed=config.seed + s, out=out)))
    table = comparison_table(results)
    if config.out:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(config.out) / "comparison.csv", index=False)
        (Path(config.out) / "config.json").write_text(json.dumps(
            {"config": config.to_dict(), "strategies": list(strategies), "seeds": seeds, "versions": versions()},
            indent=2, sort_keys=True))
    return table, results


def comparison_table(results: list[SimulationResult]) -> pd.DataFrame:
    """One row per strategy; numbers averaged over seeds (seed_std: std of the final mean over seeds)."""
    rows = []
    for r in results:
        rows.append({"strategy": r.config.strategy, "seed": r.config.seed, **r.summary})
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df["strategy"]))
    agg = df.groupby("strategy", sort=False).agg(
        seeds=("seed", "count"), final_acc=("final_acc_mean", "mean"), seed_std=("final_acc_mean", "std"),
        client_std=("final_acc_std", "mean"), worst10=("final_acc_worst10", "mean"),
        best_acc=("best_acc_mean", "mean"), best_round=("best_round", "median"),
        server_MB=("server_bytes", "mean"), p2p_MB=("p2p_bytes", "mean")).reindex(order).reset_index()
    agg["seed_std"] = agg["seed_std"].fillna(0.0)
    agg[["server_MB", "p2p_MB"]] = agg[["server_MB", "p2p_MB"]] / 1e6
    fedavg = agg.loc[agg["strategy"] == "fedavg", "server_MB"]
    agg["server_vs_fedavg"] = agg["server_MB"] / float(fedavg.iloc[0]) if len(fedavg) and float(fedavg.iloc[0]) > 0 else np.nan
    return agg


def format_table(table: pd.DataFrame) -> str:
    """The comparison as a fixed-width text table (also valid Markdown)."""
    head = ("| strategy | final acc (mean ± std over clients) | worst 10% | best acc (round) | "
            "server MB | P2P MB | server vs FedAvg | seeds |")
    lines = [head, "|" + "---|" * 8]
    for _, r in table.iterrows():
        seed = f" (± {r.seed_std:.3f} over seeds)" if r.seeds > 1 else ""
        ratio = "n/a" if pd.isna(r.server_vs_fedavg) else f"{r.server_vs_fedavg:.2f}"
        lines.append(f"| {r.strategy} | {r.final_acc:.3f} ± {r.client_std:.3f}{seed} | {r.worst10:.3f} | "
                     f"{r.best_acc:.3f} ({int(r.best_round)}) | {r.server_MB:.1f} | {r.p2p_MB:.1f} | {ratio} | {int(r.seeds)} |")
    return "\n".join(lines)
