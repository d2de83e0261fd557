"""The paper figures: the registry, the figures command, and what is committed in paper_figures/.

(a) ``python -m fedmoe_da.figures --smoke`` (the same run whose executed
    notebooks test_notebooks checks, see smoke_runs) writes every registered
    figure: png, pdf, a finite csv and a json naming it, with the wall time;
(b) every registered figure is committed in paper_figures/ (png, pdf, csv,
    json), its csv finite and unchanged since the run wrote it (its sha256 in
    the json), the README generated from the registry, no stray files;
(c) the figures cheap enough for CI (CHEAP) are redrawn at full size into a
    scratch folder and compared with the committed csvs.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import smoke_runs

from fedmoe_da import figures, notebooks
from fedmoe_da.figures import FIGURES, PAPER_FIGURES, Figure, figure_files

# the notebooks start Jupyter kernels: make test runs these tests in one process, apart from its xdist workers
# (kernels started at once from several processes can draw the same port: fedmoe_da/figures.py)
pytestmark = pytest.mark.kernels

IDS = [f.id for f in FIGURES]

# (c) Figures redrawn at full size in CI, with the tolerance (rtol, atol) of their numeric columns. Chosen because
# their notebook's full run takes well under a minute and trains nothing: 02 deals the seeded partition (numpy
# SeedSequence streams and scikit-learn's seeded split, the same on every platform) and picks sample images by
# index, so its csvs hold integers and labels;
# 09 plots the committed CPU measurements (benchmarks/results/moe_cpu_sweep.csv), rounded to the csv's 6 significant
# digits, which re-rounding leaves unchanged. So the data must come out identical: (0, 0). A figure whose
# committed data no longer matches fails; a looser tolerance would be needed only for floats computed by training.
CHEAP: dict[str, tuple[float, float]] = {
    "fig02_domain_samples": (0.0, 0.0),
    "fig02_partition": (0.0, 0.0),
    "fig09_dispatch_timings": (0.0, 0.0),
}


def assert_finite_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    assert len(df) and len(df.columns), f"{path.name} is empty"
    numeric = df.select_dtypes("number")
    bad = [c for c in numeric if not np.isfinite(numeric[c].to_numpy(dtype=float)).all()]
    assert not bad, f"{path.name}: non-finite values in columns {bad}"
    return df


def assert_same_data(new: Path, committed: Path, rtol: float, atol: float) -> None:
    """Same columns and rows; numeric columns within (rtol, atol), the others equal as text."""
    a, b = pd.read_csv(new), pd.read_csv(committed)
    assert list(a.columns) == list(b.columns), f"{committed.name}: columns {list(a.columns)} != {list(b.columns)}"
    assert a.shape == b.shape, f"{committed.name}: shape {a.shape} != committed {b.shape}"
    for col in a.columns:
        if pd.api.types.is_numeric_dtype(a[col]) and pd.api.types.is_numeric_dtype(b[col]):
            np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=rtol, atol=atol,
                                       err_msg=f"{committed.name}, column {col}")
        else:
            assert (a[col].astype(str) == b[col].astype(str)).all(), f"{committed.name}: column {col} differs"


# ---- the registry ----------------------------------------------------------------------------------------------

def test_registry_is_well_formed():
    assert FIGURES, "no figure registered in fedmoe_da.figures.FIGURES"
    assert len(set(IDS)) == len(IDS), "duplicate figure ids"
    for f in FIGURES:
        assert re.fullmatch(rf"fig{f.notebook[:2]}_[a-z0-9_]+", f.id), f"{f.id}: want fig{f.notebook[:2]}_<name>"
        assert f.claim.strip() and f.shows.strip(), f"{f.id}: claim and shows must say something"
        assert f'"{f.id}"' in notebooks.source(f.notebook).read_text(), f"notebooks/{f.notebook}.py never saves {f.id}"
    # every name passed to papermill is a parameter of its notebook, and a notebook's figures agree on them
    for smoke in (True, False):   # make figures also sets RUNS_DIR
        figures.notebook_runs(FIGURES, smoke, PAPER_FIGURES, runs_dir=PAPER_FIGURES.parent / "build" / "runs")


def test_save_figure_writes_four_files_and_refuses_unregistered_ids(tmp_path, monkeypatch):
    fig, ax = plt.subplots()
    df = pd.DataFrame({"x": [1, 2], "y": [0.123456789, 2.0]})
    with pytest.raises(ValueError, match="unknown figure id fig99_nowhere"):
        figures.save_figure(fig, df, "fig99_nowhere", tmp_path)
    assert not list(tmp_path.iterdir()), "an unregistered figure wrote files"
    monkeypatch.setattr(figures, "FIGURES", (Figure("fig99_nowhere", "99_none", "c", "s"),))
    assert figures.save_figure(fig, df, "fig99_nowhere", None) is None
    figures.save_figure(fig, df, "fig99_nowhere", tmp_path, params={"n": 2}, seeds=[3])
    plt.close(fig)
    assert all(p.stat().st_size for p in figure_files("fig99_nowhere", tmp_path))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "fig99_nowhere.csv"), df.assign(y=[0.123457, 2.0]))
    meta = json.loads((tmp_path / "fig99_nowhere.json").read_text())
    assert (meta["figure"], meta["notebook"], meta["parameters"], meta["seeds"]) == ("fig99_nowhere", "99_none",
                                                                                      {"n": 2}, [3])


def test_readme_lists_each_figure_with_its_claim_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "FIGURES", (Figure("fig98_a", "98_x", "claim A", "shows A"),
                                             Figure("fig99_b", "99_y", "claim B", "shows B", params={"ROUNDS": 5})))
    (tmp_path / "fig99_b.json").write_text(json.dumps({"figure": "fig99_b", "notebook_wall_s": 12.3}))
    text = figures.readme(tmp_path)
    a, b = text.index("## fig98_a"), text.index("## fig99_b")
    assert a < b and '<img src="fig98_a.png"' in text[a:b] and "claim A" in text[a:b] and "shows A" in text[a:b]
    assert f"`{figures.COMMAND} --only fig98_a`" in text[a:b] and "last time" not in text[a:b]
    assert f"`{figures.COMMAND} --only fig99_b`" in text[b:] and "ROUNDS=5, 12 s for the whole notebook" in text[b:]


# ---- the command ----------------------------------------------------------------------------------------------

def test_readme_only_rewrites_the_readme(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "FIGURES", (Figure("fig99_b", "99_y", "claim B", "shows B"),
                                             Figure("fig98_a", "98_x", "claim A", "shows A")))
    assert figures.main(["--readme", "--out", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]
    text = (tmp_path / "README.md").read_text()
    assert text == figures.readme(tmp_path) and text.index("## fig98_a") < text.index("## fig99_b")


def test_bad_arguments_are_one_line_errors_before_anything_runs(tmp_path, capsys):
    cases = [(["--only", "fig00_nope"], "unknown figure id fig00_nope; registered"),
             (["--smoke", "--out", str(PAPER_FIGURES / "sub")], "--smoke does not write into paper_figures/"),
             (["--smoke", "--jobs", "0", "--out", str(tmp_path)], "--jobs '0' is invalid: must be an integer >= 1"),
             (["--jobs", "2", "--out", str(tmp_path)], "--jobs 2 needs --smoke")]
    for argv, message in cases:
        assert figures.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (PAPER_FIGURES / "sub").exists() and not list(tmp_path.iterdir())


def test_list_prints_each_figure_from_the_registry():
    proc = subprocess.run([sys.executable, "-m", "fedmoe_da.figures", "--list"], capture_output=True, text=True,
                          timeout=120, env=smoke_runs.ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{f.id}\t{f.notebook}\t{f.claim}" for f in figures.select()]
    assert sorted(proc.stdout.splitlines()) == sorted(f"{f.id}\t{f.notebook}\t{f.claim}" for f in FIGURES)


SCRATCH_NOTEBOOK = """# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
SMOKE = False
FIG_DIR = None

