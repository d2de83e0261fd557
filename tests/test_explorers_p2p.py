"""The P2P explorer and plots (notebook 05) against the ledger they read, on one tiny FedMoE-DA run."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmoe_da import ExperimentConfig, simulate, viz
from fedmoe_da.explorers.p2p import p2p_explorer


@pytest.fixture(scope="module")
def run():
    return simulate(ExperimentConfig(progress=False).smoke().replace(rounds=3))


def p2p_rows(ledger: pd.DataFrame, round: int | None) -> pd.DataFrame:
    """The reference: the ledger's accepted p2p rows of ``round`` (all rounds if None), by a plain filter."""
    rows = ledger[(ledger["channel"] == "p2p") & ledger["accepted"].astype(bool)]
    return rows if round is None else rows[rows["round"] == round]


def test_the_slider_draws_only_that_rounds_edges_with_the_ledgers_bytes(run):
    ex = p2p_explorer(run)
    assert ex.state == {"round": 3}                               # starts at the last round
    for rnd in (1, 2, 3):
        ex.controls["round"].value = rnd
        edges, ref = ex.last[2], p2p_rows(run.ledger, rnd)
        assert ex.state == {"round": rnd}
        assert len(ref) > 0
        assert set(zip(edges["src"], edges["dst"])) == set(zip(ref["src"], ref["dst"]))
        assert edges["bytes"].sum() == ref["bytes"].sum()
        for (src, dst), part in ref.groupby(["src", "dst"]):      # one edge per pair: bytes and fetches summed
            row = edges[(edges["src"] == src) & (edges["dst"] == dst)]
            assert len(row) == 1 and row["bytes"].item() == part["bytes"].sum() and row["experts"].item() == len(part)


def test_edges_carry_the_home_domains_of_both_ends(run):
    _, _, edges = viz.plot_p2p_graph(run.ledger, 2, clients=run.clients)
    home = dict(zip(run.clients["client"], run.clients["home_domain_name"]))
    assert list(edges["src_domain"]) == [home[s] for s in edges["src"]]
    assert list(edges["dst_domain"]) == [home[d] for d in edges["dst"]]


def test_without_clients_the_old_call_still_works(run):
    _, _, edges = viz.plot_p2p_graph(run.ledger, 1)
    assert list(edges.columns) == ["src", "dst", "bytes", "experts"]
    assert edges["bytes"].sum() == p2p_rows(run.ledger, 1)["bytes"].sum()


def test_all_rounds_sum_every_round(run):
    _, _, edges = viz.plot_p2p_graph(run.ledger, None, clients=run.clients)
    assert edges["bytes"].sum() == p2p_rows(run.ledger, None)["bytes"].sum() == run.summary["p2p_bytes"]


def test_domain_layout_keeps_each_domain_together():
    clients = pd.DataFrame({"client": range(12), "home_domain": [k % 3 for k in range(12)]})
    pos = viz.domain_layout(clients)
    assert sorted(pos) == list(range(12))
    centre = {d: np.mean([pos[c] for c in range(12) if c % 3 == d], axis=0) for d in range(3)}
    for c, xy in pos.items():                                     # every client is nearest its own domain's centre
        nearest = min(centre, key=lambda d: np.linalg.norm(xy - centre[d]))
        assert nearest == c % 3


def test_the_matrix_holds_every_pair_and_the_runs_p2p_bytes(run):
    _, _, pairs = viz.plot_p2p_matrix(run.ledger, run.clients)
    n = len(run.clients)
    assert len(pairs) == n * n
    assert pairs["MB"].sum() * 1e6 == pytest.approx(run.summary["p2p_bytes"])
    assert (pairs.loc[pairs["src"] == pairs["dst"], "MB"] == 0).all()    # own experts cost nothing


def test_a_run_without_rounds_is_refused(run):
    empty = type(run)(config=run.config, history=run.history.iloc[:0], ledger=run.ledger.iloc[:0],
                      rejections=run.rejections, clients=run.clients)
    with pytest.raises(ValueError, match="no rounds"):
        p2p_explorer(empty)
