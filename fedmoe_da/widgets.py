"""Widgets for exploration: controls wrapped around one of ``viz``'s plotting functions.

    ex = Explorer(lambda P, tau: viz.plot_matrix(...), {"P": IntSlider(3, 0, 8), "tau": FloatLogSlider(...)})
    ex                      # in a notebook: the controls, a status line and the figure
    ex.controls["P"].value = 5      # redraws; ex.last is the new (fig, ax, df), ex.state the values drawn

The plotting function takes the controls' values as keyword arguments and
returns ``(fig, ax, df)`` (``viz``'s convention); the explorer only wraps it.
Every redraw writes a status line whose text ends in a marker of the values
drawn (``drawn: P=5, tau=0.1``), so a browser test can wait for the *last*
value's figure (a slider dragged by key presses fires once per step), and a
Python test can read ``ex.last`` and ``ex.state``.
"""
from __future__ import annotations

import html
from typing import Any, Callable

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

Plot = Callable[..., tuple[Any, Any, Any]]


def state_marker(values: dict[str, Any]) -> str:
    """'P=5, tau=0.1': the values a figure was drawn with, in the controls' order."""
    return ", ".join(f"{k}={_short(v)}" for k, v in values.items())


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Explorer:
    """Controls -> ``plot(**values)`` -> one output area; redrawn on every change."""

    def __init__(self, plot: Plot, controls: dict[str, widgets.ValueWidget], title: str = "") -> None:
        self.plot, self.controls, self.title = plot, controls, title
        self.output = widgets.Output()
        self.status = widgets.HTML()
        self.last: tuple[Any, Any, Any] | None = None
        self.state: dict[str, Any] = {}
        self.draws = 0
        for w in controls.values():
            w.observe(lambda _change: self.redraw(), names="value")
        head = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        self.widget = widgets.VBox([*head, widgets.HBox(list(controls.values())), self.status, self.output])
        self.redraw()

    def values(self) -> dict[str, Any]:
        return {name: w.value for name, w in self.controls.items()}

    def redraw(self) -> None:
        values = self.values()
        with self.output:
            self.output.clear_output(wait=True)
            fig, ax, df = self.plot(**values)
            display(fig)
            plt.close(fig)
        self.last, self.state, self.draws = (fig, ax, df), values, self.draws + 1
        marker = state_marker(values)
        self.status.value = (f'<span class="fedmoe-drawn" data-state="{html.escape(marker)}">'
                             f'drawn: {html.escape(marker)}</span>')

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
