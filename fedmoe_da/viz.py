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
            ax.axhline(b, color="0.6", lw=0.8)
            ax.axvline(b, color="0.6", lw=0.8)
        centres = [(a + b) / 2 for a, b in zip(starts, starts[1:])]
        names = [groups[a] for a in starts[:-1]]
        ax.set_xticks(centres, names, rotation=0, fontsize=8)
        ax.set_yticks(centres, names, rotation=90, va="center", fontsize=8)
    fig.tight_layout()
    return fig, ax, df


def domain_layout(clients: pd.DataFrame, radius: float = 0.36) -> dict[int, np.ndarray]:
    """Clients grouped by home domain (``result.clients``): each domain a small circle of its clients, the domains'
    centres on the unit circle, so edges inside a domain stay inside its cluster and edges across domains run between."""
    domains = sorted(clients["home_domain"].unique())
    pos = {}
    for d, domain in enumerate(domains):
        centre = np.pi / 2 - 2 * np.pi * d / len(domains)
        members = sorted(int(c) for c in clients.loc[clients["home_domain"] == domain, "client"])
        for i, client in enumerate(members):
            angle = centre + np.pi - 2 * np.pi * (i + 0.5) / len(members)
            pos[client] = np.array([np.cos(centre), np.sin(centre)]) + radius * np.array([np.cos(angle), np.sin(angle)])
    return pos


