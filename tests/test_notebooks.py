"""Every notebook runs headless in smoke mode exactly as the README shows, then nbval (lax) re-runs it.

The README's notebook commands (``jupytext --to ipynb ...`` then
``papermill ... -p SMOKE True``) are read from the README itself and run in a
scratch copy of the repository's notebooks, with this venv's scripts first on
PATH; the commands are applied to every notebook, not only the one the README
names.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
       "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def readme_notebook_commands() -> list[str]:
    """The jupytext and papermill lines of the README, in order."""
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "README.md").read_text().splitlines()]
    cmds = [ln for ln in lines if re.match(r"^(jupytext --to ipynb|papermill) ", ln)]
    assert len(cmds) == 2, f"the README should show one jupytext and one papermill command, found {cmds}"
    return cmds


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.py found"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_smoke_as_the_readme_runs_it(source: Path, tmp_path: Path):
    nb = jupytext.read(source)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), "no cell tagged 'parameters'"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", "the jupytext header names no kernelspec"
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns("*.ipynb"))
    (tmp_path / "runs").mkdir()
    readme_stem = "01_quickstart"
    for cmd in readme_notebook_commands():
        argv = [a.replace(readme_stem, source.stem) for a in shlex.split(cmd)]
        proc = subprocess.run(argv, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    out = next(tmp_path.glob(f"runs/{source.stem}*.ipynb"))
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # nbval (lax): re-executes the papermill output (SMOKE=True injected) and fails on any error
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           str(out)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
