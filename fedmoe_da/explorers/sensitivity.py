"""Sensitivity of FedMoE-DA to its knobs (notebook 07): a one-factor-at-a-time sweep, then an explorer over it.

    grid = {"P": [0, 1, 3, 8], "tau": [0.03, 0.1, 0.5], "sync": ["every_round", "refresh"]}
    table, runs = sweep(base.replace(out="runs/sens"), grid, at={"sync": {"I": 5}})
    ex = sensitivity_explorer(table)        # knob and metric dropdowns over viz.plot_sensitivity
    ex.controls["knob"].value = "tau"       # redraws from the table: no training

Each point changes one knob of ``base`` (plus the fields ``at[knob]`` names, e.g. the schedule is
swept at I=5 because at I=1 every round is a refresh round and both schedules are the same run).
Points that are the same config run once; the runs go through ``results.compare``, so with
``base.out`` set they are cached there (out/<entry>/seed<s>/) and a second sweep reads them back.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import pandas as pd

from .. import viz
from ..config import ConfigError, ExperimentConfig
from ..results import compare
from ..widgets import Explorer

METRICS = ("final_acc", "worst10", "best_acc", "p2p_MB", "total_MB", "purity")
"""Columns of the sweep table the explorer offers (``results.comparison_table``'s names)."""


def sweep_points(base: ExperimentConfig, grid: dict[str, list],
                 at: dict[str, dict] | None = None) -> dict[tuple[str, Any], str]:
    """(knob, value) -> the ``compare`` entry that runs it: ``base.strategy`` plus the fields that differ from base."""
    at = at or {}
    if not grid or any(len(values) == 0 for values in grid.values()):
        raise ConfigError(f"grid={grid!r} is invalid: "
                          "must map each knob (a config field) to a non-empty list of values")
    stray = sorted(set(at) - set(grid))
    if stray:
        raise ConfigError(f"at names knob {stray[0]!r}, which is not in the grid: "
                          f"the grid's knobs are {', '.join(grid)}")
    points = {}
    for knob, values in grid.items():
        for value in values:
            config = base.replace(**{**at.get(knob, {}), knob: value})       # an unknown field raises ConfigError
            changed = [f"{f}={getattr(config, f)}" for f in sorted({*at.get(knob, {}), knob})
                       if getattr(config, f) != getattr(base, f)]
            points[(knob, value)] = ":".join([base.strategy, *changed])
    return points


def sweep(base: ExperimentConfig, grid: dict[str, list], at: dict[str, dict] | None = None,
          seeds: int = 1) -> tuple[pd.DataFrame, list]:
    """Run every point of ``grid`` around ``base`` (each distinct config once); returns (table, runs).

    table: one row per (knob, value) in the grid's order with ``entry`` (the run's label), ``base`` (True for
    the unchanged config), ``fixed`` (the knob's ``at`` fields, 'I=5') and ``results.comparison_table``'s
    columns (final_acc, worst10, p2p_MB, ...)."""
    points = sweep_points(base, grid, at)
    fixed = {knob: ", ".join(f"{f}={v}" for f, v in (at or {}).get(knob, {}).items()) for knob in grid}
    summary, runs = compare(base, list(dict.fromkeys(points.values())), seeds=seeds)
    by_entry = summary.set_index("strategy")
    rows = [{"knob": knob, "value": value, "entry": entry, "base": entry == base.strategy, "fixed": fixed[knob],
             **by_entry.loc[entry]}
            for (knob, value), entry in points.items()]
    return pd.DataFrame(rows), runs


def sensitivity_explorer(table: pd.DataFrame) -> Explorer:
    """Knob and metric dropdowns over a finished sweep's table (``sweep``); redraws ``viz.plot_sensitivity``."""
    knobs = list(dict.fromkeys(table["knob"]))
    metrics = [m for m in METRICS if m in table.columns]
    if not knobs or not metrics:
        raise ValueError("table holds no sweep: sensitivity_explorer needs sweep()'s table (knob, value, metrics)")
    controls = {"knob": widgets.Dropdown(options=knobs, value=knobs[0], description="knob"),
                "metric": widgets.Dropdown(options=metrics, value=metrics[0], description="metric")}
    return Explorer(lambda knob, metric: viz.plot_sensitivity(table, metric, [knob]), controls,
                    "One knob at a time around the base point (finished runs)")


__all__ = ["METRICS", "sweep_points", "sweep", "sensitivity_explorer"]