def plot_p2p_graph(ledger: pd.DataFrame, round: int | None = None, clients: pd.DataFrame | None = None,
                   ax: plt.Axes | None = None) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Who fetched experts from whom in ``round`` (None: all rounds): one arrow peer -> client per pair, width by bytes.

    With ``clients`` (``result.clients``) the clients sit on a circle in one arc per home domain, coloured by
    it; an edge inside a domain takes the domain's colour, one across domains is grey, and df gains
    src_domain, dst_domain. Every client is drawn, fetching or not, so the layout stays put from round to round.
    """
    g = p2p_graph(ledger, round)
    df = pd.DataFrame([{"src": u, "dst": v, **{k: d[k] for k in ("bytes", "experts")}} for u, v, d in g.edges(data=True)],
                      columns=["src", "dst", "bytes", "experts"])
    fig, ax = plt.subplots(figsize=(6, 6) if clients is not None else (5, 5)) if ax is None else (ax.figure, ax)
    when = "all rounds" if round is None else f"round {round}"
    title = f"P2P expert fetches, {when} ({df['bytes'].sum() / 1e6:.2f} MB)"
    if clients is None:
        if g.number_of_nodes():
            pos = nx.circular_layout(sorted(g.nodes()))
            widths = 0.5 + 3 * df["bytes"] / df["bytes"].max()
            nx.draw_networkx(g, pos, ax=ax, node_color="#8ecae6", width=list(widths), arrowsize=8,
                             connectionstyle="arc3,rad=0.1", font_size=8)
    else:
        home = clients.set_index("client")
        df["src_domain"] = df["src"].map(home["home_domain_name"])
        df["dst_domain"] = df["dst"].map(home["home_domain_name"])
        names = clients.drop_duplicates("home_domain").sort_values("home_domain")
        colour = {d: plt.cm.tab10(i % 10) for i, d in enumerate(names["home_domain_name"])}
        pos = domain_layout(clients)
        g.add_nodes_from(pos)
        nodes = list(pos)
        nx.draw_networkx_nodes(g, pos, nodelist=nodes, ax=ax, node_size=260,
                               node_color=[colour[home.loc[c, "home_domain_name"]] for c in nodes])
        nx.draw_networkx_labels(g, pos, labels={c: str(c) for c in nodes}, ax=ax, font_size=7)
        if len(df):
            same = df["src_domain"] == df["dst_domain"]
            nx.draw_networkx_edges(g, pos, edgelist=list(zip(df["src"], df["dst"])), ax=ax, node_size=260,
                                   width=list(0.4 + 3.5 * df["bytes"] / df["bytes"].max()),
                                   edge_color=[colour[d] if s else "#9a9a9a" for d, s in zip(df["dst_domain"], same)],
                                   alpha=list(0.15 + 0.7 * df["bytes"] / df["bytes"].max()), arrowsize=7,
                                   connectionstyle="arc3,rad=0.12")
            title += f"\n{df.loc[same, 'bytes'].sum() / max(df['bytes'].sum(), 1):.0%} of the bytes within a home domain"
        for name in names["home_domain_name"]:
            xy = np.mean([pos[c] for c in home.index[home["home_domain_name"] == name]], axis=0)
            u = xy / max(np.linalg.norm(xy), 1e-9)
            ax.text(*(1.52 * u), name, color=colour[name], fontsize=10, fontweight="bold",
                    ha="left" if u[0] > 0.3 else "right" if u[0] < -0.3 else "center",
                    va="bottom" if u[1] > 0.3 else "top" if u[1] < -0.3 else "center")
        ax.plot([], [], color="#9a9a9a", label="across domains")
        ax.legend(loc="lower right", fontsize=7, frameon=False)
        ax.set(xlim=(-1.75, 1.75), ylim=(-1.75, 1.75), aspect="equal")
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    return fig, ax, df


def plot_routing(history: pd.DataFrame, round: int | None = None, layer: int = 0, *,
                 clients: pd.DataFrame | None = None, domain: str | None = None) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Share of each client's test tokens routed to each expert of ``layer`` (heatmap, clients x experts).

    ``clients`` (a run's clients table): rows sorted by home domain and labelled ``"client (domain)"``;
    ``domain`` (needs ``clients``): only the clients of that home domain."""
    round = int(history["round"].max()) if round is None else round
    cols = routed_columns(history.columns, layer)                                # column -> expert slot
    part = history[history["round"] == round].set_index("client")
    if clients is not None:
        home = clients.set_index("client")["home_domain_name"]
        if domain is not None and domain not in set(home):
            raise ValueError(f"domain={domain!r} is invalid: no client has it as home domain "
                             f"(home domains: {', '.join(dict.fromkeys(home))})")
        order = [k for k in clients.sort_values(["home_domain", "client"])["client"]
                 if k in part.index and (domain is None or home[k] == domain)]
        part = part.loc[order]
        part.index = pd.Index([f"{k} ({home[k]})" for k in order], name="client")
    elif domain is not None:
        raise ValueError(f"domain={domain!r} needs clients: the run's clients table says each client's home domain")
    part = part[list(cols)]
    df = part.div(part.sum(axis=1).replace(0, 1), axis=0)
    df.columns = list(cols.values())
    fig, ax = plt.subplots(figsize=(5, max(3, 0.25 * len(df) + 1)))
    sns.heatmap(df, ax=ax, cmap="magma", vmin=0, cbar_kws={"fraction": 0.046})
    where = "" if domain is None else f", clients of {domain}"
    ax.set(xlabel="expert", ylabel="client", title=f"routed token share, layer {layer}, round {round}{where}")
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
    ax.set(xlabel="expert", ylabel="clients' home domain", title=f"routed token share by domain, layer {layer}, round {round}")
    ax.tick_params(axis="y", rotation=0)
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
        ticks = sorted(df[x].unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
        ax.minorticks_off()
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, ax, df


__all__ = ["plot_comparison", "plot_partition", "plot_matrix", "plot_p2p_graph", "plot_routing",
           "accuracy_per_round", "cumulative_bytes",
           "plot_domain_samples", "plot_client_data", "plot_token_routing", "routing_by_domain",
           "plot_routing_by_domain", "plot_purity"]


# -- comparing finished runs: accuracy, clients, traffic per channel; sensitivity sweeps (notebooks 05-07) --
CHANNELS = (*SERVER_CHANNELS, "p2p")
CHANNEL_SUMMARY = {"server-up": "server_up_bytes", "server-down": "server_down_bytes", "p2p": "p2p_bytes"}  # run summary keys
METRIC_LABELS = {"final_acc": "final personalised accuracy", "worst10": "worst 10% of clients",
                 "client_std": "std over clients", "best_acc": "best-round accuracy", "server_MB": "server MB",
                 "p2p_MB": "P2P MB", "total_MB": "total MB", "purity": "domain purity of A (first refresh)"}


def run_label(result) -> str:
    """A run's name in tables and legends: its config's label, else its strategy (as ``results.comparison_table``)."""
    return result.config.label or result.config.strategy


def channel_bytes(results) -> pd.DataFrame:
    """MB per (strategy, channel) over the whole run, mean over seeds; channels server-up, server-down, p2p."""
    rows = [{"strategy": run_label(r), "seed": r.config.seed, "channel": ch,
             "MB": r.summary[CHANNEL_SUMMARY[ch]] / 1e6} for r in results for ch in CHANNELS]
    return pd.DataFrame(rows).groupby(["strategy", "channel"], sort=False)["MB"].mean().reset_index()


def plot_channel_bytes(results, baseline: str = "fedavg") -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Stacked bars, one per strategy: MB sent up to the server, down from it, and peer to peer.

    Above each bar: its server and total MB as a multiple of ``baseline``'s (when that strategy is among the runs)."""
    df = channel_bytes(results)
    wide = df.pivot(index="strategy", columns="channel", values="MB").reindex(index=list(dict.fromkeys(df["strategy"])),
                                                                             columns=list(CHANNELS))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(wide) + 2), 4))
    bottom = np.zeros(len(wide))
    for ch, colour in zip(CHANNELS, ("#219ebc", "#8ecae6", "#fb8500")):
        ax.bar(wide.index, wide[ch], bottom=bottom, color=colour, label=ch)
        bottom += wide[ch].to_numpy()
    if baseline in wide.index:
        base = wide.loc[baseline]
        server_base, total_base = base[list(SERVER_CHANNELS)].sum(), base.sum()
        for i, (_, row) in enumerate(wide.iterrows()):
            if total_base > 0:
                text = f"server {row[list(SERVER_CHANNELS)].sum() / server_base:.2f}\ntotal {row.sum() / total_base:.2f}"
                ax.text(i, row.sum(), text, ha="center", va="bottom", fontsize=7)
        ax.set_title(f"traffic per channel (x {baseline}'s above each bar)", fontsize=10)
    else:
        ax.set_title("traffic per channel", fontsize=10)
    ax.set(ylabel="MB over the run (mean over seeds)")
    ax.set_ylim(0, 1.2 * max(bottom.max(), 1e-9))
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig, ax, df


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


