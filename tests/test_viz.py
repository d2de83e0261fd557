"""The viz package's contract (docs/ARCHITECTURE.md §11), checked against plain references.

* ``viz.__all__`` is exactly the public functions of its modules, each defined once;
* every public ``plot_*`` returns ``(fig, ax, df)``: a figure, its axes, a non-empty frame;
* what is drawn is the df: heatmap cells, bar heights and line points read back from the artists equal the df,
  and the tables behind the plots equal a loop over the raw rows.
"""
from __future__ import annotations

import inspect
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmoe_da import ExperimentConfig, simulate, viz
from fedmoe_da import data as fdata
from fedmoe_da.fl.summary import SERVER_CHANNELS


@pytest.fixture(scope="module")
def runs():
    base = ExperimentConfig(progress=False, backend="torch", seed=0).smoke().replace(rounds=2)
    return [simulate(base.replace(strategy=s)) for s in ("fedmoe_da", "fedavg")]


@pytest.fixture(scope="module")
def counts():
    config = ExperimentConfig(progress=False, seed=0).smoke()
    dataset = fdata.build(config)
    clients = fdata.partition(dataset, config)
    return {by: fdata.client_counts(clients, dataset, by=by) for by in ("domain", "label")}


def routing(T: int = 6, E: int = 4, k: int = 2, seed: int = 0):
    """A softmax over E experts for T tokens, its renormalised top-k (T, k) and the sort-based row of each choice."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(T, E))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)                 # (T, E)
    indices = np.argsort(-probs, axis=1)[:, :k]                                     # (T, k)
    weights = np.take_along_axis(probs, indices, 1)
    weights /= weights.sum(1, keepdims=True)
    pos_of = np.empty(T * k, int)
    pos_of[np.argsort(indices.reshape(-1), kind="stable")] = np.arange(T * k)
    return probs, weights, indices, pos_of.reshape(T, k)


TIMINGS = pd.DataFrame({"case": ["a", "a", "b", "b"], "backend": ["torch", "dense"] * 2, "tokens": [16, 16, 64, 64],
                        "d_model": 8, "d_hidden": 8, "d_out": 2, "experts": 4, "top_k": 2,
                        "dense_work": [1000, 1000, 4000, 4000], "median_us": [10.0, 5.0, 12.0, 24.0]})
SCALING = pd.DataFrame({"clients": [20, 20, 100, 100, 20], "engine": ["stacked", "loop", "stacked", "loop", "stacked"],
                        "s_per_round": [1.0, 3.0, 2.0, 9.0, 3.0], "peak_rss_mb": [300.0, 310, 320, 400, 340]})
RATIOS = pd.DataFrame({"clients": [20, 100], "engine": ["stacked", "stacked"], "package_s_per_round": [1.0, 2.0],
                       "flower_s_per_round": [5.0, 30.0], "ratio": [5.0, 15.0]})
SENSITIVITY = pd.DataFrame({"knob": ["P", "P", "P", "proxy", "proxy"], "value": [1, 3, 10, "gate", "domain"],
                            "base": [False, True, False, True, False], "final_acc": [.5, .6, .55, .6, .7]})
LIARS = pd.DataFrame({"attack": ["none", "noise_experts", "noise_experts"], "defence": ["none", "none", "screens"],
                      "honest_acc": [.8, .3, .78], "rejected_from_liars": [0, 0, 3], "rejected_from_honest": [0, 0, 0]})
PURITY = pd.DataFrame({"P": [1, 3, 5] * 2, "proxy": ["gate"] * 3 + ["domain"] * 3,
                       "domain_purity": [.3, .4, .5, .9, .8, .7], "purity_chance": [.25] * 6})


def calls(runs, counts) -> dict:
    """One call of every public plot function on small inputs."""
    fedmoe, fedavg = runs
    probs, weights, indices, pos_of = routing()
    rng = np.random.default_rng(1)
    A = rng.random((6, 6))
    return {
        "plot_partition": lambda: viz.plot_partition(counts["domain"]),
        "plot_domain_samples": lambda: viz.plot_domain_samples(rng.random((12, 1, 4, 4)), np.tile([0, 1, 2], 4),
                                                               np.repeat([0, 1], 6), ["a", "b"], per_domain=3),
        "plot_client_data": lambda: viz.plot_client_data(counts["domain"], counts["label"]),
        "plot_token_routing": lambda: viz.plot_token_routing(probs, weights, indices),
        "plot_routing": lambda: viz.plot_routing(fedmoe.history, clients=fedmoe.clients),
        "plot_routing_by_domain": lambda: viz.plot_routing_by_domain(fedmoe.history, fedmoe.clients),
        "plot_matrix": lambda: viz.plot_matrix(A, groups=list("aabbbc")),
        "plot_purity": lambda: viz.plot_purity(PURITY),
        "plot_p2p_graph": lambda: viz.plot_p2p_graph(fedmoe.ledger, None, clients=fedmoe.clients),
        "plot_p2p_matrix": lambda: viz.plot_p2p_matrix(fedmoe.ledger, fedmoe.clients),
        "plot_comparison": lambda: viz.plot_comparison(runs),
        "plot_accuracy_curves": lambda: viz.plot_accuracy_curves(runs),
        "plot_client_accuracy": lambda: viz.plot_client_accuracy(runs),
        "plot_channel_bytes": lambda: viz.plot_channel_bytes(runs),
        "plot_sensitivity": lambda: viz.plot_sensitivity(SENSITIVITY),
        "plot_robustness_sweep": lambda: viz.plot_robustness_sweep(runs),
        "plot_liars": lambda: viz.plot_liars(LIARS),
        "plot_run_rounds": lambda: viz.plot_run_rounds(fedmoe, fedavg),
        "plot_dispatch": lambda: viz.plot_dispatch(weights, indices, pos_of),
        "plot_dispatch_timings": lambda: viz.plot_dispatch_timings(TIMINGS, 2000),
        "plot_scaling": lambda: viz.plot_scaling(SCALING),
        "plot_vs_flower": lambda: viz.plot_vs_flower(RATIOS),
    }


# --------------------------------------------------------------------------- the package's surface
def test_all_is_exactly_the_public_functions_of_the_modules():
    defined = {name: f for _, module in inspect.getmembers(viz, inspect.ismodule)
               if module.__name__.startswith("fedmoe_da.viz.")
               for name, f in inspect.getmembers(module, inspect.isfunction)
               if f.__module__ == module.__name__ and not name.startswith("_")}
    assert len(viz.__all__) == len(set(viz.__all__)), "a name is listed twice in viz.__all__"
    assert sorted(viz.__all__) == sorted(defined)
    assert all(getattr(viz, name) is f for name, f in defined.items()), "viz re-exports another object"


def test_every_plot_function_returns_fig_axes_and_the_frame_it_drew(runs, counts):
    plots = calls(runs, counts)
    assert sorted(plots) == sorted(n for n in viz.__all__ if n.startswith("plot_")), "a plot function is untested"
    for name, call in plots.items():
        fig, ax, df = call()
        axes = np.ravel(ax)
        assert isinstance(fig, plt.Figure) and isinstance(df, pd.DataFrame) and len(df), name
        assert all(isinstance(a, plt.Axes) and a.figure is fig for a in axes), name
        plt.close(fig)


# --------------------------------------------------------------------------- what is drawn is the df
@given(st.lists(st.sampled_from("abc"), max_size=12))
def test_group_starts_are_where_each_run_of_equal_names_begins(groups):
    lengths = [len(list(run)) for _, run in itertools.groupby(groups)]
    assert viz.group_starts(groups) == [0, *itertools.accumulate(lengths)][: len(lengths)] + [len(groups)]


def test_plot_matrix_draws_the_matrix_and_a_line_between_domain_blocks():
    A = np.random.default_rng(0).random((5, 5))
    fig, ax, df = viz.plot_matrix(A, groups=["a", "a", "b", "b", "b"])
    np.testing.assert_array_equal(df.to_numpy(), A)
    np.testing.assert_array_equal(ax.collections[0].get_array().reshape(5, 5), A)
    assert [line.get_ydata()[0] for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[1]] == [2]
    plt.close(fig)


def test_plot_partition_stacks_each_clients_counts(counts):
    fig, ax, df = viz.plot_partition(counts["label"])
    heights = np.array([[p.get_height() for p in c] for c in ax.containers])   # (labels, clients)
    np.testing.assert_array_equal(heights.T, counts["label"].to_numpy())
    assert df is counts["label"]
    plt.close(fig)


def test_plot_token_routing_puts_each_tokens_weights_on_its_chosen_experts():
    probs, weights, indices, _ = routing(T=5, E=4, k=2)
    fig, axes, df = viz.plot_token_routing(probs, weights, indices)
    routed = np.zeros_like(probs)
    for t, j in itertools.product(range(5), range(2)):
        routed[t, indices[t, j]] = weights[t, j]
    np.testing.assert_allclose(df["weight"].to_numpy().reshape(5, 4), routed)
    np.testing.assert_allclose(df["prob"].to_numpy().reshape(5, 4), probs)
    np.testing.assert_allclose(axes[1].collections[0].get_array().reshape(5, 4), routed)
    plt.close(fig)


def test_plot_dispatch_sends_each_choice_to_a_distinct_row_grouped_by_expert():
    _, weights, indices, pos_of = routing(T=6, E=3, k=2)
    fig, ax, df = viz.plot_dispatch(weights, indices, pos_of)
    assert sorted(df["row"]) == list(range(12))
    assert list(df.sort_values("row")["expert"]) == sorted(indices.reshape(-1))
    plt.close(fig)


def test_accuracy_and_traffic_tables_equal_a_loop_over_the_runs(runs):
    acc = viz.accuracy_per_round([r.history.assign(strategy=viz.run_label(r)) for r in runs]).set_index(
        ["strategy", "round"])
    for r in runs:
        for rnd, part in r.history.groupby("round"):
            assert acc.loc[(viz.run_label(r), rnd), "mean"] == pytest.approx(part["personalised_accuracy"].mean())
    comm = viz.cumulative_bytes({(viz.run_label(r), 0): r.ledger for r in runs}, 2).set_index(["strategy", "round"])
    for r in runs:
        server = r.ledger[r.ledger["channel"].isin(SERVER_CHANNELS)]
        p2p = r.ledger[r.ledger["channel"] == "p2p"]
        for rnd in (1, 2):
            row = comm.loc[(viz.run_label(r), rnd)]
            assert row["server_MB"] == pytest.approx(server.loc[server["round"] <= rnd, "bytes"].sum() / 1e6)
            assert row["p2p_MB"] == pytest.approx(p2p.loc[p2p["round"] <= rnd, "bytes"].sum() / 1e6)
            assert row["total_MB"] == pytest.approx(row["server_MB"] + row["p2p_MB"])


def test_plot_channel_bytes_stacks_the_ledgers_bytes_per_channel(runs):
    fig, ax, df = viz.plot_channel_bytes(runs)
    drawn = {bars.get_label(): [patch.get_height() for patch in bars] for bars in ax.containers}   # channel -> runs
    assert list(drawn) == [*SERVER_CHANNELS, "p2p"]
    for ch, heights in drawn.items():
        by_ledger = [r.ledger.loc[r.ledger["channel"] == ch, "bytes"].sum() / 1e6 for r in runs]
        assert heights == pytest.approx(by_ledger), ch
        assert list(df.loc[df["channel"] == ch, "MB"]) == pytest.approx(by_ledger), ch
    plt.close(fig)


def test_plot_scaling_draws_the_median_of_the_repeats():
    fig, axes, df = viz.plot_scaling(SCALING)
    stacked = axes[0].lines[[line.get_label() for line in axes[0].lines].index("stacked")]
    assert list(stacked.get_xdata()) == [20, 100] and list(stacked.get_ydata()) == [2.0, 2.0]   # median(1, 3), 2
    assert df.set_index(["engine", "clients"]).loc[("stacked", 20), "peak_rss_mb"] == 320.0
    plt.close(fig)
