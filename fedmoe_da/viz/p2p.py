"""Who fetched experts from whom (notebooks 01, 05; docs/ARCHITECTURE.md §5): the ledger's P2P rows as a graph or
a matrix of clients, laid out by home domain."""
from __future__ import annotations

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd
import seaborn as sns

from ..fl.p2p import p2p_graph
from .common import group_starts


def domain_layout(clients: pd.DataFrame, radius: float = 0.36) -> dict[int, np.ndarray]:
    """Clients grouped by home domain (``result.clients``): each domain a small circle of its clients, the domains'
    centres on the unit circle, so edges inside a domain stay inside its cluster and edges across domains run
    between."""
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
    df = pd.DataFrame([{"src": u, "dst": v, **{k: d[k] for k in ("bytes", "experts")}}
                       for u, v, d in g.edges(data=True)],
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
            within = df.loc[same, "bytes"].sum() / max(df["bytes"].sum(), 1)
            title += f"\n{within:.0%} of the bytes within a home domain"
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
    starts = group_starts(names)
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
