"""Runs under dropout, partial participation and lying peers (notebook 08, docs/ARCHITECTURE.md §12): final accuracy
along each knob, the honest clients' accuracy per attack and defence, and what a run rejected round by round."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..config import ExperimentConfig
from .common import run_label


def robustness_sweep(results, fields: tuple[str, ...] = ("dropout", "participation")) -> pd.DataFrame:
    """Final personalised accuracy of each run along each config field in ``fields``: one row per (field, run),
    taking the runs whose other ``fields`` are at their defaults (a dropout run counts along dropout only).
    Runs of one strategy along one field form a line (``strategy``); ``run`` is each run's label.

    ``answered``: local updates that reached the others (trained, not dropped, not discarded)."""
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
