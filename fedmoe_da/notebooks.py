"""Running the course notebooks headless: jupytext source in, executed .ipynb out, through papermill's Python API.

    execute("04_aggregation_matrix", "build/notebooks/04.ipynb", {"SMOKE": True, "FIG_DIR": "/tmp/figs"})

The sources are jupytext py:percent files ``notebooks/NN_name.py``; a
notebook is read with jupytext, written to a scratch ``.ipynb`` and executed by
papermill with the ``python3`` kernel from the repository root (so relative
paths such as ``runs/course`` land where the notebooks expect them). The
parameters go into papermill's injected cell after the one tagged
``parameters``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]   # the repository root (the package is installed editable)
NOTEBOOK_DIR = ROOT / "notebooks"
KERNEL = "python3"


def source(stem: str, folder: Path | None = None) -> Path:
    """<folder>/<stem>.py (default notebooks/), or a one-line ValueError naming the notebooks there."""
    folder = NOTEBOOK_DIR if folder is None else Path(folder)
    path = folder / f"{stem}.py"
    if not path.is_file():
        have = ", ".join(p.stem for p in sorted(folder.glob("[0-9]*.py"))) or "none"
        raise ValueError(f"no notebook {path} (notebooks: {have})")
    return path


def parameters(stem: str) -> dict[str, Any]:
    """The names and defaults of the notebook's cell tagged ``parameters`` (papermill's reading of it)."""
    import papermill

    with tempfile.TemporaryDirectory() as tmp:
        return {name: p["default"] for name, p in papermill.inspect_notebook(_to_ipynb(stem, Path(tmp))).items()}


def execute(stem: str, executed: str | Path, params: dict[str, Any], cell_timeout: float | None = None,
            folder: Path | None = None) -> float:
    """Run the notebook with ``params`` injected, save the executed copy at ``executed``; returns the wall seconds.

    A failing cell raises papermill's PapermillExecutionError; the executed copy
    (with the traceback in the failing cell) is still written. A cell running
    longer than ``cell_timeout`` seconds fails (None: no limit). ``folder``: where the notebook's .py is
    (default notebooks/).
    """
    import papermill

    executed = Path(executed)
    executed.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        papermill.execute_notebook(str(_to_ipynb(stem, Path(tmp), folder)), str(executed), parameters=params,
                                   kernel_name=KERNEL, cwd=str(ROOT), progress_bar=False,
                                   execution_timeout=cell_timeout)
        return time.perf_counter() - start


def _to_ipynb(stem: str, folder: Path, notebook_dir: Path | None = None) -> Path:
    import jupytext

    path = folder / f"{stem}.ipynb"
    jupytext.write(jupytext.read(source(stem, notebook_dir)), path)
    return path
