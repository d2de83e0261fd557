"""The aggregation matrix A of Eq. 8-10 (notebook 04, docs/ARCHITECTURE.md §7): A or R as a heatmap with domain blocks,
and A's domain purity against a setting."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .common import group_starts


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
        starts = group_starts(groups)
        for b in starts[1:-1]:
            ax.axhline(b, color="0.6", lw=0.8)
            ax.axvline(b, color="0.6", lw=0.8)
        centres = [(a + b) / 2 for a, b in zip(starts, starts[1:])]
        names = [groups[a] for a in starts[:-1]]
        ax.set_xticks(centres, names, rotation=0, fontsize=8)
        ax.set_yticks(centres, names, rotation=90, va="center", fontsize=8)
    fig.tight_layout()
    return fig, ax, df


def plot_purity(df: pd.DataFrame, x: str = "P", hue: str = "proxy") -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """Domain purity of A against ``x`` (one line per ``hue``), with the domain-blind chance level dashed.

    df: one row per setting with columns x, hue, ``domain_purity`` and ``purity_chance``
    (``fl.diagnostics.matrix_diagnostics``)."""
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
