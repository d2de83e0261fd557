"""Speed and scale (notebook 10): the committed simulator benchmarks, seconds per round and memory against clients, and
the same workload in Flower."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def plot_scaling(table: pd.DataFrame) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """Seconds per round and peak RSS against clients, one line per engine (``benchmarks/sim_throughput.py``'s
    csv: clients, engine, s_per_round, peak_rss_mb; medians over repeats are drawn)."""
    df = (table.groupby(["engine", "clients"], sort=True)[["s_per_round", "peak_rss_mb"]].median().reset_index())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for engine, part in df.groupby("engine", sort=False):
        axes[0].plot(part["clients"], part["s_per_round"], marker="o", label=engine)
        axes[1].plot(part["clients"], part["peak_rss_mb"], marker="o", label=engine)
    for ax, label in zip(axes, ("seconds per round", "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("clients")
        ax.set_ylabel(label)
        ax.legend(title="engine")
    axes[0].set_yscale("log")
    fig.tight_layout()
    return fig, axes, df


def plot_vs_flower(ratios: pd.DataFrame) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Seconds per round of this package and of Flower's simulation engine, same FedAvg workload
    (``benchmarks/vs_flower.py``'s ratios: clients, engine, package_s_per_round, flower_s_per_round, ratio)."""
    df = ratios[["clients", "engine", "package_s_per_round", "flower_s_per_round", "ratio"]].copy()
    long = df.melt(id_vars=["clients", "engine", "ratio"], value_vars=["package_s_per_round", "flower_s_per_round"],
                   var_name="side", value_name="s_per_round")
    long["side"] = long["side"].map({"package_s_per_round": "fedmoe-da", "flower_s_per_round": "Flower"})
    long["who"] = np.where(long["side"] == "Flower", "Flower", "fedmoe-da (" + long["engine"] + ")")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.barplot(data=long, x="clients", y="s_per_round", hue="who", ax=ax)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per round (FedAvg, no evaluation)")
    for i, (n, part) in enumerate(df.groupby("clients", sort=True)):
        best = part["ratio"].max()
        ax.annotate(f"{best:.1f}x", (i, part["flower_s_per_round"].max()), ha="center", va="bottom")
    fig.tight_layout()
    return fig, ax, df
