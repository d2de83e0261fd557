"""Plots: each takes tidy tables and returns (fig, ax, df), df being exactly what was drawn.

Widgets in the notebooks only wrap these functions.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd

from .fl.p2p import p2p_graph
from .results import SERVER_CHANNELS


def accuracy_per_round(histories: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean and std over clients of personalised accuracy, per (strategy, round), averaged over seeds."""
    h = pd.concat(histories, ignore_index=True)
    per_seed = h.groupby(["strategy", "seed", "round"])["personalised_accuracy"].agg(["mean", "std"]).reset_index()
    return per_seed.groupby(["strategy", "round"])[["mean", "std"]].mean().reset_index()


def cumulative_server_bytes(ledgers: dict[tuple[str, int], pd.DataFrame], rounds: int) -> pd.DataFrame:
    """Cumulative server bytes per (strategy, round), averaged over seeds. ledgers: (strategy, seed) -> ledger."""
    rows = []
    for (strategy, seed), ledger in ledgers.items():
        server = ledger[ledger["channel"].isin(SERVER_CHANNELS)] if len(ledger) else ledger
        per_round = server.groupby("round")["bytes"].sum() if len(server) else pd.Series(dtype=float)
        cum = per_round.reindex(range(1, rounds + 1), fill_value=0).cumsum()
        rows += [{"strategy": strategy, "seed": seed, "round": r, "server_MB": b / 1e6} for r, b in cum.items()]
    df = pd.DataFrame(rows)
    return df.groupby(["strategy", "round"])["server_MB"].mean().reset_index()


def plot_comparison(results) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """Left: personalised accuracy per round (mean ± std over clients). Right: cumulative server MB."""
    acc = accuracy_per_round([r.history for r in results])
    rounds = int(acc["round"].max())
    comm = cumulative_server_bytes({(r.config.strategy, r.config.seed): r.ledger for r in results}, rounds)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for strategy, part in acc.groupby("strategy", sort=False):
        line, = axes[0].plot(part["round"], part["mean"], label=strategy)
        axes[0].fill_between(part["round"], part["mean"] - part["std"], part["mean"] + part["std"],
                             color=line.get_color(), alpha=0.15)
        c = comm[comm["strategy"] == strategy]
        axes[1].plot(c["round"], c["server_MB"], label=strategy, color=line.get_color())
    axes[0].set(xlabel="round", ylabel="personalised accuracy", title="accuracy (mean ± std over clients)")
    axes[1].set(xlabel="round", ylabel="cumulative server MB", title="server traffic")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    df = acc.merge(comm, on=["strategy", "round"], how="outer")
    return fig, axes, df


def plot_partition(counts: pd.DataFrame, title: str = "samples per client") -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Stacked bars of a client x (label or domain) count table (from ``data.client_counts``)."""
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(counts)), 3.5))
    counts.plot.bar(stacked=True, ax=ax, width=0.85, colormap="tab10")
    ax.set(xlabel="client", ylabel="samples", title=title)
    ax.legend(title=counts.columns.name, bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig, ax, counts


def plot_matrix(A, labels: list[str] | None = None, title: str = "aggregation matrix A") -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Heatmap of a square matrix (A or R) over the pool pairs."""
    A = np.asarray(A, dtype=float)
    df = pd.DataFrame(A, index=labels, columns=labels)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    im = ax.imshow(A, cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(title=title, xlabel="pool pair j", ylabel="pool pair i")
    fig.tight_layout()
    return fig, ax, df


def plot_p2p_graph(ledger: pd.DataFrame, round: int) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Who fetched experts from whom in ``round``: arrows peer -> client, width by bytes."""
    g = p2p_graph(ledger, round)
    df = pd.DataFrame([{"src": u, "dst": v, **{k: d[k] for k in ("bytes", "experts")}} for u, v, d in g.edges(data=True)],
                      columns=["src", "dst", "bytes", "experts"])
    fig, ax = plt.subplots(figsize=(5, 5))
    if g.number_of_nodes():
        pos = nx.circular_layout(sorted(g.nodes()))
        widths = 0.5 + 3 * df["bytes"] / df["bytes"].max()
        nx.draw_networkx(g, pos, ax=ax, node_color="#8ecae6", width=list(widths), arrowsize=8,
                         connectionstyle="arc3,rad=0.1", font_size=8)
    ax.set_title(f"P2P expert fetches, round {round} ({df['bytes'].sum() / 1e6:.2f} MB)")
    ax.axis("off")
    return fig, ax, df


def plot_routing(history: pd.DataFrame, round: int | None = None, layer: int = 0) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Share of each client's test tokens routed to each expert of ``layer`` (heatmap, clients x experts)."""
    round = int(history["round"].max()) if round is None else round
    cols = [c for c in history.columns if c.startswith(f"routed_l{layer}_e")]
    part = history[history["round"] == round].set_index("client")[cols]
    df = part.div(part.sum(axis=1).replace(0, 1), axis=0)
    df.columns = [c.split("_e")[-1] for c in cols]
    fig, ax = plt.subplots(figsize=(5, max(3, 0.25 * len(df))))
    im = ax.imshow(df.to_numpy(), aspect="auto", cmap="magma")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(xlabel="expert", ylabel="client", title=f"routed token share, layer {layer}, round {round}")
    fig.tight_layout()
    return fig, ax, df


__all__ = ["plot_comparison", "plot_partition", "plot_matrix", "plot_p2p_graph", "plot_routing",
           "accuracy_per_round", "cumulative_server_bytes"]
