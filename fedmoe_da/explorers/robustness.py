"""Explorers of robustness (notebook 08): finished runs with dropouts, partial participation and liars.

    runs = {"honest": base, "dropout=0.3": dropped, "liar, screen": screened}     # SimulationResults
    ex = run_explorer(runs, baseline="honest")     # a run -> its accuracy per round beside the baseline's,
    ex.controls["run"].value = "liar, screen"      # and what was rejected in each round, by channel

Nothing is trained on a redraw: the runs are finished, the explorer only picks one.
"""
from __future__ import annotations

import ipywidgets as widgets

from .. import viz
from ..fl.summary import SimulationResult
from ..widgets import Explorer


def run_explorer(runs: dict[str, SimulationResult], baseline: str | None = None) -> Explorer:
    """A dropdown over the finished ``runs`` (name -> result): ``viz.plot_run_rounds`` of the chosen run against
    ``runs[baseline]`` (None: no baseline)."""
    if not runs:
        raise ValueError("runs is empty: the explorer needs at least one finished run")
    if baseline is not None and baseline not in runs:
        raise ValueError(f"baseline={baseline!r} is invalid: must be one of {', '.join(map(repr, runs))}")
    names = list(runs)
    start = next((n for n in names if n != baseline), names[0])
    controls = {"run": widgets.Dropdown(options=names, value=start, description="run")}

    def plot(run: str):
        return viz.plot_run_rounds(runs[run], None if baseline is None else runs[baseline])

    return Explorer(plot, controls, title="a finished run: accuracy per round and what was rejected")
