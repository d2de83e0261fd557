"""The MoE dispatch (notebook 09): what the sort-based permute moves, and the committed CPU timings of the
dispatch backends."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


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
