"""CI's smoke executions of the notebooks, each done once per test session and shared by the tests that read them.

Every notebook runs in smoke mode through papermill once, then nbval (lax)
re-executes that papermill output once:

* a notebook that draws a registered figure is run by the real figures command,
  ``python -m fedmoe_da.figures --smoke`` (papermill's Python API): test_figures
  checks its figures, test_notebooks its executed copy;
* the others, and the README's notebook (01_quickstart) in any case, run
  through the README's own two commands (``jupytext --to ipynb`` then the
  ``papermill`` CLI) in a scratch copy of notebooks/.

nbval re-executes each papermill output with FIG_DIR set to None in the
injected cell (so it cannot overwrite the figures being checked). ``JOBS``
notebooks run at once: the figures command's ``--jobs``, and as many nbval or
README runs side by side.
"""
from __future__ import annotations

import atexit
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
from papermill.parameterize import parameterize_notebook

from fedmoe_da.figures import COMMAND, FIGURES

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))
README_NOTEBOOK = "01_quickstart"                      # the notebook the README's commands name
DRAWS_FIGURES = sorted({f.notebook for f in FIGURES})   # run by figures --smoke
JOBS = max(1, min(2, os.cpu_count() or 1))              # CI has 2 cores
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
       "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
SCRATCH = Path(tempfile.mkdtemp(prefix="fedmoe-smoke-"))   # one per session, removed at exit
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


@dataclass
class Run:
    """One subprocess: its command, exit status, output tail and wall seconds."""
    argv: list[str]
    returncode: int
    output: str
    seconds: float

    def failure(self) -> str:
        return f"{shlex.join(self.argv)} exited {self.returncode} after {self.seconds:.0f} s\n{self.output[-4000:]}"


def run(argv: list[str], cwd: Path, timeout: float = 900) -> Run:
    """Run a command with the test environment; a timeout is a failed Run (exit 124) with the output so far."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        partial = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x
                          for x in (exc.stdout, exc.stderr) if x)
        return Run(argv, 124, f"{partial}\n[killed after {timeout:.0f} s]", time.perf_counter() - start)
    return Run(argv, proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start)


def readme_notebook_commands() -> list[str]:
    """The jupytext and papermill lines of the README, in order."""
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "README.md").read_text().splitlines()]
    cmds = [ln for ln in lines if re.match(r"^(jupytext --to ipynb|papermill) ", ln)]
    assert len(cmds) == 2, f"the README should show one jupytext and one papermill command, found {cmds}"
    return cmds


@dataclass
class FiguresSmoke:
    run: Run
    out: Path        # the figures
    executed: Path   # <notebook>.ipynb, executed by papermill


@functools.lru_cache(maxsize=None)
def figures_smoke(stems: tuple[str, ...]) -> FiguresSmoke:
    """``python -m fedmoe_da.figures --smoke`` for the figures of these notebooks (all of them: one run per session)."""
    folder = Path(tempfile.mkdtemp(prefix="figures-smoke-", dir=SCRATCH))
    ids = [f.id for f in FIGURES if f.notebook in stems]
    argv = [sys.executable, "-m", "fedmoe_da.figures", "--smoke", "--out", str(folder / "figures"),
            "--executed", str(folder / "executed"), "--jobs", str(JOBS)] + (["--only", *ids] if ids else [])
    return FiguresSmoke(run(argv, ROOT), folder / "figures", folder / "executed")


def readme_run(stem: str) -> tuple[list[Run], Path]:
    """The README's two commands with its notebook's name replaced by ``stem``, in a scratch copy of notebooks/."""
    work = SCRATCH / f"readme-{stem}"
    shutil.copytree(ROOT / "notebooks", work / "notebooks", ignore=shutil.ignore_patterns("*.ipynb"))
    (work / "runs").mkdir()
    runs = []
    for cmd in readme_notebook_commands():
        runs.append(run([a.replace(README_NOTEBOOK, stem) for a in shlex.split(cmd)], work))
        if runs[-1].returncode:
            break
    return runs, next(work.glob(f"runs/{stem}*.ipynb"), work / "runs" / "missing.ipynb")


@dataclass
class NotebookCheck:
    """A notebook's smoke runs: what failed in its papermill executions, the executed copies, nbval on each."""
    failures: list[str]
    executed: list[Path]
    nbval: list[Run]


@functools.lru_cache(maxsize=None)
def notebook_checks(stems: tuple[str, ...]) -> dict[str, NotebookCheck]:
    """Execute these notebooks once each in smoke mode (plus the README's commands on 01), then nbval each output."""
    drawn = tuple(s for s in stems if s in DRAWS_FIGURES)
    smoke = figures_smoke(tuple(DRAWS_FIGURES) if set(drawn) == set(DRAWS_FIGURES) else drawn) if drawn else None

    def check(stem: str) -> NotebookCheck:
        result = NotebookCheck([], [], [])
        if smoke is not None and stem in drawn:
            result.failures += smoke_failures(smoke, stem)
            result.executed.append(smoke.executed / f"{stem}.ipynb")
        if stem not in drawn or stem == README_NOTEBOOK:
            runs, executed = readme_run(stem)
            result.failures += [r.failure() for r in runs if r.returncode]
            result.executed.append(executed)
        if not result.failures:
            result.nbval = [nbval(stem, path) for path in result.executed]
        return result

    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        return dict(zip(stems, pool.map(check, stems)))


def smoke_failures(smoke: FiguresSmoke, stem: str) -> list[str]:
    """What the figures command said went wrong with this notebook (exit 1 names each failed notebook)."""
    if smoke.run.returncode not in (0, 1) or not (smoke.executed / f"{stem}.ipynb").is_file():
        return [smoke.run.failure()]
    return [ln for ln in smoke.run.output.splitlines() if ln.startswith(f"{COMMAND}: {stem}: ")]


def nbval(stem: str, executed: Path) -> Run:
    """nbval (lax) on a copy of a papermill output whose injected cell sets FIG_DIR to None."""
    nb = nbformat.read(executed, as_version=4)
    params = dict(nb.metadata.get("papermill", {}).get("parameters", {}))
    if "FIG_DIR" in params:
        nb = parameterize_notebook(nb, {**params, "FIG_DIR": None})
    copy = SCRATCH / "nbval" / f"{stem}-{executed.parent.name}" / executed.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, copy)
    return run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", str(copy)], copy.parent)
