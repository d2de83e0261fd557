"""Notebook 09's library side: the dispatch explorer, what the ops move, a backend against the reference,
and the timing plot's table.

* the explorer's df is a permutation of the T*k assignments into expert order, whatever the sliders say;
* ``moved`` counts bytes as numel x element size of the tensors named in the docstring's shapes;
* ``compare_ops`` gives zero for the reference against itself and catches a combine that is 0.1% off;
* ``plot_dispatch_timings`` draws the benchmark's rows, one per (shape, backend, tokens).
"""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from fedmoe_da import viz
from fedmoe_da.explorers.kernel import compare_ops, dispatch_explorer, moved, routing
from fedmoe_da.moe.reference import TORCH_OPS


def check_permutation(df: pd.DataFrame, T: int, E: int, k: int) -> None:
    """Every assignment gets one row, rows grouped by expert in flat-assignment order (a stable sort)."""
    assert len(df) == T * k
    assert sorted(df["row"]) == list(range(T * k))
    by_row = df.sort_values("row")
    assert list(by_row["expert"]) == sorted(by_row["expert"]), "rows are grouped by expert"
    for _, part in by_row.groupby("expert"):
        assert list(part["assignment"]) == sorted(part["assignment"]), "stable inside an expert"
    assert list(df["token"]) == [a // k for a in df["assignment"]]
    assert df["expert"].between(0, E - 1).all()
    assert (df.groupby("token")["expert"].nunique() == k).all(), "k distinct experts per token"


def test_dispatch_explorer_redraws_a_permutation_for_every_setting():
    ex = dispatch_explorer(T=8, E=4, k=2)
    check_permutation(ex.last[2], 8, 4, 2)
    ex.controls["T"].value = 13
    check_permutation(ex.last[2], 13, 4, 2)
    ex.controls["k"].value = 3
    check_permutation(ex.last[2], 13, 4, 3)
    ex.controls["E"].value = 2                                   # below k: k is capped at E first
    assert ex.state == {"T": 13, "E": 2, "k": 2, "seed": 0} and ex.controls["k"].max == 2
    check_permutation(ex.last[2], 13, 2, 2)
    before = ex.last[2]
    ex.controls["seed"].value = 5
    assert not before["weight"].equals(ex.last[2]["weight"]), "another seed, another routing"


def test_routing_rejects_k_above_E():
    with pytest.raises(ValueError, match="k=3 is invalid: must be between 1 and E=2"):
        routing(4, 2, 3)


def test_moved_counts_the_bytes_of_the_named_tensors():
    T, d, E, k = 6, 5, 3, 2
    df = moved(T, d, E, k).set_index(["op", "direction", "tensor"])
    assert df.loc[("permute", "in", "x"), "bytes"] == T * d * 4
    assert df.loc[("permute", "out", "x_perm"), "bytes"] == T * k * d * 4
    assert df.loc[("combine", "out", "y"), "bytes"] == T * d * 4
    assert df.loc[("routing_index", "out", "token_of"), "bytes"] == T * k * 8
    assert df.loc[("experts (grouped matmul)", "in", "w1"), "shape"] == (E, d, d)
    assert df.loc[("topk_softmax", "out", "weights"), "dtype"] == "float32"


def test_compare_ops_is_zero_for_the_reference_and_catches_a_wrong_combine():
    same = compare_ops(TORCH_OPS, TORCH_OPS, T=9, d=6, E=3, k=2)
    assert same["identical"].all() and (same["max_abs_diff"] == 0).all()
    assert list(same["op"].unique()) == ["topk_softmax", "routing_index", "permute", "combine", "whole dispatch"]

    def off(y_perm, weights, index):
        return 1.001 * TORCH_OPS.combine(y_perm, weights, index)

    wrong = compare_ops(dataclasses.replace(TORCH_OPS, combine=off), TORCH_OPS, T=9, d=6, E=3, k=2).set_index(
        ["op", "output"])
    assert wrong.loc[("combine", "y"), "max_abs_diff"] == pytest.approx(
        1e-3 * wrong.loc[("combine", "y"), "max_abs_reference"], rel=1e-3)
    assert wrong.loc[("whole dispatch", "grad x"), "max_abs_diff"] > 0
    assert wrong.loc[[("routing_index", n) for n in ("counts", "offsets", "token_of", "pos_of")], "identical"].all()


def test_plot_dispatch_timings_draws_the_benchmarks_rows():
    table = pd.DataFrame({"case": ["a", "a", "b", "b"], "backend": ["torch", "dense"] * 2, "tokens": [16, 16, 64, 64],
                          "d_model": 8, "d_hidden": 8, "d_out": 2, "experts": 4, "top_k": 2,
                          "dense_work": [1000, 1000, 4000, 4000], "median_us": [10.0, 5.0, 12.0, 24.0]})
    fig, axes, df = viz.plot_dispatch_timings(table, dense_max_work=2000)
    assert list(df.columns) == ["shape", "backend", "tokens", "dense_work", "median_us"]
    assert list(df["median_us"]) == [10.0, 5.0, 12.0, 24.0] and set(df["shape"]) == {"d=8 h=8 out=2 E=4 k=2"}
    ratio = axes[1].lines[0].get_ydata()
    assert list(ratio) == [2.0, 0.5], "torch time / dense time per tokens"
