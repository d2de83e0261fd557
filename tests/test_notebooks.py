"""Every notebook runs headless in smoke mode through papermill, then nbval (lax) re-runs that output.

How each notebook is executed (once by papermill, once by nbval) is in
``smoke_runs``: the notebooks that draw paper figures run inside
``python -m fedmoe_da.figures --smoke`` (test_figures checks the figures of
that same run); the others, and the README's notebook in any case, run through
the README's two notebook commands, read from the README itself.
"""
from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest
import smoke_runs
from smoke_runs import NOTEBOOKS

# the notebooks start Jupyter kernels: make test runs these tests in one process, apart from its xdist workers
# (kernels started at once from several processes can draw the same port: fedmoe_da/figures.py)
pytestmark = pytest.mark.kernels


@pytest.fixture(scope="module")
def checks(request) -> dict[str, smoke_runs.NotebookCheck]:
    """The smoke runs of the notebooks selected in this session, all started at once (they run JOBS at a time)."""
    selected = sorted({item.callspec.params["source"].stem for item in request.session.items
                       if getattr(item, "originalname", None) == "test_notebook_smoke"})
    return smoke_runs.notebook_checks(tuple(selected))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.py found"
    assert smoke_runs.README_NOTEBOOK in [p.stem for p in NOTEBOOKS], "the README's notebook is missing"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_header(source: Path):
    nb = jupytext.read(source)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{len(tagged)} cells tagged 'parameters', want exactly one"
    assert "SMOKE" in tagged[0].source, "the parameters cell has no SMOKE flag"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", "the jupytext header names no kernelspec"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_smoke(source: Path, checks: dict[str, smoke_runs.NotebookCheck]):
    check = checks[source.stem]
    assert not check.failures, "\n".join(check.failures)
    for path in check.executed:
        executed = nbformat.read(path, as_version=4)
        assert executed.metadata["papermill"]["parameters"]["SMOKE"] is True
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.output_type == "error"]
        assert not errors, f"{path}: {errors[0]['ename']}: {errors[0]['evalue']}"
    assert len(check.nbval) == len(check.executed)
    for run in check.nbval:   # nbval (lax): re-executes the papermill output, fails on any error
        assert run.returncode == 0, run.failure()
