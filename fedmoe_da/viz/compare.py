"""Accuracy of finished runs side by side (notebooks 01, 06): per round, per client, and the quickstart's
accuracy + traffic panel."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .common import run_label
from .traffic import cumulative_bytes


def accuracy_per_round(histories: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean and std over clients of personalised accuracy, per (strategy, round), averaged over seeds.

    Strategies keep the order in which they first appear (the comparison table's order)."""
    h = pd.concat(histories, ignore_index=True)
    order = {name: i for i, name in enumerate(dict.fromkeys(h["strategy"]))}
    per_seed = h.groupby(["strategy", "seed", "round"])["personalised_accuracy"].agg(["mean", "std"]).reset_index()
    out = per_seed.groupby(["strategy", "round"])[["mean", "std"]].mean().reset_index()
    return out.sort_values(["strategy", "round"], key=lambda c: c.map(order) if c.name == "strategy" else c,
                           ignore_index=True)


def plot_accuracy_curves(results) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Personalised accuracy per round, one line per strategy: mean over clients, band ± std over clients
    (both averaged over seeds; ``accuracy_per_round``)."""
    df = accuracy_per_round([r.history.assign(strategy=run_label(r)) for r in results])
    seeds = len({r.config.seed for r in results})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for strategy, part in df.groupby("strategy", sort=False):
        line, = ax.plot(part["round"], part["mean"], label=strategy)
        ax.fill_between(part["round"], part["mean"] - part["std"], part["mean"] + part["std"], color=line.get_color(),
                        alpha=0.12)
    ax.set(xlabel="round", ylabel="personalised accuracy",
           title=f"accuracy per round (mean ± std over clients, {seeds} seed{'s' * (seeds > 1)})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, ax, df


def client_accuracy(results, round: int | None = None) -> pd.DataFrame:
    """One row per (strategy, seed, client): personalised accuracy at ``round`` (None: each run's last), the client's
    home domain, and its rank within the strategy from the worst (0) over all its seeds' clients."""
    parts = []
    for r in results:
        last = int(r.history["round"].max()) if round is None else round
        h = r.history[r.history["round"] == last][["client", "personalised_accuracy"]]
        h = h.merge(r.clients[["client", "home_domain", "home_domain_name"]], on="client", how="left")
        parts.append(h.assign(strategy=run_label(r), seed=r.config.seed, round=last))
    df = pd.concat(parts, ignore_index=True).rename(columns={"personalised_accuracy": "accuracy"})
    df = df[["strategy", "seed", "round", "client", "home_domain", "home_domain_name", "accuracy"]]
    df["rank"] = df.groupby("strategy", sort=False)["accuracy"].rank(method="first").astype(int) - 1
    return df


def plot_client_accuracy(results, round: int | None = None) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """Left: every client's accuracy, sorted from the worst, one line per strategy (seeds pooled): where the
    curves part at the left is where the worst clients differ. Right: mean accuracy per home domain."""
    df = client_accuracy(results, round)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    order = list(dict.fromkeys(df["strategy"]))
    for strategy in order:
        part = df[df["strategy"] == strategy].sort_values("rank")
        axes[0].plot(part["rank"], part["accuracy"], marker=".", ms=4, label=strategy)
    axes[0].set(xlabel="client, from the worst (seeds pooled)", ylabel="personalised accuracy",
                title="final accuracy per client, sorted")
    axes[0].legend(fontsize=8)
    by_domain = (df.groupby(["home_domain", "home_domain_name", "strategy"], sort=False)["accuracy"].mean()
                 .unstack("strategy")[order].sort_index(level=0).droplevel(0))
    by_domain.plot.bar(ax=axes[1], width=0.8, rot=0, legend=False)
    axes[1].set(xlabel="home domain", ylabel="mean accuracy of its clients", title="per home domain")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig, axes, df


def plot_comparison(results) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """Left: personalised accuracy per round (mean ± std over clients). Right: cumulative MB per channel.

    The right panel draws server traffic (solid), P2P traffic (dotted) and their
    total (dashed) per strategy, so a cut in server traffic that P2P pays back is visible.
    """
    label = lambda r: r.config.label or r.config.strategy  # noqa: E731
    acc = accuracy_per_round([r.history.assign(strategy=label(r)) for r in results])
    rounds = int(acc["round"].max())
    comm = cumulative_bytes({(label(r), r.config.seed): r.ledger for r in results}, rounds)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for strategy, part in acc.groupby("strategy", sort=False):
        line, = axes[0].plot(part["round"], part["mean"], label=strategy)
        axes[0].fill_between(part["round"], part["mean"] - part["std"], part["mean"] + part["std"],
                             color=line.get_color(), alpha=0.15)
        c = comm[comm["strategy"] == strategy]
        axes[1].plot(c["round"], c["server_MB"], color=line.get_color(), label=f"{strategy}: server")
        if c["p2p_MB"].max() > 0:
            axes[1].plot(c["round"], c["p2p_MB"], color=line.get_color(), ls=":", label=f"{strategy}: P2P")
            axes[1].plot(c["round"], c["total_MB"], color=line.get_color(), ls="--", label=f"{strategy}: total")
    axes[0].set(xlabel="round", ylabel="personalised accuracy", title="accuracy (mean ± std over clients)")
    axes[1].set(xlabel="round", ylabel="cumulative MB", title="traffic: server (solid), P2P (dotted), total (dashed)")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    df = acc.merge(comm, on=["strategy", "round"], how="left")   # in the order of the table
    return fig, axes, df
