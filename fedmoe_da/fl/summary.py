"""What a run produced (``SimulationResult``) and the numbers that summarise it.

Personalised accuracy is each client's own model on its own held-out split
(docs/ARCHITECTURE.md §9): reported as the mean over clients, the std over clients,
and the mean of the worst 10% of clients, at the final round and at the best
round (by mean).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from ..config import ExperimentConfig
from .matrices import Matrices

SERVER_CHANNELS = ("server-up", "server-down")


@dataclass
class SimulationResult:
    """What a run produced: tidy tables plus the objects behind them."""

    config: ExperimentConfig
    history: pd.DataFrame        # one row per (round, client)
    ledger: pd.DataFrame         # one row per transfer
    rejections: pd.DataFrame     # one row per rejected payload or discarded update
    summary: dict = field(default_factory=dict)
    run_dir: str | None = None
    clients: pd.DataFrame = field(default_factory=pd.DataFrame)      # one row per client: home domain, sizes, counts
    aggregation: pd.DataFrame = field(default_factory=pd.DataFrame)  # FedMoE-DA: diagnostics of A per refresh and layer
    matrices: Matrices = field(default_factory=Matrices)  # FedMoE-DA: A (sparse, read dense), gates, pool per refresh


def worst_fraction_mean(values: pd.Series, fraction: float = 0.1) -> float:
    """Mean of the lowest ``fraction`` of values (at least one)."""
    v = values.dropna().sort_values()
    if v.empty:
        return math.nan
    return float(v.iloc[: max(1, math.ceil(fraction * len(v)))].mean())


def summarize(history: pd.DataFrame, ledger: pd.DataFrame, rejections: pd.DataFrame | None = None,
              aggregation: pd.DataFrame | None = None) -> dict:
    """Final and best-round personalised accuracy, bytes per channel, discarded updates, purity of A."""
    per_round = history.groupby("round")["personalised_accuracy"].mean()
    last = int(history["round"].max())
    final = history[history["round"] == last]
    by_channel = ledger.groupby("channel")["bytes"].sum() if len(ledger) else pd.Series(dtype=float)
    glob = final["global_accuracy"].mean()
    server = int(sum(by_channel.get(c, 0) for c in SERVER_CHANNELS))
    p2p = int(by_channel.get("p2p", 0))
    channels = pd.Series(dtype=object) if rejections is None or rejections.empty else rejections["channel"]
    discarded, dropouts = int((channels == "local").sum()), int((channels == "dropout").sum())
    out = {
        "final_round": last,
        "final_acc_mean": float(final["personalised_accuracy"].mean()),
        "final_acc_std": float(final["personalised_accuracy"].std(ddof=0)),
        "final_acc_worst10": worst_fraction_mean(final["personalised_accuracy"]),
        "best_round": int(per_round.idxmax()) if per_round.notna().any() else last,
        "best_acc_mean": float(per_round.max()),
        "final_global_acc": None if pd.isna(glob) else float(glob),
        "server_up_bytes": int(by_channel.get("server-up", 0)),
        "server_down_bytes": int(by_channel.get("server-down", 0)),
        "server_bytes": server,
        "p2p_bytes": p2p,
        "total_bytes": server + p2p,
        "rejected_transfers": int((~ledger["accepted"].astype(bool)).sum()) if len(ledger) else 0,
        "local_updates": int(history["participated"].sum()),
        "discarded_updates": discarded,
        "dropouts": dropouts,
        "domain_purity_first": None, "domain_purity_mean": None, "purity_chance": None,
    }
    if aggregation is not None and not aggregation.empty and aggregation["domain_purity"].notna().any():
        first = aggregation[aggregation["round"] == aggregation["round"].min()]
        out["domain_purity_first"] = float(first["domain_purity"].mean())
        out["domain_purity_mean"] = float(aggregation["domain_purity"].mean())
        out["purity_chance"] = float(aggregation["purity_chance"].mean())
    return out
