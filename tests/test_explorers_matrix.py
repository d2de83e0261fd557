"""The aggregation-matrix explorer (notebook 04): A recomputed on a run's saved gates, sorted by home domain."""
from __future__ import annotations

import numpy as np
import pytest

from fedmoe_da import ExperimentConfig, simulate
from fedmoe_da.explorers.matrix import (
    PROXIES,
    domain_order,
    matrix_explorer,
    purity_sweep,
    recompute,
    refresh_rounds,
    saved_gates,
)
from fedmoe_da.fl.run_folder import matrix_key

# two clients per home domain (smoke sizes otherwise), so that domain purity has something to measure
CONFIG = ExperimentConfig(seed=0, progress=False).smoke().replace(num_clients=8)


@pytest.fixture(scope="module")
def result():
    return simulate(CONFIG)


def home_of_rows(df, result):
    home = result.clients.set_index("client")["home_domain"]
    return [int(home[int(label.split(":")[0])]) for label in df.index]


def test_recompute_gives_the_run_its_own_matrices(result):
    for rnd in refresh_rounds(result):
        A, _ = recompute(result, CONFIG.P, CONFIG.tau, CONFIG.proxy, rnd)
        assert np.array_equal(A.numpy(), result.matrices[matrix_key(rnd, "A[0]")])


def test_rows_have_p_plus_one_nonzeros_after_p_changes(result):
    ex = matrix_explorer(result)
    M = len(ex.last[2])
    assert M == CONFIG.num_clients * CONFIG.num_experts
    for P in (0, 1, 4, 10, M - 1):
        ex.controls["P"].value = P
        A = ex.last[2].to_numpy()
        assert ex.state["P"] == P
        assert ((A > 0).sum(axis=1) == min(P + 1, M)).all()            # gate rows: no ties on real numbers
        assert A.sum(axis=1) == pytest.approx(np.ones(M), abs=1e-5)
        assert ex.last[2].attrs["diagnostics"]["nnz_per_row"] == pytest.approx(min(P + 1, M))


def test_rows_and_columns_are_sorted_by_home_domain(result):
    ex = matrix_explorer(result)
    df = ex.last[2]
    homes = home_of_rows(df, result)
    assert homes == sorted(homes) and list(df.index) == list(df.columns)
    gates, pool = saved_gates(result)
    perm, labels, _ = domain_order(pool, CONFIG.num_experts, result.clients)
    A, _ = recompute(result, ex.state["P"], ex.state["tau"], ex.state["proxy"])
    assert np.array_equal(df.to_numpy(), A.numpy()[np.ix_(perm, perm)])   # a permutation of A, nothing else
    assert sorted(perm) == list(range(len(pool) * CONFIG.num_experts))


def test_smaller_tau_puts_more_weight_on_the_best_correlated(result):
    ex = matrix_explorer(result)
    ex.controls["P"].value = 3
    selves = []
    for tau in (10.0, 0.1, 0.01):
        ex.controls["tau"].value = tau
        selves.append(np.diag(ex.last[2].to_numpy()).mean())            # R_ii = 1 is each row's largest
    assert selves[0] < selves[1] < selves[2]
    assert selves[0] == pytest.approx(1 / 4, abs=0.05)                  # tau large: almost uniform over P + 1


def test_domain_proxy_is_pure_and_keeps_its_ties(result):
    ex = matrix_explorer(result)
    ex.controls["proxy"].value = "domain"
    ex.controls["P"].value = 1
    diag = ex.last[2].attrs["diagnostics"]
    assert diag["domain_purity"] == pytest.approx(1.0)                  # the one peer: same domain, same slot
    assert f"purity {diag['domain_purity']:.2f}" in ex.last[1].get_title()
    ex.controls["P"].value = 2                                          # the next value (0.5) is a tie: all kept
    assert (np.count_nonzero(ex.last[2].to_numpy(), axis=1) > 3).all()


def test_purity_sweep_rows_and_bad_input(result):
    df = purity_sweep(result, [1, 3], [0.1, 1.0])
    assert len(df) == len(PROXIES) * 4 and set(df["proxy"]) == set(PROXIES)
    assert ((df["domain_purity"] >= 0) & (df["domain_purity"] <= 1)).all()
    with pytest.raises(ValueError, match="refreshed at rounds"):
        saved_gates(result, round=99)
    with pytest.raises(ValueError, match="proxy="):
        recompute(result, 1, 0.1, proxy="gate_delta")
