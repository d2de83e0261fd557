"""The in-process federated simulation loop.

    data -> partition -> one model (clients hold states) -> for each round:
        sample participants -> local training -> strategy.communicate -> evaluate every client

Personalised accuracy is each client's own state on its own held-out split,
evaluated after the round's communication (what the client would use now).
Strategies with a global model (FedAvg, FedProx) also get the global model's
accuracy on every client's split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import data as data_mod
from .. import models
from ..config import ExperimentConfig
from .client import Trainer, is_finite_state
from .strategies import Strategy, make_strategy
from .transport import InProcessTransport, Transport


@dataclass
class SimulationResult:
    """What a run produced: tidy tables plus the objects behind them."""

    config: ExperimentConfig
    history: pd.DataFrame        # one row per (round, client)
    ledger: pd.DataFrame         # one row per transfer
    rejections: pd.DataFrame     # one row per rejected payload or discarded update
    summary: dict = field(default_factory=dict)
    run_dir: str | None = None


def sample_participants(rng: np.random.Generator, num_clients: int, participation: float) -> list[int]:
    m = max(1, round(participation * num_clients))
    return sorted(int(k) for k in rng.choice(num_clients, size=m, replace=False))


def client_seed(seed: int, rnd: int, client: int) -> int:
    """Mini-batch order seed of one client's local training in one round."""
    return (seed * 1_000_003 + rnd * 10_007 + client) % (2**63)


def run_simulation(config: ExperimentConfig, transport: Transport | None = None) -> SimulationResult:
    """Run ``config`` in this process and return its history and ledger (no files written)."""
    config.validate()
    torch.manual_seed(config.seed)
    dataset = data_mod.build(config)
    clients = data_mod.partition(dataset, config)
    torch.manual_seed(config.seed)
    model = models.build(config, dataset.input_shape, dataset.num_classes)
    template = models.get_state(model)
    groups = models.param_groups(model)
    states = [{n: t.clone() for n, t in template.items()} for _ in clients]   # one init for all clients
    strategy: Strategy = make_strategy(config, groups, template, [c.num_train for c in clients])
    trainer = Trainer(model, config)
    transport = transport or InProcessTransport()
    rng = np.random.default_rng([config.seed, 2])

    rows: list[dict] = []
    bar = tqdm(range(1, config.rounds + 1), desc=config.strategy, disable=not config.progress, leave=False)
    for rnd in bar:
        participants = sample_participants(rng, config.num_clients, config.participation)
        train_loss: dict[int, float] = {}
        strategy.begin_round(rnd, participants, states, transport)
        for k in participants:
            c = clients[k]
            new, loss = trainer.train(states[k], c.x_train, c.y_train, client_seed(config.seed, rnd, k),
                                      prox_mu=strategy.prox_mu)
            if is_finite_state(new) and math.isfinite(loss):
                states[k], train_loss[k] = new, loss
            else:   # a diverged client keeps its previous state; the round goes on
                transport.ledger.reject(rnd, k, k, "local", "all", "non-finite parameters after local training")
        strategy.communicate(rnd, participants, states, transport)
        rows.extend(evaluate_round(rnd, config, clients, states, trainer, strategy, participants, train_loss))
        mean_acc = np.nanmean([r["personalised_accuracy"] for r in rows[-len(clients):]])
        bar.set_postfix(acc=f"{mean_acc:.3f}")
    return SimulationResult(config, pd.DataFrame(rows), transport.ledger.to_frame(), transport.ledger.rejections())


def evaluate_round(rnd, config, clients, states, trainer, strategy, participants, train_loss) -> list[dict]:
    rows = []
    for c in clients:
        ev = trainer.evaluate(states[c.client], c.x_test, c.y_test)
        row = {"round": rnd, "client": c.client, "strategy": config.strategy, "seed": config.seed,
               "participated": c.client in participants, "train_loss": train_loss.get(c.client, math.nan),
               "test_loss": ev.loss, "personalised_accuracy": ev.accuracy,
               "global_accuracy": math.nan, "n_train": c.num_train, "n_test": len(c.y_test)}
        if strategy.global_state is not None:
            row["global_accuracy"] = trainer.evaluate(strategy.global_state, c.x_test, c.y_test).accuracy
        for l, counts in enumerate(ev.routed):
            row.update({f"routed_l{l}_e{e}": n for e, n in enumerate(counts)})
        rows.append(row)
    return rows