def plot_sensitivity(table: pd.DataFrame, metric: str = "final_acc",
                     knobs: list[str] | None = None) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """One panel per swept knob: ``metric`` against the knob's values (line for numbers, bars for names), the
    base point starred. table: one row per (knob, value) with a ``base`` flag and the metric columns."""
    knobs = list(dict.fromkeys(table["knob"])) if knobs is None else list(knobs)
    if metric not in table.columns:
        raise ValueError(f"metric={metric!r} is invalid: must be one of {', '.join(c for c in METRIC_LABELS if c in table.columns)}")
    unknown = [k for k in knobs if k not in set(table["knob"])]
    if unknown:
        raise ValueError(f"knob {unknown[0]!r} is not in the sweep: swept are {', '.join(dict.fromkeys(table['knob']))}")
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


__all__ += ["run_label", "channel_bytes", "plot_channel_bytes", "plot_accuracy_curves", "client_accuracy",
            "plot_client_accuracy", "plot_sensitivity", "domain_layout"]


def plot_p2p_matrix(ledger: pd.DataFrame, clients: pd.DataFrame,
                    round: int | None = None) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """The P2P graph as a matrix: bytes each client (column) fetched from each peer (row) in ``round`` (None: all),
    clients ordered by home domain with the domains' blocks outlined, so within-domain traffic is the diagonal blocks.
    df: one row per (src, dst) pair of clients, zeros included."""
    g = p2p_graph(ledger, round)
    order = clients.sort_values(["home_domain", "client"])
    ids, names = [int(c) for c in order["client"]], list(order["home_domain_name"])
    M = pd.DataFrame(0, index=pd.Index(ids, name="src"), columns=pd.Index(ids, name="dst"), dtype=float)
    for u, v, d in g.edges(data=True):
        M.loc[u, v] = d["bytes"] / 1e6
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    sns.heatmap(M, ax=ax, cmap="rocket_r", square=True, cbar_kws={"fraction": 0.046, "label": "MB"},
                xticklabels=True, yticklabels=True)
    starts = [i for i in range(len(names)) if i == 0 or names[i] != names[i - 1]] + [len(names)]
    for b in starts[1:-1]:
        ax.axhline(b, color="#219ebc", lw=1)
        ax.axvline(b, color="#219ebc", lw=1)
    for a, b in zip(starts, starts[1:]):
        ax.text((a + b) / 2, -0.25, names[a], ha="center", va="bottom", fontsize=8, color="#219ebc", clip_on=False)
    ax.tick_params(labelsize=7)
    when = "all rounds" if round is None else f"round {round}"
    ax.set(xlabel="client (fetches)", ylabel="peer (serves)")
    ax.set_title(f"P2P MB per pair, {when}, by home domain", pad=16)
    fig.tight_layout()
    df = M.stack().rename("MB").reset_index()
    df["src_domain"] = df["src"].map(dict(zip(ids, names)))
    df["dst_domain"] = df["dst"].map(dict(zip(ids, names)))
    return fig, ax, df


