"""The run folder (docs/ARCHITECTURE.md §9): written as the run goes, read back by ``load_run``.

    config.json       {"config": the fields, "versions": packages, python, platform, git sha}
                      (``fedmoe-da run --config`` accepts it back)
    clients.csv       one row per client: home domain, train/test sizes, domain and label counts
    history.csv       one row per (round, client): accuracy, losses, routed tokens per expert  (appended per round)
    ledger.csv        one row per transfer: round, src, dst, channel, group, numel, bytes, accepted (appended per round)
    rejections.csv    one row per rejected payload or discarded local update                 (appended per round)
    aggregation.csv   FedMoE-DA: diagnostics of A per refresh and layer                      (appended per refresh)
    matrices/         FedMoE-DA: round<r>.npz per refresh r, written once at the refresh    (one file per refresh)
                      (``matrices.py``): per layer l, A sparse (CSR) as ``round<r>/A[l]/indptr``,
                      ``.../indices``, ``.../data``, ``.../shape``; the uploaded gates ``round<r>/gate[l]`` (M, d)
                      and the pool's clients ``round<r>/pool[l]``. Folders written before hold instead one
                      matrices.npz with every refresh, A dense as ``round<r>/A[l]``: read too, and split
                      into matrices/ when such a run is resumed.
    summary.json      the numbers of ``summary.summarize``, written at the end
    checkpoint.pt     what ``--resume`` continues from (``checkpoint.py`` says what goes in): at the
                      start, then every ``checkpoint_every`` rounds after that round's rows are appended

A kill -9 can leave rows of an unfinished round at the end of the appended
tables: ``truncate`` cuts them back to their sizes at the checkpoint. The
checkpoint and each matrices/round<r>.npz are written atomically (a temporary
file, then ``os.replace``), so a kill leaves the previous one whole (or none);
``truncate`` removes those of refreshes after the checkpoint.

This module owns the file names and formats: nothing else reads or writes them.
"""
from __future__ import annotations

import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import ConfigError, ExperimentConfig
from .matrices import Matrices
from .summary import SimulationResult
from .transport import LEDGER_COLUMNS, REJECTION_COLUMNS

CONFIG, CLIENTS, HISTORY = "config.json", "clients.csv", "history.csv"
LEDGER, REJECTIONS = "ledger.csv", "rejections.csv"
AGGREGATION, MATRICES, SUMMARY, CHECKPOINT = "aggregation.csv", "matrices", "summary.json", "checkpoint.pt"
DENSE_MATRICES = "matrices.npz"   # every refresh in one file, A dense: run folders written before matrices/
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


def refresh_name(rnd: int) -> str:
    """``round<r>``: a refresh's prefix in ``matrix_key`` and its file's stem in matrices/."""
    return f"round{rnd}"


def matrix_key(rnd: int, group: str) -> str:
    """Key of one array a refresh keeps (``matrices.py``): ``round<r>/A[l]``, ``round<r>/gate[l]`` or
    ``round<r>/pool[l]``."""
    return f"{refresh_name(rnd)}/{group}"


def matrix_round(key: str) -> int:
    """The round of a ``matrix_key`` (its inverse), or of a matrices/round<r>.npz file's stem."""
    return int(key.split("/", 1)[0].removeprefix("round"))


