"""The one runner: ``simulate(config)`` runs a federated simulation in this process.

    data -> partition -> one model (clients hold states) -> for each round:
        sample participants -> strategy.begin_round -> local training (strategy.jobs, trained by the engine
        for every participant at once, then strategy.finish)
        -> strategy.communicate (upload, aggregate, download, p2p) -> evaluate every client
        -> append history, ledger, diagnostics to the run folder -> checkpoint (every checkpoint_every rounds)

``simulate(config, resume=True)`` or ``resume(run_dir)`` continues a run from
its folder's checkpoint with a result identical to the uninterrupted run's
(``checkpoint.py``).

The engine (``config.engine``) runs local training and evaluation: ``stacked``
(``engine.py``: every client at once) or ``loop`` (``client.py``: one client
after another, the readable reference; the tests hold the two equal).

Personalised accuracy is each client's own state on its own held-out split,
evaluated after the round's communication (what the client would use now).
Strategies with a global model (FedAvg, FedProx, Ditto) also get the global
model's accuracy on every client's split.
"""
from __future__ import annotations

import ctypes
import functools
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import data as data_mod
from .. import models, seeds
from ..config import ConfigError, ExperimentConfig
from ..models.names import gate_group, routed_column
from ..moe import resolve_backend
from . import checkpoint
from .client import Trainer
from .engine import StackedTrainer
from .matrices import SparseMatrix
from .placement import Placement
from .registry import make_strategy
from .run_folder import AGGREGATION, HISTORY, LEDGER, REJECTIONS, RunFolder, load_run, matrix_key
from .state import ClientStates, get_state, is_finite_state
from .strategy import Round, Strategy
from .summary import SimulationResult, summarize
from .transport import InProcessTransport, Transport


def sample_participants(rng: np.random.Generator, num_clients: int, participation: float) -> list[int]:
    m = max(1, round(participation * num_clients))
    return sorted(int(k) for k in rng.choice(num_clients, size=m, replace=False))