# %%
{body}
"""


def test_a_notebook_that_fails_or_skips_its_figure_is_named(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "97_forgets.py").write_text(SCRATCH_NOTEBOOK.format(body="x = 1  # draws nothing"))
    (nbs / "98_breaks.py").write_text(SCRATCH_NOTEBOOK.format(body="raise RuntimeError('broken on purpose')"))
    monkeypatch.setattr(notebooks, "NOTEBOOK_DIR", nbs)
    monkeypatch.setattr(figures, "FIGURES", (Figure("fig97_a", "97_forgets", "c", "s"),
                                             Figure("fig98_b", "98_breaks", "c", "s")))
    failures = figures.generate(figures.FIGURES, True, tmp_path / "out", tmp_path / "executed", jobs=2)
    assert failures[0] == (f"97_forgets: ran, but did not write fig97_a.png, fig97_a.pdf, fig97_a.csv, fig97_a.json "
                           f"into {tmp_path / 'out'}")
    assert failures[1].startswith("98_breaks: failed (") and "broken on purpose" in failures[1], failures[1]
    assert (tmp_path / "executed" / "98_breaks.ipynb").is_file()


# ---- (a) figures --smoke ----------------------------------------------------------------------------------------

def test_figures_smoke_writes_every_registered_figure():
    smoke = smoke_runs.figures_smoke(tuple(smoke_runs.DRAWS_FIGURES))
    assert smoke.run.returncode == 0, smoke.run.failure()
    for f in FIGURES:
        missing = [p.name for p in figure_files(f.id, smoke.out) if not p.is_file()]
        assert not missing, f"figures --smoke did not write {missing}"
        assert_finite_csv(smoke.out / f"{f.id}.csv")
        meta = json.loads((smoke.out / f"{f.id}.json").read_text())
        assert (meta["figure"], meta["notebook"], meta["smoke"]) == (f.id, f.notebook, True)
        assert meta["notebook_wall_s"] > 0 and meta["csv_sha256"] == figures.csv_sha256(smoke.out / f"{f.id}.csv")
    assert not (smoke.out / "README.md").exists(), "a smoke run wrote a README"


# ---- (b) the committed figures ----------------------------------------------------------------------------------

def test_paper_figures_are_committed():
    assert PAPER_FIGURES.is_dir(), "no paper_figures/: run `make figures` and commit paper_figures/"


@pytest.mark.parametrize("fig", FIGURES, ids=IDS)
def test_committed_figure(fig: Figure):
    missing = [p.name for p in figure_files(fig.id, PAPER_FIGURES) if not p.is_file()]
    assert not missing, f"paper_figures/ lacks {missing}: run `make figures` and commit paper_figures/"
    assert_finite_csv(PAPER_FIGURES / f"{fig.id}.csv")
    meta = json.loads((PAPER_FIGURES / f"{fig.id}.json").read_text())
    assert (meta["figure"], meta["notebook"]) == (fig.id, fig.notebook)
    assert meta["smoke"] is False, f"{fig.id} was drawn in smoke mode"
    drawn_with = {k: v for k, v in meta["papermill_parameters"].items() if k != "RUNS_DIR"}
    assert drawn_with == {"SMOKE": False, **fig.params}, f"{fig.id} was drawn with other parameters than registered"
    assert meta["csv_sha256"] == figures.csv_sha256(PAPER_FIGURES / f"{fig.id}.csv"), \
        f"{fig.id}.csv is not the file the run wrote: redraw it (`{figures.COMMAND} --only {fig.id}`), never edit it"


def test_committed_readme_is_generated_from_the_registry():
    assert (PAPER_FIGURES / "README.md").is_file(), "no paper_figures/README.md: run `make figures`"
    committed = (PAPER_FIGURES / "README.md").read_text()
    assert committed == figures.readme(PAPER_FIGURES), "paper_figures/README.md is stale: run `make figures`"


def test_no_stray_files_in_paper_figures():
    if not PAPER_FIGURES.is_dir():
        pytest.skip("no paper_figures/ (test_paper_figures_are_committed fails)")
    known = {"README.md"} | {p.name for f in FIGURES for p in figure_files(f.id, PAPER_FIGURES)}
    stray = sorted(p.name for p in PAPER_FIGURES.iterdir() if p.name not in known)
    assert not stray, f"files of no registered figure in paper_figures/: {stray}"


# ---- (c) cheap figures redrawn at full size ---------------------------------------------------------------------

def test_cheap_figures_are_registered():
    assert CHEAP, "no figure is redrawn at full size in CI"
    assert set(CHEAP) <= set(IDS), f"unregistered ids in CHEAP: {set(CHEAP) - set(IDS)}"
    cheap_notebooks = {f.notebook for f in FIGURES if f.id in CHEAP}
    uncovered = [f.id for f in FIGURES if f.notebook in cheap_notebooks and f.id not in CHEAP]
    assert not uncovered, f"redrawn anyway (same notebook) but not compared: add them to CHEAP: {uncovered}"


def test_cheap_figures_regenerate_at_full_size(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedmoe_da.figures", "--only", *CHEAP, "--out", str(tmp_path / "out"),
                           "--executed", str(tmp_path / "executed")],
                          cwd=smoke_runs.ROOT, env=smoke_runs.ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for fig_id, (rtol, atol) in CHEAP.items():
        assert_same_data(tmp_path / "out" / f"{fig_id}.csv", PAPER_FIGURES / f"{fig_id}.csv", rtol, atol)
