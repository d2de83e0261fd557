"""The router's decisions (notebook 03): one batch of tokens, then the tokens each client or home domain sent to
each expert in a run (the history's routed-token columns)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..models.names import routed_columns


def plot_token_routing(probs, weights, indices) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """A router's decision for T tokens over E experts: the softmax (left) and the renormalised top-k weights (right).

    probs (T, E) softmax of the gate logits; weights, indices (T, k) from top-k. df: one row per
    (token, expert) with its probability and its routing weight (0 where the expert was not chosen)."""
    probs = np.asarray(probs, dtype=float)
    T, E = probs.shape
    routed = np.zeros((T, E))
    np.put_along_axis(routed, np.asarray(indices), np.asarray(weights, dtype=float), axis=1)   # (T, E)
    fig, axes = plt.subplots(1, 2, figsize=(2.5 + 1.1 * E, max(2.5, 0.3 * T + 1)), sharey=True)
    names = ("softmax p(e | token)", f"top-{np.shape(indices)[1]} weights, renormalised")
    for ax, values, name in zip(axes, (probs, routed), names):
        sns.heatmap(values, ax=ax, cmap="magma", vmin=0, vmax=1, annot=T * E <= 160, fmt=".2f",
                    annot_kws={"fontsize": 7}, cbar=False)
        ax.set(title=name, xlabel="expert")
    axes[0].set_ylabel("token")
    fig.tight_layout()
    tok, exp = np.meshgrid(np.arange(T), np.arange(E), indexing="ij")
    df = pd.DataFrame({"token": tok.ravel(), "expert": exp.ravel(), "prob": probs.ravel(), "weight": routed.ravel()})
    return fig, axes, df


def plot_routing(history: pd.DataFrame, round: int | None = None, layer: int = 0, *,
                 clients: pd.DataFrame | None = None,
                 domain: str | None = None) -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
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
    ax.set(xlabel="expert", ylabel="clients' home domain",
           title=f"routed token share by domain, layer {layer}, round {round}")
    ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig, ax, df
