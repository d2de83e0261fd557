"""Plots: each takes tidy tables and returns (fig, ax, df), df being exactly what was drawn.

Widgets in the notebooks only wrap these functions.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd
import seaborn as sns

from .fl.p2p import p2p_graph
from .fl.summary import SERVER_CHANNELS
from .models.names import routed_columns


def accuracy_per_round(histories: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean and std over clients of personalised accuracy, per (strategy, round), averaged over seeds.

    Strategies keep the order in which they first appear (the comparison table's order)."""
    h = pd.concat(histories, ignore_index=True)
    order = {name: i for i, name in enumerate(dict.fromkeys(h["strategy"]))}
    per_seed = h.groupby(["strategy", "seed", "round"])["personalised_accuracy"].agg(["mean", "std"]).reset_index()
    out = per_seed.groupby(["strategy", "round"])[["mean", "std"]].mean().reset_index()
    return out.sort_values(["strategy", "round"], key=lambda c: c.map(order) if c.name == "strategy" else c,
                           ignore_index=True)


def cumulative_bytes(ledgers: dict[tuple[str, int], pd.DataFrame], rounds: int) -> pd.DataFrame:
    """Cumulative server, P2P and total MB per (strategy, round), averaged over seeds. ledgers: (strategy, seed) -> ledger."""
    rows = []
    for (strategy, seed), ledger in ledgers.items():
        for name, part in (("server_MB", ledger[ledger["channel"].isin(SERVER_CHANNELS)] if len(ledger) else ledger),
                           ("p2p_MB", ledger[ledger["channel"] == "p2p"] if len(ledger) else ledger)):
            per_round = part.groupby("round")["bytes"].sum() if len(part) else pd.Series(dtype=float)
            cum = per_round.reindex(range(1, rounds + 1), fill_value=0).cumsum()
            rows += [{"strategy": strategy, "seed": seed, "round": r, "kind": name, "MB": b / 1e6} for r, b in cum.items()]
    df = pd.DataFrame(rows).pivot_table(index=["strategy", "seed", "round"], columns="kind", values="MB").reset_index()
    df["total_MB"] = df["server_MB"] + df["p2p_MB"]
    return df.groupby(["strategy", "round"], sort=False)[["server_MB", "p2p_MB", "total_MB"]].mean().reset_index()


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


