"""The partition explorer (notebook 02): its sliders re-deal the smoke dataset, and the df says what it drew."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmoe_da import ExperimentConfig
from fedmoe_da import data as fdata
from fedmoe_da.config import PARTITIONS
from fedmoe_da.explorers.data import partition_explorer, skew


@pytest.fixture(scope="module")
def smoke():
    config = ExperimentConfig(seed=0, progress=False).smoke()
    return config, fdata.build(config)


def table(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """The client x value count table behind the tidy df of one panel."""
    part = df[df["by"] == by]
    return part.pivot(index="client", columns="value", values="samples")


def tv_reference(counts: pd.DataFrame) -> float:
    """Mean total variation distance to the pooled distribution, one client at a time."""
    rows = [r for r in counts.to_numpy(dtype=float) if r.sum() > 0]
    total = np.sum(rows, axis=0)
    pooled = [t / total.sum() for t in total]
    dists = [0.5 * sum(abs(r[c] / r.sum() - pooled[c]) for c in range(len(r))) for r in rows]
    return sum(dists) / len(dists)


def test_skew_matches_a_loop_and_its_extremes():
    rng = np.random.default_rng(0)
    counts = pd.DataFrame(rng.integers(0, 20, size=(7, 5)))
    counts.iloc[3] = 0                                             # a client without samples is skipped
    assert skew(counts) == pytest.approx(tv_reference(counts))
    assert skew(pd.DataFrame([[3, 1, 2]] * 4)) == pytest.approx(0.0)
    assert skew(pd.DataFrame(np.eye(4) * 10)) == pytest.approx(0.75)   # disjoint: 1 - 1/C
    with pytest.raises(ValueError, match="no samples"):
        skew(pd.DataFrame(np.zeros((2, 3))))


def test_larger_alpha_gives_a_less_skewed_label_partition(smoke):
    config, dataset = smoke
    ex = partition_explorer(dataset, config)
    ex.controls["partition"].value = "dirichlet"
    skews = {}
    for alpha in (0.1, 1.0, 100.0):
        ex.controls["alpha"].value = alpha
        assert ex.state["alpha"] == pytest.approx(alpha)
        skews[alpha] = tv_reference(table(ex.last[2], "label"))
    assert skews[0.1] > skews[1.0] > skews[100.0]
    assert skews[100.0] < 0.2 < skews[0.1]


def test_domain_purity_slider(smoke):
    config, dataset = smoke
    ex = partition_explorer(dataset, config)
    ex.controls["partition"].value = "domain"
    ex.controls["purity"].value = 1.0
    domains = table(ex.last[2], "domain")[list(dataset.domains)]                 # (N, D) in domain order
    D = len(dataset.domains)
    for k, row in domains.iterrows():                                             # only the home domain k mod D
        assert row.iloc[k % D] == row.sum() > 0
    ex.controls["purity"].value = ex.controls["purity"].min                       # 1 / D: no domain preference
    assert tv_reference(table(ex.last[2], "domain")) < 0.25


@pytest.mark.parametrize("partition", PARTITIONS)
def test_every_partitioner_deals_every_training_sample_once(smoke, partition):
    config, dataset = smoke
    ex = partition_explorer(dataset, config)
    before = ex.draws
    ex.controls["partition"].value = partition
    assert ex.draws == before + (partition != config.partition)
    df = ex.last[2]
    n = len(dataset.y_train)
    assert table(df, "label").to_numpy().sum() == table(df, "domain").to_numpy().sum() == n
    assert list(table(df, "label").sum(axis=1)) == list(table(df, "domain").sum(axis=1))   # same clients, both panels


def test_shards_slider_redraws_the_shards_partition(smoke):
    config, dataset = smoke
    ex = partition_explorer(dataset, config)
    ex.controls["partition"].value = "shards"
    ex.controls["shards"].value = 1
    one = table(ex.last[2], "label")
    ex.controls["shards"].value = 5
    five = table(ex.last[2], "label")
    assert (one > 0).sum(axis=1).mean() < (five > 0).sum(axis=1).mean()          # more shards, more labels each


def test_an_impossible_partition_is_drawn_as_a_message(smoke):
    config, dataset = smoke
    crowded = config.replace(num_clients=40, min_samples=8, partition="dirichlet")   # 240 samples, 40 clients
    ex = partition_explorer(dataset, crowded)
    ex.controls["alpha"].value = 0.01
    assert ex.last[2].empty and ex.state["alpha"] == pytest.approx(0.01)
    assert "min_samples" in ex.last[1].texts[0].get_text()
