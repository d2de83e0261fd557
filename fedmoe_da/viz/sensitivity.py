"""A one-knob-at-a-time sweep of FedMoE-DA's settings (notebook 07): one panel per knob."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

METRIC_LABELS = {"final_acc": "final personalised accuracy", "worst10": "worst 10% of clients",
                 "client_std": "std over clients", "best_acc": "best-round accuracy", "server_MB": "server MB",
                 "p2p_MB": "P2P MB", "total_MB": "total MB", "purity": "domain purity of A (first refresh)"}


def plot_sensitivity(table: pd.DataFrame, metric: str = "final_acc",
                     knobs: list[str] | None = None) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """One panel per swept knob: ``metric`` against the knob's values (line for numbers, bars for names), the
    base point starred. table: one row per (knob, value) with a ``base`` flag and the metric columns."""
    knobs = list(dict.fromkeys(table["knob"])) if knobs is None else list(knobs)
    if metric not in table.columns:
        allowed = ", ".join(c for c in METRIC_LABELS if c in table.columns)
        raise ValueError(f"metric={metric!r} is invalid: must be one of {allowed}")
    unknown = [k for k in knobs if k not in set(table["knob"])]
    if unknown:
        swept = ", ".join(dict.fromkeys(table["knob"]))
        raise ValueError(f"knob {unknown[0]!r} is not in the sweep: swept are {swept}")
    cols = ["knob", "value", "base", *(["fixed"] if "fixed" in table.columns else []), metric]
    df = table[table["knob"].isin(knobs)][cols].reset_index(drop=True)
    fig, axes = plt.subplots(1, len(knobs), figsize=(3.3 * len(knobs) + 0.5, 3.4), sharey=True, squeeze=False)
    for ax, knob in zip(axes[0], knobs):
        part = df[df["knob"] == knob]
        values = list(part["value"])
        numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
        if numeric:
            ax.plot(values, part[metric], marker="o")
            positive = min(values) > 0
            if positive and max(values) / min(values) >= 10:
                ax.set_xscale("log")
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
        else:
            ax.bar(range(len(values)), part[metric], color="#8ecae6")
            ax.set_xticks(range(len(values)), [str(v) for v in values], rotation=20, fontsize=8)
        base = part[part["base"]]
        x_base = list(base["value"]) if numeric else [values.index(v) for v in base["value"]]
        ax.plot(x_base, base[metric], marker="*", ms=13, color="#fb8500", ls="none", label="base")
        at = part["fixed"].iloc[0] if "fixed" in part.columns else ""
        ax.set(xlabel=f"{knob} (at {at})" if at else knob, title=f"{METRIC_LABELS.get(metric, metric)}\nagainst {knob}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(METRIC_LABELS.get(metric, metric))
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig, axes, df
