"""The paper figures: a registry of figure ids, each drawn by one notebook, and the files each figure leaves.

A notebook draws a figure and hands it to ``save_figure(fig, df, fig_id, FIG_DIR, ...)``;
with ``FIG_DIR`` None (a reader running the notebook by hand) nothing is
written. Each saved figure is four files in ``FIG_DIR``:

    <id>.png   <id>.pdf    the figure
    <id>.csv                exactly the data drawn (the ``df`` of viz's ``(fig, ax, df)``)
    <id>.json               figure id, notebook, parameters, seeds, package versions, git commit
                            (the runner adds the notebook's wall time)

``FIGURES`` maps each id to its notebook, the papermill parameters of the
full run, the claim of the paper it tests and what it shows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from .fl.run_folder import versions

CSV_FLOAT_FORMAT = "%.6g"


@dataclass(frozen=True)
class Figure:
    id: str                  # also the output name: <id>.png/.pdf/.csv/.json
    notebook: str            # stem in notebooks/, e.g. "04_aggregation_matrix"
    claim: str               # the claim of the paper (or of this package) it tests
    shows: str               # what it shows, honestly
    params: dict[str, Any] = field(default_factory=dict)   # papermill parameters of the full run


# -- registry: one entry per figure, grouped by notebook --
FIGURES: tuple[Figure, ...] = (
    # -- end of registry --
)


def save_figure(fig: plt.Figure, df: pd.DataFrame, fig_id: str, out: str | Path | None,
                params: dict[str, Any] | None = None, seeds: list[int] | None = None) -> Path | None:
    """Write <id>.png, .pdf, .csv and .json into ``out`` (nothing when ``out`` is None); returns the png's path."""
    if out is None:
        return None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{fig_id}.png", dpi=150, bbox_inches="tight")
    fig.savefig(out / f"{fig_id}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
    df.to_csv(out / f"{fig_id}.csv", index=False, float_format=CSV_FLOAT_FORMAT)
    meta = {"figure": fig_id, "notebook": _notebook_of(fig_id), "parameters": params or {},
            "seeds": list(seeds or []), "versions": versions()}
    (out / f"{fig_id}.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return out / f"{fig_id}.png"


def _notebook_of(fig_id: str) -> str | None:
    return next((f.notebook for f in FIGURES if f.id == fig_id), None)
