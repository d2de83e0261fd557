"""Local training and evaluation on client *states*.

One ``Trainer`` owns one model workspace for the whole simulation; a client's
model is its state (a dict of tensors, ``state.py``) loaded into that
workspace, trained, and copied out. Memory therefore stays flat over rounds:
N states, one model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ExperimentConfig
from ..models import MoEModel
from .state import State, get_state, load_state


@dataclass
class Job:
    """One local training, the arguments of ``Trainer.train``: what a strategy asks a client to train."""
    state: State
    x: Tensor
    y: Tensor
    seed: int
    prox_center: State | None = None
    prox_mu: float = 0.0
    phases: list[tuple[int, set[str]]] | None = None


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    routed: list[list[int]]   # per MoE layer, tokens routed to each expert (E,)


class Trainer:
    def __init__(self, model: MoEModel, config: ExperimentConfig) -> None:
        self.model = model.to(config.device)
        self.config = config

    def _optimizer(self, params) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def train(self, state: State, x: Tensor, y: Tensor, seed: int, prox_center: State | None = None,
              prox_mu: float = 0.0, phases: list[tuple[int, set[str]]] | None = None) -> tuple[State, float]:
        """Mini-batch training on (x, y) from ``state``: loss = CE + aux losses (+ proximal term).

        * ``phases``: (epochs, names of the parameters trained) in order, each with
          a fresh optimizer; default one phase of ``local_epochs`` over everything.
        * ``prox_center`` / ``prox_mu``: adds (mu / 2) ||w - center||^2 (FedProx, Ditto).

        Returns the new state and the mean training loss. ``seed`` fixes the
        mini-batch order, so a client's update does not depend on who trained before it.
        """
        cfg, model = self.config, self.model
        load_state(model, state)
        model.train()
        params = dict(model.named_parameters())
        phases = phases if phases is not None else [(cfg.local_epochs, set(params))]
        center = None if prox_center is None or prox_mu == 0 else {n: prox_center[n].detach().clone() for n in params}
        gen = torch.Generator().manual_seed(seed)
        x, y = x.to(cfg.device), y.to(cfg.device)
        total, steps = 0.0, 0
        for epochs, trained in phases:
            for n, p in params.items():
                p.requires_grad_(n in trained)
            opt = self._optimizer([p for n, p in params.items() if n in trained])
            for _ in range(epochs):
                order = torch.randperm(len(y), generator=gen)
                for start in range(0, len(y), cfg.batch_size):
                    batch = order[start:start + cfg.batch_size]
                    loss = F.cross_entropy(model(x[batch]), y[batch]) + model.aux_loss()
                    if center is not None:   # (mu / 2) * ||w - center||^2
                        loss = loss + 0.5 * prox_mu * sum(((params[n] - c) ** 2).sum() for n, c in center.items()
                                                          if n in trained)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total, steps = total + float(loss.detach()), steps + 1
        for p in params.values():
            p.requires_grad_(True)
        return get_state(model), total / max(steps, 1)

    def train_jobs(self, jobs: list[Job]) -> list[tuple[State, float]]:
        """Every job of a round, one after another: [(new state, mean training loss)] in the jobs' order.
        (The stacked engine, ``engine.py``, trains them all at once.)"""
        return [self.train(j.state, j.x, j.y, j.seed, j.prox_center, j.prox_mu, j.phases) for j in jobs]

    def evaluate_many(self, items: list[tuple[State, Tensor, Tensor]]) -> list[EvalResult]:
        """``evaluate`` of each (state, x, y), one after another."""
        return [self.evaluate(state, x, y) for state, x, y in items]

    def evaluate_shared(self, state: State, items: list[tuple[Tensor, Tensor]]) -> list[EvalResult]:
        """``evaluate`` of one ``state`` (a global model) on each (x, y). (The stacked engine runs all the rows
        through the model at once instead of stacking the same state once per client.)"""
        return self.evaluate_many([(state, x, y) for x, y in items])

    @torch.no_grad()
    def evaluate(self, state: State, x: Tensor, y: Tensor) -> EvalResult:
        """Loss, accuracy and routed-token counts of ``state`` on (x, y)."""
        model = self.model
        load_state(model, state)
        model.eval()
        layers = list(model.moe_layers)
        if len(y) == 0:
            return EvalResult(math.nan, math.nan, [[0] * m.num_experts for m in layers])
        logits = model(x.to(self.config.device))
        loss = float(F.cross_entropy(logits, y.to(logits.device)))
        acc = float((logits.argmax(dim=1).cpu() == y).float().mean())
        return EvalResult(loss, acc, [m.routing.tokens_per_expert.cpu().tolist() for m in layers])
