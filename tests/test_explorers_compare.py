"""The comparison explorer and plots (notebook 06) against the runs they read: tiny one-round runs, two seeds."""
from __future__ import annotations

import pandas as pd
import pytest

from fedmoe_da import ExperimentConfig, simulate, viz
from fedmoe_da.explorers.compare import VIEWS, compare_explorer, plot_view


@pytest.fixture(scope="module")
def runs():
    base = ExperimentConfig(progress=False).smoke().replace(num_clients=3, max_samples=300, rounds=1)
    return [simulate(base.replace(strategy=s, seed=seed)) for seed in (0, 1) for s in ("fedmoe_da", "fedavg")] + \
        [simulate(base.replace(strategy="fedper"))]


def test_the_explorer_draws_only_the_chosen_strategies_in_every_view(runs):
    ex = compare_explorer(runs)
    assert set(ex.last[2]["strategy"]) == {"fedmoe_da", "fedavg", "fedper"}       # all chosen at first
    for chosen in (("fedavg",), ("fedmoe_da", "fedper")):
        ex.controls["strategies"].value = chosen
        for view in VIEWS:
            ex.controls["view"].value = view
            assert ex.state == {"strategies": chosen, "view": view}
            assert set(ex.last[2]["strategy"]) == set(chosen), view


def test_no_strategy_chosen_draws_an_empty_frame(runs):
    ex = compare_explorer(runs)
    ex.controls["strategies"].value = ()
    assert ex.last[2].empty


def test_bad_choices_are_refused(runs):
    with pytest.raises(ValueError, match="view"):
        plot_view(runs, ("fedavg",), "nonsense")
    with pytest.raises(ValueError, match="no run"):
        plot_view(runs, ("fedprox",), next(iter(VIEWS)))


def test_channel_bytes_are_the_summaries_mean_over_seeds(runs):
    df = viz.channel_bytes(runs).set_index(["strategy", "channel"])["MB"]
    for strategy in ("fedmoe_da", "fedavg"):
        mine = [r for r in runs if r.config.strategy == strategy]
        assert len(mine) == 2
        for channel, key in (("server-up", "server_up_bytes"), ("server-down", "server_down_bytes"),
                             ("p2p", "p2p_bytes")):
            assert df[(strategy, channel)] == pytest.approx(sum(r.summary[key] for r in mine) / 2 / 1e6)
    assert df[("fedavg", "p2p")] == 0 and df[("fedmoe_da", "p2p")] > 0


def test_accuracy_curves_are_the_mean_over_clients_then_seeds(runs):
    _, _, df = viz.plot_accuracy_curves(runs)
    mine = [r.history for r in runs if r.config.strategy == "fedavg"]
    ref = pd.concat([h.groupby("round")["personalised_accuracy"].mean() for h in mine], axis=1).mean(axis=1)
    got = df[df["strategy"] == "fedavg"].set_index("round")["mean"]
    pd.testing.assert_series_equal(got, ref, check_names=False)


def test_client_accuracy_ranks_from_the_worst(runs):
    _, _, df = viz.plot_client_accuracy(runs)
    assert len(df) == sum(len(r.clients) for r in runs)
    for strategy, part in df.groupby("strategy"):
        part = part.sort_values("rank")
        assert list(part["rank"]) == list(range(len(part)))
        assert part["accuracy"].is_monotonic_increasing
    last = runs[0].history[runs[0].history["round"] == runs[0].history["round"].max()]
    got = df[(df["strategy"] == "fedmoe_da") & (df["seed"] == 0)].set_index("client")["accuracy"]
    assert got.to_dict() == pytest.approx(last.set_index("client")["personalised_accuracy"].to_dict())
