"""The run folder (DESIGN section 8): written as the run goes, read back by ``load_run``.

    config.json       {"config": the fields, "versions": packages, python, platform, git sha}
                      (``fedmoe-da run --config`` accepts it back)
    clients.csv       one row per client: home domain, train/test sizes, domain and label counts
    history.csv       one row per (round, client): accuracy, losses, routed tokens per expert  (appended per round)
    ledger.csv        one row per transfer: round, src, dst, channel, group, numel, bytes, accepted (appended per round)
    rejections.csv    one row per rejected payload or discarded local update                 (appended per round)
    aggregation.csv   FedMoE-DA: diagnostics of A per refresh and layer                      (appended per refresh)
    matrices.npz      FedMoE-DA: A per refresh and layer, keyed ``round<r>/A[l]``
    summary.json      the numbers of ``summary.summarize``, written at the end

This module owns the file names and formats: nothing else reads or writes them.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ExperimentConfig
from .summary import SimulationResult
from .transport import LEDGER_COLUMNS, REJECTION_COLUMNS

CONFIG, CLIENTS, HISTORY, LEDGER, REJECTIONS = "config.json", "clients.csv", "history.csv", "ledger.csv", "rejections.csv"
AGGREGATION, MATRICES, SUMMARY = "aggregation.csv", "matrices.npz", "summary.json"
APPENDED = (HISTORY, LEDGER, REJECTIONS, AGGREGATION)


def versions() -> dict[str, str]:
    """Versions of python and the packages a run depends on, and the git sha if in a checkout."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("fedmoe-da", "torch", "numpy", "pandas", "scikit-learn", "matplotlib", "triton", "mlxtend"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
        out["git_sha"] = sha or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["git_sha"] = "unknown"
    return out


def matrix_key(rnd: int, group: str) -> str:
    """Key of one A in matrices.npz: ``round<r>/A[l]``."""
    return f"round{rnd}/{group}"


class RunFolder:
    """Writes one run folder as the run goes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def start(self, config: ExperimentConfig, clients: pd.DataFrame) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for name in APPENDED + (MATRICES, SUMMARY):
            (self.path / name).unlink(missing_ok=True)            # a rerun into the same folder starts clean
        (self.path / CONFIG).write_text(json.dumps({"config": config.to_dict(), "versions": versions()},
                                                   indent=2, sort_keys=True))
        clients.to_csv(self.path / CLIENTS, index=False)

    def append(self, name: str, rows: pd.DataFrame) -> None:
        """Append rows to one of the per-round tables (header on first write)."""
        if name not in APPENDED:
            raise ValueError(f"{name!r} is not an appended table: one of {', '.join(APPENDED)}")
        if rows.empty:
            return
        target = self.path / name
        rows.to_csv(target, mode="a", header=not target.exists(), index=False)

    def save_matrices(self, matrices: dict[str, np.ndarray]) -> None:
        """Every A so far, keyed ``matrix_key(round, group)`` (rewritten at each refresh)."""
        np.savez_compressed(self.path / MATRICES, **matrices)

    def finish(self, summary: dict) -> None:
        for name, columns in ((LEDGER, LEDGER_COLUMNS), (REJECTIONS, REJECTION_COLUMNS), (AGGREGATION, [])):
            if not (self.path / name).exists():                   # present even when empty
                pd.DataFrame(columns=columns).to_csv(self.path / name, index=False)
        (self.path / SUMMARY).write_text(json.dumps(summary, indent=2))


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def load_run(path: str | Path) -> SimulationResult:
    """Read a run folder back into a SimulationResult."""
    path = Path(path)
    cfg = ExperimentConfig.from_dict(json.loads((path / CONFIG).read_text())["config"])
    matrices = dict(np.load(path / MATRICES)) if (path / MATRICES).exists() else {}
    rejections = _read_csv(path / REJECTIONS)
    return SimulationResult(cfg, _read_csv(path / HISTORY), _read_csv(path / LEDGER), rejections,
                            json.loads((path / SUMMARY).read_text()), str(path), _read_csv(path / CLIENTS),
                            _read_csv(path / AGGREGATION), matrices)