def plot_partition(counts: pd.DataFrame, title: str = "samples per client",
                   kind: str = "bar") -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """A client x (label or domain) count table (from ``data.client_counts``): stacked bars or a heatmap."""
    if kind not in ("bar", "heatmap"):
        raise ValueError(f"kind={kind!r} is invalid: must be 'bar' or 'heatmap'")
    if kind == "heatmap":
        fig, ax = plt.subplots(figsize=(max(4, 0.45 * counts.shape[1] + 2), max(3, 0.22 * len(counts) + 1)))
        sns.heatmap(counts, ax=ax, cmap="Blues", annot=len(counts) * counts.shape[1] <= 240, fmt="d",
                    cbar_kws={"label": "samples"})
        ax.set(title=title)
    else:
        fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(counts)), 3.5))
        counts.plot.bar(stacked=True, ax=ax, width=0.85, colormap="tab10")
        ax.set(xlabel="client", ylabel="samples", title=title)
        ax.legend(title=counts.columns.name, bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig, ax, counts


def plot_matrix(A, labels: list[str] | None = None, title: str = "aggregation matrix A", *,
                groups: list[str] | None = None, cmap: str = "viridis") -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Heatmap of a square matrix (A or R) over the pool pairs.

    ``groups``: one name per row (e.g. the home domain of each pair's client), each group's rows
    contiguous: the blocks are outlined and named on both axes."""
    A = np.asarray(A, dtype=float)
    if groups is not None and len(groups) != len(A):
        raise ValueError(f"groups has {len(groups)} names: must have one per row of the {len(A)} x {len(A)} matrix")
    df = pd.DataFrame(A, index=labels, columns=labels)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    sns.heatmap(df, ax=ax, cmap=cmap, square=True, cbar_kws={"fraction": 0.046}, xticklabels=False,
                yticklabels=False)
    ax.set(title=title, xlabel="pool pair j", ylabel="pool pair i")
    if groups is not None:
        starts = [i for i in range(len(groups)) if i == 0 or groups[i] != groups[i - 1]] + [len(groups)]
        for b in starts[1:-1]:
            ax.axhline(b, color="white", lw=0.8)
            ax.axvline(b, color="white", lw=0.8)
        centres = [(a + b) / 2 for a, b in zip(starts, starts[1:])]
        names = [groups[a] for a in starts[:-1]]
        ax.set_xticks(centres, names, rotation=0, fontsize=8)
        ax.set_yticks(centres, names, rotation=90, va="center", fontsize=8)
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
    cols = routed_columns(history.columns, layer)                                # column -> expert slot
    part = history[history["round"] == round].set_index("client")[list(cols)]
    df = part.div(part.sum(axis=1).replace(0, 1), axis=0)
    df.columns = list(cols.values())
    fig, ax = plt.subplots(figsize=(5, max(3, 0.25 * len(df))))
    sns.heatmap(df, ax=ax, cmap="magma", vmin=0, cbar_kws={"fraction": 0.046})
    ax.set(xlabel="expert", ylabel="client", title=f"routed token share, layer {layer}, round {round}")
    fig.tight_layout()
    return fig, ax, df


def plot_domain_samples(x, y, domain, names, per_domain: int = 10) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """One row per domain, ``per_domain`` samples in it, cycling through the classes (column j shows
    class ``j % n_classes``, the first unused sample of it). x: (n, C, H, W) in [0, 1], C = 1 or 3."""
    x, y, domain = (np.asarray(a) for a in (x, y, domain))
    classes = np.unique(y)
    fig, axes = plt.subplots(len(names), per_domain, figsize=(0.9 * per_domain, 1.0 * len(names)), squeeze=False)
    rows = []
    for k, name in enumerate(names):
        for j in range(per_domain):
            c = classes[j % len(classes)]
            idx = np.flatnonzero((domain == k) & (y == c))
            ax = axes[k, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j // len(classes) < len(idx):
                i = int(idx[j // len(classes)])
                img = x[i].transpose(1, 2, 0)                    # (H, W, C)
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
                ax.set_title(str(c), fontsize=8)
                rows.append({"domain": name, "label": int(c), "index": i, "row": k, "col": j})
        axes[k, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig, axes, pd.DataFrame(rows, columns=["domain", "label", "index", "row", "col"])

def plot_client_data(domains: pd.DataFrame, labels: pd.DataFrame,
                     title: str = "") -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """Two heatmaps side by side, clients as rows: training samples per domain (left) and per label (right).

    domains, labels: ``data.client_counts(..., by="domain")`` and ``by="label"``. df is tidy: one row per
    (client, by, value) with its sample count, domains first."""
    fig, axes = plt.subplots(1, 2, figsize=(3 + 0.5 * (domains.shape[1] + labels.shape[1]), max(3, 0.22 * len(domains) + 1.2)),
                             gridspec_kw={"width_ratios": [domains.shape[1] + 1, labels.shape[1] + 1]}, sharey=True)
    parts = []
    for ax, counts in zip(axes, (domains, labels)):
        sns.heatmap(counts, ax=ax, cmap="Blues", annot=counts.size <= 240, fmt="d", annot_kws={"fontsize": 7},
                    cbar=False, vmin=0)
        ax.set(title=f"samples per {counts.columns.name}", xlabel=counts.columns.name)
        parts.append(counts.rename_axis(columns="value").stack().rename("samples").reset_index()
                     .assign(by=counts.columns.name))
    axes[1].set_ylabel("")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    df = pd.concat(parts, ignore_index=True)[["client", "by", "value", "samples"]]
    return fig, axes, df


def plot_token_routing(probs, weights, indices) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """A router's decision for T tokens over E experts: the softmax (left) and the renormalised top-k weights (right).

    probs (T, E) softmax of the gate logits; weights, indices (T, k) from top-k. df: one row per
    (token, expert) with its probability and its routing weight (0 where the expert was not chosen)."""
    probs = np.asarray(probs, dtype=float)
    T, E = probs.shape
    routed = np.zeros((T, E))
    np.put_along_axis(routed, np.asarray(indices), np.asarray(weights, dtype=float), axis=1)   # (T, E)
    fig, axes = plt.subplots(1, 2, figsize=(2.5 + 1.1 * E, max(2.5, 0.3 * T + 1)), sharey=True)
    for ax, values, name in zip(axes, (probs, routed), ("softmax p(e | token)", f"top-{np.shape(indices)[1]} weights, renormalised")):
        sns.heatmap(values, ax=ax, cmap="magma", vmin=0, vmax=1, annot=T * E <= 160, fmt=".2f",
                    annot_kws={"fontsize": 7}, cbar=False)
        ax.set(title=name, xlabel="expert")
    axes[0].set_ylabel("token")
    fig.tight_layout()
    tok, exp = np.meshgrid(np.arange(T), np.arange(E), indexing="ij")
    df = pd.DataFrame({"token": tok.ravel(), "expert": exp.ravel(), "prob": probs.ravel(), "weight": routed.ravel()})
    return fig, axes, df


def routing_by_domain(history: pd.DataFrame, clients: pd.DataFrame, round: int | None = None,
                      layer: int = 0) -> pd.DataFrame:
    """Test tokens routed to each expert of ``layer`` at ``round``, summed over the clients of each home domain.

    clients: one row per client with ``home_domain_name`` (a run's ``clients`` table). One row per
    (domain, expert): tokens and share (of the domain's routed tokens), domains in home-domain order."""
    round = int(history["round"].max()) if round is None else round
    cols = routed_columns(history.columns, layer)                                # column -> expert slot
    part = history[history["round"] == round].merge(clients[["client", "home_domain", "home_domain_name"]], on="client")
    per = part.groupby(["home_domain", "home_domain_name"])[list(cols)].sum().reset_index("home_domain", drop=True)
    long = per.rename(columns=cols).rename_axis(index="domain", columns="expert").stack().rename("tokens").reset_index()
    long["share"] = long["tokens"] / long.groupby("domain", sort=False)["tokens"].transform("sum").replace(0, 1)
    return long


def plot_routing_by_domain(history: pd.DataFrame, clients: pd.DataFrame, round: int | None = None,
                           layer: int = 0) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Heatmap, home domains x experts: the share of each domain's clients' test tokens routed to each expert."""
    round = int(history["round"].max()) if round is None else round
    df = routing_by_domain(history, clients, round, layer)
    share = df.pivot(index="domain", columns="expert", values="share").reindex(list(dict.fromkeys(df["domain"])))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * share.shape[1], 1 + 0.5 * len(share)))
    sns.heatmap(share, ax=ax, cmap="magma", vmin=0, annot=True, fmt=".2f", annot_kws={"fontsize": 8},
                cbar_kws={"fraction": 0.046, "label": "token share"})
    ax.set(xlabel="expert", ylabel="home domain of the clients", title=f"routed token share by domain, layer {layer}, round {round}")
    fig.tight_layout()
    return fig, ax, df


def plot_purity(df: pd.DataFrame, x: str = "P", hue: str = "proxy") -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Domain purity of A against ``x`` (one line per ``hue``), with the domain-blind chance level dashed.

    df: one row per setting with columns x, hue, ``domain_purity`` and ``purity_chance``
    (``fl.aggregation.matrix_diagnostics``)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, part in df.groupby(hue, sort=False):
        ax.plot(part[x], part["domain_purity"], marker="o", label=str(name))
    chance = df.groupby(x, sort=True)["purity_chance"].mean()
    ax.plot(chance.index, chance.values, ls="--", color="grey", label="chance (domain-blind)")
    ax.set(xlabel=x, ylabel="domain purity of A", ylim=(0, 1.02), title=f"domain purity of A against {x}")
    if df[x].dtype.kind in "fi" and df[x].min() > 0 and df[x].max() / df[x].min() > 20:
        ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, ax, df



__all__ = ["plot_comparison", "plot_partition", "plot_matrix", "plot_p2p_graph", "plot_routing",
           "accuracy_per_round", "cumulative_bytes",
           "plot_domain_samples", "plot_client_data", "plot_token_routing", "routing_by_domain", "plot_routing_by_domain", "plot_purity"]