def preflight(config: ExperimentConfig) -> None:
    """Checks that need more than the config itself (the dispatch backend here), before any work."""
    config.validate()
    try:
        resolve_backend(config.backend, torch.device(config.device))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"config.backend={config.backend!r} is invalid here: {str(exc).splitlines()[0]}") from None


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def _glibc():
    """The C library if it is glibc (it has malloc_trim), else None (macOS, musl, Windows)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim   # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the heap memory freed during a round back to the system (``malloc_trim``; well under a ms).

    A round frees blocks of megabytes (the engine's stacked chunks, the P2P stacks) that glibc would otherwise
    keep mapped: read right after evaluation, a 200-client run's RSS swings by about 10% from round to round;
    at the end of the round, after this, it grows 2% from round 2 to 20, the run's own records
    (benchmarks/results/sim_throughput/). Fixing glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_``) instead
    made the stacked engine 25% slower (page faults on every large block), so it is not set.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def initial_states(model: torch.nn.Module, config: ExperimentConfig, num_clients: int) -> ClientStates:
    """One initialisation for every client, stacked (``ClientStates``); with ``gate_init="per_client"`` each
    client draws its own gates."""
    template = get_state(model)
    states = ClientStates({n: t.unsqueeze(0).repeat(num_clients, *([1] * t.dim())) for n, t in template.items()})
    if config.gate_init == "per_client":
        groups = models.param_groups(model)
        for k, state in enumerate(states):
            gen = torch.Generator().manual_seed(seeds.integer_seed(config.seed, "init", k + 1))
            for layer in range(len(model.moe_layers)):  # type: ignore[arg-type]
                key = groups[gate_group(layer)][0].key
                bound = 1.0 / math.sqrt(state[key].shape[1])                    # nn.Linear's default init
                state[key] = (torch.rand(state[key].shape, generator=gen) * 2 - 1) * bound
    return states


def simulate(config: ExperimentConfig, transport: Transport | None = None, placement: Placement | None = None,
             resume: bool = False) -> SimulationResult:
    """Run ``config``; returns .history, .ledger, .rejections, .clients, .aggregation, .matrices and .summary.

    With ``config.out`` set, the run folder is written as the run goes (``run_folder.py``), with a
    checkpoint every ``checkpoint_every`` rounds. ``resume=True`` continues the run in ``config.out``
    from its checkpoint instead (``config`` must be the folder's, but for ``out`` and ``progress``;
    a finished run is read back); otherwise a ConfigError says why it cannot. ``transport`` moves the payloads
    (``transport.py``), ``placement`` says which process runs which party (``placement.py``; torchrun:
    ``distributed/``): in one process by default.
    """
    preflight(config)
    if resume:
        folder = checkpoint.check(config)
        if folder.finished():
            return load_run(folder.path)
    with torch_threads(config.threads):
        return _simulate(config, transport or InProcessTransport(), placement or Placement(), resume)


def resume(run_dir: str | Path, progress: bool | None = None) -> SimulationResult:
    """Continue the run in ``run_dir`` from its checkpoint, with the config in its config.json (``progress``:
    show the bar or not; None: as the run did). A finished run is read back; ConfigError if it cannot resume."""
    config = RunFolder(run_dir).config().replace(out=str(run_dir))
    return simulate(config if progress is None else config.replace(progress=progress), resume=True)


def _simulate(config: ExperimentConfig, transport: Transport, placement: Placement,
              resume: bool = False) -> SimulationResult:
    dataset = data_mod.build(config)
    clients = data_mod.partition(dataset, config)
    table = data_mod.client_table(clients, dataset)
    torch.manual_seed(seeds.integer_seed(config.seed, "init", 0))
    model = models.build(config, dataset.input_shape, dataset.num_classes)
    template = get_state(model)
    states = initial_states(model, config, len(clients))
    strategy: Strategy = make_strategy(config, models.param_groups(model), template, [c.num_train for c in clients],
                                       home_domains=table["home_domain"].tolist())
    strategy.start(states)
    trainer = (StackedTrainer if config.engine == "stacked" else Trainer)(model, config)
    rng = seeds.generator(config.seed, "participants")
    folder = placement.folder(RunFolder(config.out)) if config.out else None
    if resume and folder:   # states, strategy and RNGs as after the checkpoint's round; the folder cut back to it
        done = checkpoint.restore(folder, config, states, strategy, rng, transport.ledger)
    else:
        done = checkpoint.Done()
        if folder:
            folder.start(config, table)
            checkpoint.save(folder, 0, config, states, strategy, rng)   # round 0: a kill in round 1 resumes too

    history, diagnostics, matrices = done.history, done.diagnostics, done.matrices
    written = {LEDGER: len(transport.ledger), REJECTIONS: transport.ledger.num_rejections}  # already in the folder
    bar = tqdm(range(done.round + 1, config.rounds + 1), desc=config.strategy, disable=not config.progress,
               leave=False, initial=done.round, total=config.rounds)
    for rnd in bar:
        placement.begin_round(rnd)
        participants = sample_participants(rng, config.num_clients, config.participation)
        train_loss: dict[int, float] = {}
        strategy.begin_round(Round(rnd, participants, states, transport))
        hosted = [k for k in participants if placement.hosts(k)]   # distributed: the rank that hosts k trains it
        jobs = {k: strategy.jobs(k, states[k], clients[k].x_train, clients[k].y_train,
                                 seeds.integer_seed(config.seed, "batches", rnd, k)) for k in hosted}
        results = iter(trainer.train_jobs([job for k in hosted for job in jobs[k]]))
        for k in hosted:
            new, loss = strategy.finish(k, [next(results) for _ in jobs[k]])
            if is_finite_state(new) and math.isfinite(loss):
                states[k], train_loss[k] = new, loss
        train_loss = placement.trained(train_loss)
        for k in participants:
            if k not in train_loss:   # a diverged client keeps its previous state; the round goes on
                transport.ledger.reject(rnd, k, k, "local", "all", "non-finite parameters after local training")
        strategy.communicate(Round(rnd, participants, states, transport))
        placement.settle(strategy)
        rows = placement.evaluated(evaluate_round(rnd, config, [c for c in clients if placement.hosts(c.client)],
                                                  states, trainer, strategy, participants, train_loss))
        round_rows = pd.DataFrame(rows)
        history.append(round_rows)    # a frame per round: columns, not 20 Python objects per client and round
        new_diag = strategy.diagnostics()
        diagnostics.extend(new_diag)
        if new_diag:   # a refresh: keep this round's A (sparse: matrices.py), gates and pool of every layer
            matrices.update({matrix_key(rnd, g): SparseMatrix.from_torch(A) if A.is_sparse else A.numpy()
                             for g, A in strategy.matrices().items()})  # type: ignore[attr-defined]
        if folder:
            folder.append(HISTORY, round_rows)
            folder.append(LEDGER, transport.ledger.to_frame(written[LEDGER]))   # this round's rows only
            folder.append(REJECTIONS, transport.ledger.rejections(written[REJECTIONS]))
            folder.append(AGGREGATION, pd.DataFrame(new_diag))
            if new_diag:
                folder.save_matrices(matrices, rnd)
            written = {LEDGER: len(transport.ledger), REJECTIONS: transport.ledger.num_rejections}
            checkpoint.save(folder, rnd, config, states, strategy, rng)
        bar.set_postfix(acc=f"{np.nanmean([r['personalised_accuracy'] for r in rows]):.3f}")
        release_freed_memory()

    frames = [f for f in history if len(f)]
    result = SimulationResult(config, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(),
                              transport.ledger.to_frame(), transport.ledger.rejections(),
                              clients=table, aggregation=pd.DataFrame(diagnostics), matrices=matrices)
    result.summary = summarize(result.history, result.ledger, result.rejections, result.aggregation)
    if folder:
        folder.finish(result.summary)
        result.run_dir = str(folder.path)
    return result


def evaluate_round(rnd, config, clients, states, trainer, strategy, participants, train_loss) -> list[dict]:
    rows = []
    global_state = strategy.global_state
    personal = trainer.evaluate_many([(states[c.client], c.x_test, c.y_test) for c in clients])
    shared = (trainer.evaluate_shared(global_state, [(c.x_test, c.y_test) for c in clients])
              if global_state is not None else [None] * len(clients))
    for c, ev, glob in zip(clients, personal, shared):
        row = {"round": rnd, "client": c.client, "strategy": config.strategy, "seed": config.seed,
               "participated": c.client in participants, "train_loss": train_loss.get(c.client, math.nan),
               "test_loss": ev.loss, "personalised_accuracy": ev.accuracy,
               "global_accuracy": math.nan, "n_train": c.num_train, "n_test": len(c.y_test)}
        if glob is not None:
            row["global_accuracy"] = glob.accuracy
        for layer, counts in enumerate(ev.routed):
            row.update({routed_column(layer, e): n for e, n in enumerate(counts)})
        rows.append(row)
    return rows
