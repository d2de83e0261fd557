"""Bytes per channel of finished runs (notebooks 01, 05, 06): server up and down and P2P, per round or over the run,
read from the ledger (docs/ARCHITECTURE.md §5) or the run summary."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..fl.summary import SERVER_CHANNELS
from .common import run_label

CHANNELS = (*SERVER_CHANNELS, "p2p")


CHANNEL_SUMMARY = {"server-up": "server_up_bytes", "server-down": "server_down_bytes",   # channel -> run summary key
                   "p2p": "p2p_bytes"}


def cumulative_bytes(ledgers: dict[tuple[str, int], pd.DataFrame], rounds: int) -> pd.DataFrame:
    """Cumulative server, P2P and total MB per (strategy, round), averaged over seeds.

    ledgers: (strategy, seed) -> ledger."""
    rows = []
    for (strategy, seed), ledger in ledgers.items():
        for name, part in (("server_MB", ledger[ledger["channel"].isin(SERVER_CHANNELS)] if len(ledger) else ledger),
                           ("p2p_MB", ledger[ledger["channel"] == "p2p"] if len(ledger) else ledger)):
            per_round = part.groupby("round")["bytes"].sum() if len(part) else pd.Series(dtype=float)
            cum = per_round.reindex(range(1, rounds + 1), fill_value=0).cumsum()
            rows += [{"strategy": strategy, "seed": seed, "round": r, "kind": name, "MB": b / 1e6}
                     for r, b in cum.items()]
    df = pd.DataFrame(rows).pivot_table(index=["strategy", "seed", "round"], columns="kind", values="MB").reset_index()
    df["total_MB"] = df["server_MB"] + df["p2p_MB"]
    return df.groupby(["strategy", "round"], sort=False)[["server_MB", "p2p_MB", "total_MB"]].mean().reset_index()


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
                server = row[list(SERVER_CHANNELS)].sum() / server_base
                text = f"server {server:.2f}\ntotal {row.sum() / total_base:.2f}"
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
