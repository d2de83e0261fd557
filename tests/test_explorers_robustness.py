"""Notebook 08's library side: liars (fl/liars.py), the robustness plots' tables and the run explorer.

* the liar hook changes only what a liar sends, of the attacked kind, as documented;
* ``honest_outcome`` against a hand-counted table; a cached liar run is read back, and refuses a checkpoint;
* ``robustness_sweep`` takes each run along the one knob it moved; ``plot_liars`` draws its table;
* the run explorer: picking a run redraws its rejections per round, which add up to the run's own counts.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fedmoe_da import simulate, viz
from fedmoe_da.config import ConfigError, ExperimentConfig
from fedmoe_da.explorers.robustness import run_explorer
from fedmoe_da.fl.liars import ATTACKS, honest_outcome, liar_hook, simulate_with_liars
from fedmoe_da.fl.summary import SimulationResult

LIAR = 0


def smoke(**changes) -> ExperimentConfig:
    return ExperimentConfig(progress=False, backend="torch", seed=0, rounds=3).smoke().replace(rounds=3, **changes)


@pytest.fixture(scope="module")
def runs():
    base = smoke()
    return {"honest": simulate(base.replace(label="honest")),
            "dropout=0.5": simulate(base.replace(label="dropout=0.5", dropout=0.5)),
            "participation=0.5": simulate(base.replace(label="participation=0.5", participation=0.5)),
            "screen": simulate_with_liars(base.replace(p2p_screen=2.0, upload_screen=2.0), {LIAR}, "noise_experts")}


# --------------------------------------------------------------------------- the liar hook
def test_liar_hook_changes_only_what_a_liar_sends_of_the_attacked_kind():
    payload = {"w": torch.ones(3, 2), "b": torch.full((2,), 0.5)}
    scaled = liar_hook({1}, "scaled_experts")
    assert scaled(0, 1, "expert[0][2]", payload) is payload                     # an honest sender
    assert scaled(1, 0, "backbone", payload) is payload                         # not an expert
    out = scaled(1, 0, "expert[0][2]", payload)
    assert all(torch.equal(out[n], 100 * payload[n]) for n in payload)
    noise = liar_hook({1}, "noise_backbone", seed=3)
    assert noise(1, -1, "expert[0][0]", payload) is payload
    got = noise(1, -1, "backbone", payload)
    assert {n: t.shape for n, t in got.items()} == {n: t.shape for n, t in payload.items()}
    assert 100 < float(torch.cat([t.reshape(-1) for t in got.values()]).std()) < 10_000   # std 1000 noise
    again = liar_hook({1}, "noise_backbone", seed=3)(1, -1, "backbone", payload)
    assert all(torch.equal(got[n], again[n]) for n in got), "the noise is seeded"


def test_liar_hook_and_run_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="attack='lies' is invalid: must be one of noise_experts"):
        liar_hook({0}, "lies")
    with pytest.raises(ValueError, match="client 7 is not one of 0..3"):
        simulate_with_liars(smoke(), {7}, ATTACKS[0])
    with pytest.raises(ConfigError, match="checkpoint_every=1 is invalid for a run with liars: must be 0"):
        simulate_with_liars(smoke(out=str(tmp_path / "r")), {0}, ATTACKS[0])


# --------------------------------------------------------------------------- what the liars cost
def test_honest_outcome_counts_by_hand():
    history = pd.DataFrame({"round": [1, 1, 1, 2, 2, 2], "client": [0, 1, 2] * 2,
                            "personalised_accuracy": [0.9, 0.1, 0.2, 0.0, 0.5, 0.7]})
    rejections = pd.DataFrame({"round": [1, 1, 2, 2, 2], "src": [0, 0, 1, 0, 2], "dst": [1, -1, 2, 2, 2],
                               "channel": ["p2p", "server-up", "p2p", "dropout", "local"],
                               "group": ["expert[0][1]", "backbone", "expert[0][0]", "all", "all"],
                               "reason": ["r"] * 5})
    result = SimulationResult(ExperimentConfig(), history, pd.DataFrame(), rejections)
    out = honest_outcome(result, {0})
    assert out == {"honest_acc": pytest.approx(0.6), "rejected_from_liars": 2, "rejected_from_honest": 1}


def test_a_screened_liar_run_rejects_only_lies_and_is_read_back_from_its_folder(runs, tmp_path):
    screened = runs["screen"]
    assert screened.config.label == "fedmoe_da, liars 0 send noise_experts"
    out = honest_outcome(screened, {LIAR})
    assert out["rejected_from_liars"] > 0 and out["rejected_from_honest"] == 0
    assert (screened.rejections["channel"] == "p2p").all()
    cfg = smoke(p2p_screen=2.0, upload_screen=2.0, out=str(tmp_path / "liar"), checkpoint_every=0)
    first = simulate_with_liars(cfg, {LIAR}, "noise_experts")
    pd.testing.assert_frame_equal(first.rejections, screened.rejections)
    written = (tmp_path / "liar" / "summary.json").stat().st_mtime_ns
    again = simulate_with_liars(cfg, {LIAR}, "noise_experts")                 # read back, not rerun
    assert (tmp_path / "liar" / "summary.json").stat().st_mtime_ns == written
    pd.testing.assert_frame_equal(again.history, first.history)
    honest_cfg = cfg.replace(label=None)
    assert simulate_with_liars(honest_cfg.replace(out=None), set(), "none").rejections.empty


# --------------------------------------------------------------------------- the robustness plots' tables
def test_robustness_sweep_takes_each_run_along_the_knob_it_moved(runs):
    honest = [r for name, r in runs.items() if name != "screen"]
    fig, axes, df = viz.plot_robustness_sweep(honest)
    assert len(axes) == 2
    along = {f: list(df.loc[df["field"] == f, "value"]) for f in ("dropout", "participation")}
    assert along == {"dropout": [0.0, 0.5], "participation": [0.5, 1.0]}    # the honest run is on both
    df = viz.robustness_sweep(list(runs.values()))
    liar = df[df["run"].str.contains("liars")]
    assert list(liar["field"]) == ["dropout", "participation"], "the liar run has the default dropout, participation"
    for r in runs.values():
        rows = df[df["run"] == r.config.label]
        assert (rows["strategy"] == "fedmoe_da").all()
        s = r.summary
        assert (rows["answered"] == s["local_updates"] - s["dropouts"] - s["discarded_updates"]).all()
        assert (rows["final_acc"] == s["final_acc_mean"]).all()
    dropped = df[(df["field"] == "dropout") & (df["value"] == 0.5)]
    assert int(dropped["answered"].iloc[0]) < int(dropped["local_updates"].iloc[0]), "some dropped (seed 0)"


def test_plot_liars_draws_its_table():
    table = pd.DataFrame({"attack": ["none", "noise_experts", "noise_experts", "noise_backbone"],
                          "defence": ["off", "off", "screen", "off"], "honest_acc": [0.8, 0.3, 0.79, 0.1],
                          "rejected_from_liars": [0, 0, 12, 0], "rejected_from_honest": [0, 0, 0, 0]})
    fig, ax, df = viz.plot_liars(table)
    pd.testing.assert_frame_equal(df, table)
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == [0.1, 0.3, 0.79], "one bar per (attack, defence) that ran, the honest run as a line"


# --------------------------------------------------------------------------- the run explorer
def test_run_explorer_redraws_the_chosen_runs_rejections(runs):
    ex = run_explorer(runs, baseline="honest")
    assert ex.state == {"run": "dropout=0.5"}, "starts on the first run that is not the baseline"
    df = ex.last[2]
    assert df["dropout"].sum() == runs["dropout=0.5"].summary["dropouts"] > 0
    honest_mean = runs["honest"].history.groupby("round")["personalised_accuracy"].mean().to_numpy()
    np.testing.assert_allclose(df["baseline_accuracy"], honest_mean)

    ex.controls["run"].value = "screen"
    df = ex.last[2]
    assert ex.state == {"run": "screen"} and "dropout" not in df.columns
    assert df["p2p"].sum() == len(runs["screen"].rejections) > 0
    ex.controls["run"].value = "honest"
    df = ex.last[2]
    assert list(df.columns) == ["round", "accuracy", "baseline_accuracy"], "an honest run rejects nothing"
    assert ex.draws == 3


def test_run_explorer_rejects_bad_input(runs):
    with pytest.raises(ValueError, match="baseline='nope' is invalid: must be one of 'honest'"):
        run_explorer(runs, baseline="nope")
    with pytest.raises(ValueError, match="runs is empty"):
        run_explorer({})
    assert not math.isnan(run_explorer({"honest": runs["honest"]}).last[2]["accuracy"].iloc[0])
