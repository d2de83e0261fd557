"""Explorer of finished runs side by side (notebook 06): pick strategies and a view, nothing is re-trained.

    ex = compare_explorer(runs)                     # runs: SimulationResults, several strategies and seeds
    ex.controls["strategies"].value = ("fedmoe_da", "fedavg")
    ex.controls["view"].value = "traffic per channel"    # ex.last[2] holds only the chosen strategies' rows

Each view is a ``viz`` function of a list of runs (VIEWS); the explorer filters the runs and redraws.
"""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd

from .. import viz
from ..widgets import Explorer

VIEWS = {"accuracy per round": viz.plot_accuracy_curves,
         "accuracy per client": viz.plot_client_accuracy,
         "traffic per channel": viz.plot_channel_bytes}
"""What the view dropdown offers: a name -> a viz function of a list of runs returning (fig, ax, df)."""


def select_runs(runs, strategies) -> list:
    """The runs whose label (``viz.run_label``) is among ``strategies``, in their original order."""
    known = list(dict.fromkeys(viz.run_label(r) for r in runs))
    unknown = [s for s in strategies if s not in known]
    if unknown:
        raise ValueError(f"strategy {unknown[0]!r} has no run: choose from {', '.join(known)}")
    return [r for r in runs if viz.run_label(r) in set(strategies)]


def plot_view(runs, strategies, view: str):
    """``VIEWS[view]`` of the chosen strategies' runs; an empty figure (and df) when none is chosen."""
    if view not in VIEWS:
        raise ValueError(f"view={view!r} is invalid: must be one of {', '.join(VIEWS)}")
    chosen = select_runs(runs, strategies)
    if not chosen:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.text(0.5, 0.5, "choose at least one strategy", ha="center", va="center")
        ax.axis("off")
        return fig, ax, pd.DataFrame(columns=["strategy"])
    return VIEWS[view](chosen)


def compare_explorer(runs) -> Explorer:
    """A strategy multi-select (all chosen at first) and a view dropdown over finished runs."""
    labels = list(dict.fromkeys(viz.run_label(r) for r in runs))
    if not labels:
        raise ValueError("runs is empty: compare_explorer needs at least one finished run")
    controls = {"strategies": widgets.SelectMultiple(options=labels, value=tuple(labels), rows=min(len(labels), 8),
                                                     description="strategies"),
                "view": widgets.Dropdown(options=list(VIEWS), value=next(iter(VIEWS)), description="view")}
    return Explorer(lambda strategies, view: plot_view(runs, strategies, view), controls,
                    "FedMoE-DA and the baselines, finished runs")


__all__ = ["VIEWS", "select_runs", "plot_view", "compare_explorer"]
