"""The sensitivity sweep and its explorer (notebook 07): points, deduplication, caching, and redraws from the table."""
from __future__ import annotations

import pandas as pd
import pytest

from fedmoe_da import ExperimentConfig, viz
from fedmoe_da.config import ConfigError
from fedmoe_da.explorers.sensitivity import METRICS, sensitivity_explorer, sweep, sweep_points

BASE = ExperimentConfig(progress=False).smoke().replace(num_clients=3, max_samples=300, rounds=2)
GRID = {"P": [0, 3], "sync": ["every_round", "refresh"]}
AT = {"sync": {"I": 2}}


@pytest.fixture(scope="module")
def swept():
    return sweep(BASE, GRID, AT)


def test_points_change_one_knob_and_share_the_base_run():
    points = sweep_points(BASE, {**GRID, "proxy": ["gate", "domain"]}, AT)
    assert points == {("P", 0): "fedmoe_da:P=0", ("P", 3): "fedmoe_da",
                      ("sync", "every_round"): "fedmoe_da:I=2", ("sync", "refresh"): "fedmoe_da:I=2:sync=refresh",
                      ("proxy", "gate"): "fedmoe_da", ("proxy", "domain"): "fedmoe_da:proxy=domain"}


def test_the_table_has_one_row_per_point_and_each_distinct_config_ran_once(swept):
    table, runs = swept
    assert list(zip(table["knob"], table["value"])) == [(k, v) for k, values in GRID.items() for v in values]
    assert len(runs) == len(set(sweep_points(BASE, GRID, AT).values())) == 4
    assert list(table.loc[table["base"], "entry"].unique()) == ["fedmoe_da"]
    assert set(table.loc[table["knob"] == "sync", "fixed"]) == {"I=2"}
    by_label = {r.config.label: r for r in runs}
    for _, row in table.iterrows():                     # each row holds its own run's numbers
        run = by_label[row["entry"]]
        assert getattr(run.config, row["knob"]) == row["value"]
        assert row["final_acc"] == pytest.approx(run.summary["final_acc_mean"])
        assert row["p2p_MB"] == pytest.approx(run.summary["p2p_bytes"] / 1e6)


def test_p2p_traffic_follows_p_and_the_schedule(swept):
    table, _ = swept
    mb = table.set_index(["knob", "value"])["p2p_MB"]
    assert mb[("P", 0)] == 0 and mb[("P", 3)] > 0             # P = 0: A is the identity, nothing is fetched
    assert 0 < mb[("sync", "refresh")] < mb[("sync", "every_round")]   # refresh: P2P at refresh rounds only


def test_the_explorer_redraws_the_chosen_knob_and_metric(swept):
    table, _ = swept
    ex = sensitivity_explorer(table)
    assert ex.state == {"knob": "P", "metric": METRICS[0]}
    for knob in GRID:
        ex.controls["knob"].value = knob
        df = ex.last[2]
        assert set(df["knob"]) == {knob} and list(df["value"]) == GRID[knob]
    ex.controls["metric"].value = "p2p_MB"
    df = ex.last[2]
    ref = table[table["knob"] == ex.state["knob"]]["p2p_MB"].to_numpy()
    assert list(df["p2p_MB"]) == list(ref)


def test_a_second_sweep_reads_the_cached_runs_back(tmp_path):
    base, grid = BASE.replace(out=str(tmp_path / "sens"), rounds=1), {"P": [0, 1]}
    first, _ = sweep(base, grid)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("summary.json")}
    again, _ = sweep(base, grid)
    assert len(stamps) == 2 and stamps == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("summary.json")}
    pd.testing.assert_frame_equal(first, again)


def test_bad_sweeps_and_choices_are_refused(swept):
    table, _ = swept
    with pytest.raises(ConfigError, match="non-empty"):
        sweep_points(BASE, {"P": []})
    with pytest.raises(ConfigError, match="unknown config field"):
        sweep_points(BASE, {"nonsense": [1]})
    with pytest.raises(ConfigError, match="not in the grid"):
        sweep_points(BASE, {"P": [1]}, at={"sync": {"I": 2}})
    with pytest.raises(ValueError, match="metric"):
        viz.plot_sensitivity(table, "nonsense")
    with pytest.raises(ValueError, match="not in the sweep"):
        viz.plot_sensitivity(table, "final_acc", ["tau"])