__all__ += ["plot_p2p_matrix"]


# --------------------------------------------------------------------------- robustness (notebook 08)
def robustness_sweep(results, fields: tuple[str, ...] = ("dropout", "participation")) -> pd.DataFrame:
    """Final personalised accuracy of each run along each config field in ``fields``: one row per (field, run),
    taking the runs whose other ``fields`` are at their defaults (a dropout run counts along dropout only).
    Runs of one strategy along one field form a line (``strategy``); ``run`` is each run's label.

    ``answered``: local updates that reached the others (trained, not dropped, not discarded)."""
    from .config import ExperimentConfig

    defaults = {f: getattr(ExperimentConfig(), f) for f in fields}
    rows = []
    for field in fields:
        along = [r for r in results if all(getattr(r.config, f) == defaults[f] for f in fields if f != field)]
        for r in sorted(along, key=lambda r: getattr(r.config, field)):
            s = r.summary
            rows.append({"field": field, "value": getattr(r.config, field), "strategy": r.config.strategy,
                         "run": run_label(r), "final_acc": s["final_acc_mean"],
                         "client_std": s["final_acc_std"],
                         "worst10": s["final_acc_worst10"], "local_updates": s["local_updates"],
                         "answered": s["local_updates"] - s["dropouts"] - s["discarded_updates"]})
    return pd.DataFrame(rows, columns=["field", "value", "strategy", "run", "final_acc", "client_std", "worst10",
                                       "local_updates", "answered"])


