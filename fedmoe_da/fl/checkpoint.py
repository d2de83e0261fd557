"""Checkpoint and resume: what a run needs to continue after round r with an identical result.

Every ``config.checkpoint_every`` rounds, once round r's rows are appended to
the run folder (and at round 0, once the folder is started, so that a kill in
the first rounds resumes too), ``save`` writes its checkpoint.pt (``RunFolder.save_checkpoint``:
a temporary file, then ``os.replace``, so a kill leaves the previous one whole):

    format     FORMAT; a checkpoint of another format is refused
    round      r, the last finished round (0: none)
    config     the run's config (``to_dict``); a checkpoint of another config is refused
    states     every client's state: a list (client) of {tensor name: tensor}; the runner's states are
               rows of stacked tensors (``state.ClientStates``), so each stacked tensor is stored once
    strategy   ``strategy.state_dict()``: server_state, server_version, held (the version each client
               holds); FedMoE-DA adds A, pool and version per layer, server_gates, initial_gates and
               client_rows (the rows of A each client holds)
    rng        participants: the participant sampler's numpy bit_generator state as a JSON string;
               torch: torch's global RNG state (uint8 tensor; nothing draws from it after setup
               today, kept so that nothing may); cuda: the CUDA RNG states if CUDA is in use
    files      the byte size of each appended table after round r ({name: int}; 0: not yet written)

It holds only tensors, lists, dicts, ints, floats, strings and None, and is
read with ``torch.load(weights_only=True)``: loading it runs no code.

What it leaves out is rebuilt or read back. The data, partition, model and
initial states are rebuilt from the seed (setup is deterministic). The
history, ledger, rejections and aggregation rows up to round r are read back
from the run folder after ``RunFolder.truncate`` cut off the rows of the
unfinished round a kill -9 may have left, and the matrices of refreshes up to
r from matrices/. Mini-batch orders come from (seed, round, client) alone.
Ditto's global updates and the FedAvg payloads live within one round.

Resume: ``simulate(config, resume=True)`` (config must be the folder's:
config.json, where ``out`` and ``progress`` may differ) or
``simulation.resume(run_dir)`` (the folder alone); ``fedmoe-da run --resume
RUN_DIR`` on the command line. A finished run is read back.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import ConfigError, ExperimentConfig
from .matrices import Matrices
from .run_folder import AGGREGATION, CHECKPOINT, CONFIG, HISTORY, LEDGER, REJECTIONS, RunFolder
from .state import ClientStates, State
from .strategy import Strategy
from .transport import CommLedger

FORMAT = 1
FREE = ("out", "progress")   # fields a resumed run may change: where the folder is, and the progress bar


@dataclass
class Done:
    """What a run has done so far: its last finished round and the rows the result is built from."""

    round: int = 0
    history: list[pd.DataFrame] = field(default_factory=list)   # history rows, a frame per stretch of rounds
    diagnostics: list[dict] = field(default_factory=list)
    matrices: Matrices = field(default_factory=Matrices)


def due(rnd: int, config: ExperimentConfig) -> bool:
    return config.checkpoint_every > 0 and rnd % config.checkpoint_every == 0


def save(folder: RunFolder, rnd: int, config: ExperimentConfig, states: Sequence[State], strategy: Strategy,
         rng: np.random.Generator) -> None:
    """Write the checkpoint of round ``rnd`` if one is due (call after the round's rows are appended)."""
    if not due(rnd, config):
        return
    torch_rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch_rng["cuda"] = torch.cuda.get_rng_state_all()
    folder.save_checkpoint({
        "format": FORMAT, "round": rnd, "config": config.to_dict(), "states": [dict(s) for s in states],
        "strategy": strategy.state_dict(),
        "rng": {"participants": json.dumps(rng.bit_generator.state), **torch_rng},
        "files": folder.sizes()})


def mismatch(config: ExperimentConfig, other: ExperimentConfig | dict) -> str | None:
    """The first field (``FREE`` ones aside) whose value differs, as 'config.x is A there, B here'; None if none."""
    theirs = other if isinstance(other, dict) else other.to_dict()
    for name, value in config.to_dict().items():
        if name not in FREE and theirs.get(name) != value:
            return f"config.{name} is {theirs.get(name)!r} there, {value!r} here"
    return None


def resumable(config: ExperimentConfig) -> bool:
    """True if ``config.out`` holds a run of this config that is finished or has a checkpoint."""
    if not config.out:
        return False
    folder = RunFolder(config.out)
    try:
        return (folder.finished() or folder.has_checkpoint()) and mismatch(config, folder.config()) is None
    except ConfigError:
        return False


def check(config: ExperimentConfig) -> RunFolder:
    """The run folder ``config.out`` if it can be resumed with ``config``; else one-line ConfigError."""
    if not config.out:
        raise ConfigError("config.out is None: resuming needs the run folder")
    folder = RunFolder(config.out)
    where = f"run folder {str(folder.path)!r}"
    problem = mismatch(config, folder.config())
    if problem:
        raise ConfigError(f"{where} cannot be resumed with this config: {problem}")
    if not folder.finished() and not folder.has_checkpoint():
        raise ConfigError(f"{where} cannot be resumed: it has no {CHECKPOINT} "
                          f"(checkpoint_every={config.checkpoint_every}, "
                          f"or stopped while setting up); start it again with fedmoe-da run --config "
                          f"{folder.path / CONFIG}")
    return folder


def saved_round(run_dir: str | Path) -> int | None:
    """The round of a run folder's checkpoint (None if there is none)."""
    folder = RunFolder(run_dir)
    return int(folder.load_checkpoint()["round"]) if folder.has_checkpoint() else None


def restore(folder: RunFolder, config: ExperimentConfig, states: ClientStates | list[State], strategy: Strategy,
            rng: np.random.Generator, ledger: CommLedger) -> Done:
    """Load the checkpoint into the freshly set-up run and cut the run folder back to it; returns what was done.

    ``states`` (in place), ``strategy``, ``rng``, torch's RNG and ``ledger`` (its rows so far) are restored.
    """
    ckpt = folder.load_checkpoint()
    where = f"run folder {str(folder.path)!r}: {CHECKPOINT}"
    if ckpt.get("format") != FORMAT:
        raise ConfigError(f"{where} has format {ckpt.get('format')!r}, this version reads {FORMAT}")
    problem = mismatch(config, ckpt["config"])
    if problem:
        raise ConfigError(f"{where} belongs to another config: {problem}")
    if len(ckpt["states"]) != len(states):
        raise ConfigError(f"{where} holds {len(ckpt['states'])} client states, the run has {len(states)}")
    for k, state in enumerate(ckpt["states"]):
        states[k] = dict(state)
    strategy.load_state_dict(ckpt["strategy"])
    rng.bit_generator.state = json.loads(ckpt["rng"]["participants"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    rnd = int(ckpt["round"])
    folder.truncate(ckpt["files"], rnd)
    ledger.restore(folder.table(LEDGER), folder.table(REJECTIONS))
    return Done(rnd, [folder.table(HISTORY)], folder.table(AGGREGATION).to_dict("records"),
                folder.matrices(rnd))
