"""The reproduction check: accuracies within their band, integer data exact, bad input a one-line error."""
from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest

from fedmoe_da.reproduce import BAND_SE, MIN_SEED_STD, P2P_REL, band, check


def table(**changes) -> pd.DataFrame:
    rows = [{"strategy": "fedmoe_da", "seeds": 3, "final_acc": 0.70, "seed_std": 0.02, "server_MB": 409.7,
             "p2p_MB": 274.713392, "total_MB": 684.413392},
            {"strategy": "fedavg", "seeds": 3, "final_acc": 0.72, "seed_std": 0.001, "server_MB": 595.1,
             "p2p_MB": 0.0, "total_MB": 595.1}]
    for key, value in changes.items():
        name, col = key.split("__")
        next(r for r in rows if r["strategy"] == name)[col] = value
    return pd.DataFrame(rows)


def test_band_is_three_standard_errors_of_a_difference_of_means():
    assert band(0.02, 3) == pytest.approx(3 * 0.02 * math.sqrt(2 / 3))
    assert band(0.0, 3) == band(MIN_SEED_STD, 3)            # never narrower than the floor
    assert BAND_SE == 3.0


def test_the_committed_table_reproduces_itself():
    rows, problems = check(table(), table())
    assert problems == [] and rows["ok"].all()


@pytest.mark.parametrize("shift, ok", [(0.99, True), (1.01, False)])
def test_an_accuracy_is_checked_against_its_band(shift, ok):
    moved = table(fedmoe_da__final_acc=0.70 - shift * band(0.02, 3))
    _, problems = check(table(), moved)
    assert (problems == []) is ok
    if not ok:
        assert problems[0].startswith("fedmoe_da: final_acc moved by -")


def test_a_narrow_seed_std_gets_the_floor():
    _, problems = check(table(), table(fedavg__final_acc=0.72 + 0.9 * band(MIN_SEED_STD, 3)))
    assert problems == []


@pytest.mark.parametrize("col, value", [("server_MB", 409.700001), ("seeds", 2)])
def test_integer_data_must_be_equal(col, value):
    _, problems = check(table(), table(**{f"fedmoe_da__{col}": value}))
    assert len(problems) == 1 and problems[0].startswith(f"fedmoe_da: {col} is ")


@pytest.mark.parametrize("factor, ok", [(1 + 0.99 * P2P_REL, True), (1 - 0.99 * P2P_REL, True),
                                        (1 + 1.01 * P2P_REL, False)])
def test_peer_to_peer_bytes_within_their_relative_band(factor, ok):
    _, problems = check(table(), table(fedmoe_da__p2p_MB=274.713392 * factor))
    assert (problems == []) is ok


def test_strategies_missing_on_either_side_are_named():
    _, problems = check(table(), table().iloc[:1])
    assert problems == ["fedavg: in the committed comparison, not in the rerun"]
    _, problems = check(table().iloc[1:], table())
    assert problems == ["fedmoe_da: in the rerun, not in the committed comparison"]


def test_cli_exit_codes(tmp_path):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    table().to_csv(good, index=False)
    table(fedavg__final_acc=0.5).to_csv(bad, index=False)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "fedmoe_da.reproduce", *map(str, args)],
                              capture_output=True, text=True)

    assert run(good, good).returncode == 0
    out = run(good, bad)
    assert out.returncode == 1 and "fedavg: final_acc moved by -0.220" in out.stderr
    missing = run(good, tmp_path / "nope.csv")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "nope.csv is not a file" in missing.stderr.strip().splitlines()[-1]
    pd.DataFrame({"strategy": ["x"]}).to_csv(bad, index=False)
    wrong = run(good, bad)
    assert wrong.returncode == 2 and "missing column" in wrong.stderr