def plot_robustness_sweep(results, fields: tuple[str, ...] = ("dropout", "participation")
                          ) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """One panel per field: final personalised accuracy (mean, bar ± std over clients; dotted: worst 10% of
    clients) against the field's value (``robustness_sweep``); each point says how many updates answered."""
    df = robustness_sweep(results, fields)
    fig, axes = plt.subplots(1, len(fields), figsize=(5.5 * len(fields), 4), squeeze=False, sharey=True)
    for ax, field in zip(axes[0], fields):
        for strategy, part in df[df["field"] == field].groupby("strategy", sort=False):
            line = ax.errorbar(part["value"], part["final_acc"], yerr=part["client_std"], marker="o", capsize=3,
                               label=f"{strategy}: mean ± std")
            ax.plot(part["value"], part["worst10"], ls=":", marker=".", color=line[0].get_color(),
                    label=f"{strategy}: worst 10%")
            for x, y, n in zip(part["value"], part["final_acc"], part["answered"]):
                ax.annotate(f"{n}", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax.set(xlabel=field, title=f"final accuracy against {field}")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("personalised accuracy (numbers: updates that answered)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig, axes[0], df


def plot_liars(table: pd.DataFrame) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """The honest clients' final accuracy per attack (x) and defence (bars), with the payloads the screens
    rejected written over each bar (from liars / from honest clients); dashed: the run without liars.

    ``table``: one row per run with attack (``none`` for the honest run), defence, honest_acc,
    rejected_from_liars, rejected_from_honest (``fl.liars.honest_outcome``)."""
    columns = ["attack", "defence", "honest_acc", "rejected_from_liars", "rejected_from_honest"]
    df = table[columns].reset_index(drop=True)
    lies = df[df["attack"] != "none"]
    attacks, defences = list(dict.fromkeys(lies["attack"])), list(dict.fromkeys(lies["defence"]))
    width = 0.8 / max(1, len(defences))
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(attacks) + 1), 4))
    for i, defence in enumerate(defences):
        part = lies[lies["defence"] == defence].set_index("attack").reindex(attacks)
        xs = np.arange(len(attacks)) + (i - (len(defences) - 1) / 2) * width
        ran = part["honest_acc"].notna().to_numpy()                      # (attack, defence) pairs that ran
        ax.bar(xs[ran], part["honest_acc"][ran], width, label=f"defence: {defence}")
        for x, (_, r) in zip(xs[ran], part[ran].iterrows()):
            ax.annotate(f"{int(r['rejected_from_liars'])}/{int(r['rejected_from_honest'])}",
                        (x, r["honest_acc"]), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
    for acc in df.loc[df["attack"] == "none", "honest_acc"].unique():
        ax.axhline(acc, color="k", ls="--", lw=1, label="no liar")
    ax.set_xticks(np.arange(len(attacks)), attacks)
    ax.set(ylabel="honest clients' final accuracy", ylim=(0, 1.1),
           title="a lying peer, with and without the screens (over bars: rejected lies / honest)")
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.tight_layout()
    return fig, ax, df


def rejections_per_round(result) -> pd.DataFrame:
    """Rejections per round (every round of the run) and channel (those the run has: dropout, local, server-up,
    p2p, ...): one column per channel."""
    rounds = sorted(result.history["round"].unique())
    rej = result.rejections
    if rej.empty:
        return pd.DataFrame(index=pd.Index(rounds, name="round"))
    return rej.groupby(["round", "channel"]).size().unstack(fill_value=0).reindex(rounds, fill_value=0).rename_axis(
        index="round", columns=None)


def plot_run_rounds(result, baseline=None) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """Left: mean personalised accuracy per round of ``result`` (and of ``baseline``, dashed). Right: what was
    rejected in each round, stacked by channel (a dropout, a screened-out P2P fetch or upload, a diverged update)."""
    acc = result.history.groupby("round")["personalised_accuracy"].mean().rename("accuracy")
    df = acc.to_frame()
    if baseline is not None:
        df["baseline_accuracy"] = baseline.history.groupby("round")["personalised_accuracy"].mean()
    rej = rejections_per_round(result)
    df = df.join(rej).fillna({c: 0 for c in rej.columns}).reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].plot(df["round"], df["accuracy"], marker="o", label=run_label(result))
    if baseline is not None:
        axes[0].plot(df["round"], df["baseline_accuracy"], ls="--", color="k", label=run_label(baseline))
    axes[0].set(xlabel="round", ylabel="personalised accuracy (mean over clients)", ylim=(0, 1), title="accuracy")
    axes[0].legend(fontsize=8)
    bottom = np.zeros(len(df))
    for ch in rej.columns:
        axes[1].bar(df["round"], df[ch], bottom=bottom, label=ch)
        bottom += df[ch].to_numpy()
    axes[1].set(xlabel="round", ylabel="rejections", title=f"rejected in each round ({int(bottom.sum())} in all)")
    if len(rej.columns):
        axes[1].legend(fontsize=8, title="channel")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, axes, df


