"""Explorer of the peer-to-peer traffic (notebook 05): who fetched which experts from whom, round by round.

    result = results.run_or_load(ExperimentConfig(...))   # a finished FedMoE-DA run
    ex = p2p_explorer(result)              # a round slider over viz.plot_p2p_graph, clients laid out by home domain
    ex.controls["round"].value = 3         # redraws: ex.last[2] holds round 3's edges (peer -> client, bytes summed)

A redraw only reads the run's ledger: no training.
"""
from __future__ import annotations

import ipywidgets as widgets

from .. import viz
from ..fl.summary import SimulationResult
from ..widgets import Explorer


def p2p_explorer(result: SimulationResult) -> Explorer:
    """A round slider (1 to the run's last round, starting at the last) over the run's P2P graph."""
    if result.history.empty:
        raise ValueError("result has no rounds: p2p_explorer needs a finished run")
    last = int(result.history["round"].max())
    controls = {"round": widgets.IntSlider(value=last, min=1, max=last, step=1, description="round",
                                           continuous_update=False)}
    return Explorer(lambda round: viz.plot_p2p_graph(result.ledger, round, clients=result.clients), controls,
                    "Who fetched experts from whom (arrows peer -> client, width by bytes)")


__all__ = ["p2p_explorer"]
