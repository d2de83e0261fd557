"""Plots: each takes tidy tables and returns ``(fig, ax, df)``, df being exactly what was drawn
(docs/ARCHITECTURE.md §11).

One module per mechanism, named after the explorers and notebooks that show it: ``data`` (who holds what), ``moe``
(routing), ``matrix`` (A, Eq. 8-10), ``p2p`` (expert fetches), ``compare`` and ``traffic`` (finished runs side by
side), ``sensitivity``, ``robustness``, ``kernel`` (the dispatch) and ``speed`` (the committed benchmarks); ``common``
holds what several of them share. Every public function is re-exported here, so ``viz.plot_matrix(...)`` and
``from fedmoe_da.viz import plot_matrix`` work; the widgets in ``explorers`` only wrap these functions.
"""
from .common import group_starts, run_label
from .compare import accuracy_per_round, client_accuracy, plot_accuracy_curves, plot_client_accuracy, plot_comparison
from .data import plot_client_data, plot_domain_samples, plot_partition
from .kernel import plot_dispatch, plot_dispatch_timings
from .matrix import plot_matrix, plot_purity
from .moe import plot_routing, plot_routing_by_domain, plot_token_routing, routing_by_domain
from .p2p import domain_layout, plot_p2p_graph, plot_p2p_matrix
from .robustness import plot_liars, plot_robustness_sweep, plot_run_rounds, rejections_per_round, robustness_sweep
from .sensitivity import plot_sensitivity
from .speed import plot_scaling, plot_vs_flower
from .traffic import channel_bytes, cumulative_bytes, plot_channel_bytes

__all__ = [
    # drawn: each returns (fig, ax, df)
    "plot_partition", "plot_domain_samples", "plot_client_data",                        # data
    "plot_token_routing", "plot_routing", "plot_routing_by_domain",                     # moe
    "plot_matrix", "plot_purity",                                                       # matrix
    "plot_p2p_graph", "plot_p2p_matrix",                                                # p2p
    "plot_comparison", "plot_accuracy_curves", "plot_client_accuracy",                  # compare
    "plot_channel_bytes",                                                               # traffic
    "plot_sensitivity",                                                                 # sensitivity
    "plot_robustness_sweep", "plot_liars", "plot_run_rounds",                           # robustness
    "plot_dispatch", "plot_dispatch_timings",                                           # kernel
    "plot_scaling", "plot_vs_flower",                                                   # speed
    # the tables behind them, and helpers the explorers and tests use
    "run_label", "group_starts", "accuracy_per_round", "client_accuracy", "cumulative_bytes", "channel_bytes",
    "routing_by_domain", "robustness_sweep", "rejections_per_round", "domain_layout",
]