# --------------------------------------------------------------------------- the dispatch kernels (notebook 09)
def plot_dispatch(weights, indices, pos_of) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """What the sort-based dispatch moves: the T*k assignments in token order (top, a = t*k + j) and the rows
    they become in expert order (bottom, ``pos_of``), a line each; cells show the token, colours the expert.
    weights, indices, pos_of: (T, k) from the router and ``routing_index``."""
    w, idx, pos = (np.asarray(a) for a in (weights, indices, pos_of))
    T, k = idx.shape
    df = pd.DataFrame({"assignment": np.arange(T * k), "token": np.repeat(np.arange(T), k),
                       "choice": np.tile(np.arange(k), T), "expert": idx.reshape(-1), "weight": w.reshape(-1),
                       "row": pos.reshape(-1)})
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(6, 0.42 * T * k + 1.5), 2.8))
    for r in df.itertuples():
        c = colours(r.expert % 10)
        ax.plot([r.assignment + 0.5, r.row + 0.5], [1.6, 0.4], color=c, lw=0.6 + 1.6 * r.weight, alpha=0.7)
        for x, y in ((r.assignment, 1.6), (r.row, 0)):
            ax.add_patch(plt.Rectangle((x + 0.05, y), 0.9, 0.4, color=c))
            ax.text(x + 0.5, y + 0.2, str(r.token), ha="center", va="center", fontsize=7, color="white")
    for e, part in df.sort_values("row").groupby("expert"):
        ax.text(part["row"].mean() + 0.5, -0.25, f"e{e}: {len(part)}", ha="center", va="top", fontsize=7,
                color=colours(e % 10))
    ax.text(-0.3, 1.8, "token order", ha="right", va="center", fontsize=8)
    ax.text(-0.3, 0.2, "expert order", ha="right", va="center", fontsize=8)
    ax.set(xlim=(-0.1, T * k + 0.1), ylim=(-0.7, 2.2), title=f"permute: {T} tokens x {k} choices -> rows grouped by "
           "expert (line width: routing weight; combine goes back up)")
    ax.axis("off")
    fig.tight_layout()
    return fig, ax, df


def plot_dispatch_timings(table: pd.DataFrame, dense_max_work: int | None = None
                          ) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """A dispatch benchmark's table (``benchmarks/moe_cpu.py``: one row per case and backend with tokens,
    the layer's shape, ``dense_work`` and ``median_us``). Left: median time of one forward + backward against
    tokens, per shape and backend. Right: the speed-up of the first backend over the second (torch time / dense
    time) against ``dense_work``, with the 'auto' rule's threshold ``dense_max_work`` (dotted)."""
    shape_cols = ["d_model", "d_hidden", "d_out", "experts", "top_k"]
    df = table.copy()
    df["shape"] = df.apply(lambda r: "d={} h={} out={} E={} k={}".format(*(int(r[c]) for c in shape_cols)), axis=1)
    df = df[["shape", "backend", "tokens", "dense_work", "median_us"]].reset_index(drop=True)
    wide = df.pivot_table(index=["shape", "tokens", "dense_work"], columns="backend", values="median_us",
                          sort=False).reset_index()
    backends = list(dict.fromkeys(df["backend"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    styles = ["-", "--", ":", "-."]
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(dict.fromkeys(df["shape"]))}
    for (shape, backend), part in df.groupby(["shape", "backend"], sort=False):
        axes[0].plot(part["tokens"], part["median_us"], ls=styles[backends.index(backend) % 4], marker=".",
                     color=colours[shape], label=f"{backend}, {shape}")
    axes[0].set(xscale="log", yscale="log", xlabel="tokens T", ylabel="median µs (forward + backward)",
                title="MoE layer time per step")
    axes[0].legend(fontsize=6, ncol=2)
    if len(backends) >= 2:
        a, b = backends[:2]
        for shape, part in wide.groupby("shape", sort=False):
            axes[1].plot(part["dense_work"], part[a] / part[b], marker="o", color=colours[shape], label=shape)
        axes[1].axhline(1, color="k", lw=0.8)
        if dense_max_work is not None:
            axes[1].axvline(dense_max_work, color="k", ls=":", label="auto: dense up to here")
        axes[1].set(xscale="log", xlabel="dense_work (multiply-adds of every expert on every token)",
                    ylabel=f"{a} time / {b} time", title=f"> 1: {b} is faster")
        axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig, axes, df


__all__ += ["robustness_sweep", "plot_robustness_sweep", "plot_liars", "rejections_per_round", "plot_run_rounds",
            "plot_dispatch", "plot_dispatch_timings"]


# -- speed and scale: the committed benchmarks (notebook 10) --
__all__ += ["plot_scaling", "plot_vs_flower"]


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