def _replace_atomically(target: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``target``, then rename it over ``target`` (all or nothing)."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class RunFolder:
    """Writes one run folder as the run goes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def start(self, config: ExperimentConfig, clients: pd.DataFrame) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for name in APPENDED + (DENSE_MATRICES, SUMMARY, CHECKPOINT):
            (self.path / name).unlink(missing_ok=True)            # a rerun into the same folder starts clean
        shutil.rmtree(self.path / MATRICES, ignore_errors=True)
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

    def save_matrices(self, matrices: Matrices, rnd: int) -> None:
        """The arrays of the refresh at round ``rnd`` (keys ``matrix_key(rnd, group)``), into matrices/round<r>.npz."""
        arrays = matrices.arrays([k for k in matrices if matrix_round(k) == rnd])
        (self.path / MATRICES).mkdir(exist_ok=True)
        _replace_atomically(self._refresh_file(rnd), lambda f: np.savez_compressed(f, **arrays))

    def _refresh_file(self, rnd: int) -> Path:
        return self.path / MATRICES / f"{refresh_name(rnd)}.npz"

    def _refresh_files(self) -> dict[int, Path]:
        """round -> matrices/round<r>.npz, in round order."""
        found = (self.path / MATRICES).glob("round*.npz") if (self.path / MATRICES).is_dir() else ()
        return dict(sorted((matrix_round(p.stem), p) for p in found))

    def matrices(self, last_round: int | None = None) -> Matrices:
        """The arrays of every refresh up to ``last_round`` (None: all), from matrices/ (or an older folder's
        matrices.npz)."""
        arrays: dict[str, np.ndarray] = {}
        files = ([self.path / DENSE_MATRICES] if (self.path / DENSE_MATRICES).exists() else []) + \
            [p for r, p in self._refresh_files().items() if last_round is None or r <= last_round]
        for path in files:
            with np.load(path) as saved:
                arrays.update({k: saved[k] for k in saved.files if last_round is None or matrix_round(k) <= last_round})
        return Matrices.from_arrays(arrays)

    # ------------------------------------------------------------------ checkpoint and resume
    def sizes(self) -> dict[str, int]:
        """Byte size of each appended table (0: not written yet), recorded in a checkpoint."""
        return {name: (self.path / name).stat().st_size if (self.path / name).exists() else 0 for name in APPENDED}

    def truncate(self, sizes: dict[str, int], last_round: int) -> None:
        """Cut each appended table back to its size at the checkpoint of ``last_round``, and matrices/ back
        to the refreshes up to it: what a later, unfinished round wrote goes."""
        for name in APPENDED:
            target, size = self.path / name, int(sizes.get(name, 0))
            now = target.stat().st_size if target.exists() else 0
            if now < size:
                raise ConfigError(f"run folder {str(self.path)!r} cannot be resumed: {name} holds {now} bytes, "
                                  f"fewer than the {size} its checkpoint recorded (was it edited?)")
            if size == 0:
                target.unlink(missing_ok=True)
            elif now > size:
                os.truncate(target, size)
        if (self.path / DENSE_MATRICES).exists():   # a folder written before matrices/: split it, one file per refresh
            kept = self.matrices(last_round)
            for rnd in sorted({matrix_round(k) for k in kept}):
                self.save_matrices(kept, rnd)
            (self.path / DENSE_MATRICES).unlink()
        for rnd, path in self._refresh_files().items():
            if rnd > last_round:
                path.unlink()

    def table(self, name: str) -> pd.DataFrame:
        """One appended table as written so far (empty if not written yet)."""
        return _read_csv(self.path / name)

    def finished(self) -> bool:
        return (self.path / SUMMARY).exists()

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).exists()

    def save_checkpoint(self, payload: dict) -> None:
        """Write checkpoint.pt atomically; ``payload`` holds only tensors, lists, dicts, ints, floats, strings."""
        _replace_atomically(self.path / CHECKPOINT, lambda f: torch.save(payload, f))

    def load_checkpoint(self) -> dict:
        """Read checkpoint.pt with ``weights_only=True``: no code from the file runs."""
        try:
            return torch.load(self.path / CHECKPOINT, weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise ConfigError(f"run folder {str(self.path)!r}: {CHECKPOINT} cannot be read: "
                              f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None

    def config(self) -> ExperimentConfig:
        """The run's config, from config.json."""
        try:
            return ExperimentConfig.from_dict(json.loads((self.path / CONFIG).read_text())["config"])
        except FileNotFoundError:
            raise ConfigError(f"run folder {str(self.path)!r} has no {CONFIG}: it is not a run folder") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"run folder {str(self.path)!r}: {CONFIG} cannot be read: {exc}") from None

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
    matrices = RunFolder(path).matrices()
    rejections = _read_csv(path / REJECTIONS)
    return SimulationResult(cfg, _read_csv(path / HISTORY), _read_csv(path / LEDGER), rejections,
                            json.loads((path / SUMMARY).read_text()), str(path), _read_csv(path / CLIENTS),
                            _read_csv(path / AGGREGATION), matrices)
