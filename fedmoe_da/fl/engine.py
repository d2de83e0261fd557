"""The stacked engine: every client's local training of a round at once, and every client's evaluation.

``Trainer`` (``client.py``) is the readable reference: one client after another,
a real ``torch.optim`` optimizer, the model module itself. ``StackedTrainer``
gives the same results (within float rounding: ``tests/test_engine.py``
checks every strategy against it) by training up to ``CHUNK`` clients in one
pass:

* **Parameters** of the chunk are stacked: one tensor per weight, client first
  (``models/stacked.py`` runs the forward pass on them).
* **Batches.** Each client keeps its own seed, epochs and mini-batch order
  (drawn exactly as ``Trainer.train`` draws them). Step s takes every client's
  s-th batch; a client's last batch of an epoch is shorter, so batches are
  padded at the end to the step's fullest batch and masked (the loss, the aux
  losses and the routing counts see real rows only). A step whose batches are
  all short (a client with 2 examples, the last batch of an epoch) computes
  only as many rows as its fullest one. Clients are sorted by their number of steps, so
  the clients still training at step s are a prefix of the chunk and a
  finished client is never touched again.
* **Loss.** The sum over clients of each client's loss (its mean cross-entropy
  + aux losses + its proximal term): client g's parameters get exactly the
  gradient of client g's loss.
* **Optimizer.** Adam and SGD (momentum, weight decay) written out on the
  stacked tensors, element for element as ``torch.optim`` computes them, one
  update per step for the clients still training.
* **Phases** (FedRep) and proximal centres (FedProx, Ditto) as in
  ``Trainer.train``; jobs with different phases or proximal settings train in
  separate groups.

A chunk's working set is a few copies of its parameters plus one step's
activations, so memory does not grow with the number of clients beyond
their states. Models that do not stack (the ViT: ``models.stacked.stackable``
says why) run one client at a time through ``Trainer``.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.stacked import stackable, stacked_forward
from .client import EvalResult, Job, Trainer
from .state import State, load_state

CHUNK = 64              # clients trained together; their stacked states and optimizer moments stay small
EVAL_ROWS = 4096        # rows (clients x test examples) per evaluation pass


class StackedTrainer(Trainer):
    """``Trainer`` with ``train_jobs`` and ``evaluate_many`` running every client at once (CNN and MLP)."""

    def __init__(self, model, config) -> None:
        super().__init__(model, config)
        self.why_not = stackable(self.model)
        self.names = [n for n, _ in self.model.named_parameters()]

    # ------------------------------------------------------------------ training
    def train_jobs(self, jobs: list[Job]) -> list[tuple[State, float]]:
        """As ``Trainer.train_jobs``; each new state is a view of its chunk's stacked parameters (the runner copies
        it into the client's row of ``ClientStates``; a strategy that keeps one beyond the round clones it)."""
        if self.why_not is not None:
            return super().train_jobs(jobs)
        out: list[tuple[State, float] | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[self._signature(job)].append(i)
        for members in groups.values():
            members.sort(key=lambda i: -self._steps(jobs[i]))            # still training at step s: a prefix
            for start in range(0, len(members), CHUNK):
                chunk = members[start:start + CHUNK]
                for i, result in zip(chunk, self._train_chunk([jobs[i] for i in chunk])):
                    out[i] = result
        return out  # type: ignore[return-value]

    def _phases(self, job: Job) -> list[tuple[int, set[str]]]:
        return job.phases if job.phases is not None else [(self.config.local_epochs, set(self.names))]

    def _signature(self, job: Job) -> tuple:
        prox = job.prox_center is not None and job.prox_mu != 0
        return tuple((e, frozenset(t)) for e, t in self._phases(job)), prox

    def _steps(self, job: Job) -> int:
        per_epoch = math.ceil(len(job.y) / self.config.batch_size)
        return sum(e for e, _ in self._phases(job)) * per_epoch

    def _schedule(self, jobs: list[Job], epochs: list[int], gens: list[torch.Generator],
                  offsets: list[int]) -> tuple[Tensor, Tensor]:
        """Row indices (S, G, B) into the chunk's concatenated data and their mask: step s, client g, slot b.
        Padding points at the all-zero row appended after the data (a real row could hold a NaN or Inf that
        would reach the other clients' gradients as 0 * Inf through the masked losses)."""
        B = self.config.batch_size
        pad = sum(len(job.y) for job in jobs)
        per_client = []
        for job, gen, off in zip(jobs, gens, offsets):
            batches = []
            for _ in epochs:
                order = torch.randperm(len(job.y), generator=gen)           # as Trainer.train draws it
                batches += [order[s:s + B] + off for s in range(0, len(job.y), B)]
            per_client.append(batches)
        S = max(len(b) for b in per_client)
        index = torch.full((S, len(jobs), B), pad, dtype=torch.long)
        mask = torch.zeros(S, len(jobs), B, dtype=torch.bool)
        for g, batches in enumerate(per_client):
            for s, rows in enumerate(batches):
                index[s, g, :len(rows)], mask[s, g, :len(rows)] = rows, True
        return index, mask

    def _train_chunk(self, jobs: list[Job]) -> list[tuple[State, float]]:
        cfg, dev, G = self.config, self.config.device, len(jobs)
        stacked = {n: torch.stack([j.state[n] for j in jobs]).to(dev) for n in self.names}   # (G, ...) each
        prox = jobs[0].prox_center is not None and jobs[0].prox_mu != 0
        if prox:
            centre = {n: torch.stack([j.prox_center[n] for j in jobs]).to(dev) for n in self.names}
            mu = torch.tensor([j.prox_mu for j in jobs], dtype=stacked[self.names[0]].dtype, device=dev)
        X = torch.cat([j.x for j in jobs] + [jobs[0].x.new_zeros(1, *jobs[0].x.shape[1:])]).to(dev)
        Y = torch.cat([j.y for j in jobs] + [torch.zeros(1, dtype=jobs[0].y.dtype)]).to(dev)   # + the padding row
        offsets = [0] + [int(v) for v in torch.cumsum(torch.tensor([len(j.y) for j in jobs]), 0)[:-1]]
        gens = [torch.Generator().manual_seed(j.seed) for j in jobs]
        loss_sum = torch.zeros(G, dtype=torch.float64, device=dev)
        steps = torch.zeros(G, dtype=torch.long, device=dev)
        for epochs, trained in self._phases(jobs[0]):
            names = [n for n in self.names if n in trained]
            opt = StackedOptimizer(cfg, {n: stacked[n] for n in names})
            index, mask = self._schedule(jobs, list(range(epochs)), gens, offsets)
            active = (mask[:, :, 0]).sum(1).tolist()                         # clients still training, per step
            rows = mask.sum(2).amax(1).tolist()                              # real rows of the fullest batch, per step
            for s, n_active in enumerate(active):                           # clients [:n_active] take step s
                idx = index[s, :n_active, :rows[s]].to(dev)                      # padding is at the end
                m = mask[s, :n_active, :rows[s]].to(dev)
                params = {n: stacked[n][:n_active].detach().requires_grad_(n in trained)   # views of stacked
                          for n in self.names}
                logits, aux, _ = stacked_forward(self.model, params, X[idx], m)     # (n_active, B, classes)
                ce = F.cross_entropy(logits.flatten(0, 1), Y[idx].flatten(), reduction="none").view(m.shape)
                loss = torch.where(m, ce, 0.0).sum(1) / m.sum(1) + aux         # (n_active,) each client's mean
                if prox:                                                              # (mu / 2) ||w - centre||^2
                    loss = loss + 0.5 * mu[:n_active] * sum(((params[n] - centre[n][:n_active]) ** 2).flatten(1).sum(1)
                                                            for n in names)
                grads = torch.autograd.grad(loss.sum(), [params[n] for n in names])
                opt.step(n_active, dict(zip(names, grads)))
                loss_sum[:n_active] += loss.detach()
                steps[:n_active] += 1
        mean_loss = (loss_sum / steps.clamp(min=1)).tolist()
        return [({n: stacked[n][g].detach() for n in self.names}, mean_loss[g]) for g in range(G)]   # views

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate_many(self, items: list[tuple[State, Tensor, Tensor]]) -> list[EvalResult]:
        if self.why_not is not None:
            return super().evaluate_many(items)
        dev, E = self.config.device, self.model.moe_layers[0].num_experts
        out = []
        per = max(1, EVAL_ROWS // max(1, max((len(y) for _, _, y in items), default=1)))
        for start in range(0, len(items), per):
            chunk = items[start:start + per]
            G, n_max = len(chunk), max(len(y) for _, _, y in chunk)
            stacked = {n: torch.stack([s[n] for s, _, _ in chunk]).to(dev) for n in self.names}
            loss_sum = torch.zeros(G, dtype=torch.float64, device=dev)
            correct = torch.zeros(G, dtype=torch.long, device=dev)
            counts = torch.zeros(G, E, dtype=torch.long, device=dev)
            rows = max(1, EVAL_ROWS // G)
            for r0 in range(0, n_max, rows):                                  # a huge test set in slices
                xs = [x[r0:r0 + rows] for _, x, _ in chunk]
                ys = [y[r0:r0 + rows] for _, _, y in chunk]
                b = max(len(y) for y in ys)
                if b == 0:
                    continue
                x = torch.zeros(G, b, *chunk[0][1].shape[1:], dtype=chunk[0][1].dtype)
                y = torch.zeros(G, b, dtype=torch.long)
                m = torch.zeros(G, b, dtype=torch.bool)
                for g, (xg, yg) in enumerate(zip(xs, ys)):
                    x[g, :len(yg)], y[g, :len(yg)], m[g, :len(yg)] = xg, yg, True
                x, y, m = x.to(dev), y.to(dev), m.to(dev)
                logits, _, routed = stacked_forward(self.model, stacked, x, m)
                ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(m.shape)
                loss_sum += torch.where(m, ce, 0.0).sum(1)
                correct += ((logits.argmax(-1) == y) & m).sum(1)
                counts += routed[0]
            n = torch.tensor([len(y) for _, _, y in chunk], device=dev)
            loss, acc = (loss_sum / n).tolist(), (correct / n).tolist()
            for g in range(G):
                nan = int(n[g]) == 0
                out.append(EvalResult(math.nan if nan else loss[g], math.nan if nan else acc[g],
                                      [counts[g].tolist()]))
        return out

    @torch.no_grad()
    def evaluate_shared(self, state: State, items: list[tuple[Tensor, Tensor]]) -> list[EvalResult]:
        """``Trainer.evaluate_shared`` in a few passes: one state (the global model) loaded once, every client's
        test rows concatenated and run through the model module in slices of at most ``EVAL_ROWS`` rows.

        Per row: its cross-entropy, whether it is correct, and the k experts its one token was routed to
        (``layer.routing.indices`` (R, k): the CNN and MLP route one token per row). Segment sums over the
        rows' client ids then give each client's mean loss, accuracy and routed counts, what ``evaluate``
        gives on that client alone. Images go channels-last (the faster layout for CPU
        convolutions), and unlike ``stacked_forward`` the module keeps the per-token
        routing, so the counts need no second pass.
        """
        if self.why_not is not None:
            return super().evaluate_shared(state, items)
        model, dev = self.model, self.config.device
        layer = model.moe_layers[0]
        G, E = len(items), layer.num_experts
        load_state(model, state)
        model.eval()
        sizes = [len(y) for _, y in items]
        n = torch.tensor(sizes, dtype=torch.long, device=dev)                       # (G,) rows per client
        ends = n.cumsum(0).tolist()
        cid = torch.repeat_interleave(torch.arange(G, device=dev), n)               # (N,) client of each row
        loss_sum = torch.zeros(G, dtype=torch.float64, device=dev)
        correct = torch.zeros(G, dtype=torch.long, device=dev)
        counts = torch.zeros(G * E, dtype=torch.long, device=dev)                  # (G, E) flattened
        channels_last = any(isinstance(m, torch.nn.Conv2d) for m in model.features)
        for r0 in range(0, ends[-1] if G else 0, EVAL_ROWS):                     # rows [r0, r1) of all clients
            r1 = min(r0 + EVAL_ROWS, ends[-1])
            part = [(x[max(r0 - end + size, 0):r1 - end + size], y[max(r0 - end + size, 0):r1 - end + size])
                    for (x, y), end, size in zip(items, ends, sizes) if end - size < r1 and end > r0]
            x = torch.cat([x for x, _ in part]).to(dev)
            y = torch.cat([y for _, y in part]).to(dev)                              # (R,)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x)                                                        # (R, classes)
            c = cid[r0:r1]                                                           # (R,) client of each row
            loss_sum.index_add_(0, c, F.cross_entropy(logits, y, reduction="none").double())
            correct.index_add_(0, c, (logits.argmax(1) == y).long())
            chosen = c[:, None] * E + layer.routing.indices                          # (R, k) -> client, expert
            counts.index_add_(0, chosen.flatten(), torch.ones(chosen.numel(), dtype=torch.long, device=dev))
        loss, acc, routed = (loss_sum / n).tolist(), (correct / n).tolist(), counts.view(G, E).tolist()
        return [EvalResult(math.nan if sizes[g] == 0 else loss[g], math.nan if sizes[g] == 0 else acc[g],
                           [routed[g]]) for g in range(G)]


class StackedOptimizer:
    """Adam or SGD (``config.optimizer``) on stacked parameters, updating clients [:n_active] only, as torch.optim
    does.

    One instance per phase (a fresh optimizer, as ``Trainer.train`` makes one per phase). Every client still
    training has taken the same number of steps (the prefix rule), so one step count serves them all. Adam is
    torch's fused kernel (``torch.optim.Adam(fused=True)``'s: one pass over memory, equal to the single-tensor
    loop the reference runs within float rounding); SGD is written out.
    """

    def __init__(self, config, params: dict[str, Tensor]) -> None:
        self.cfg, self.params, self.t = config, params, 0
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()} if config.optimizer == "adam" else {}

    @torch.no_grad()
    def step(self, n_active: int, grads: dict[str, Tensor]) -> None:
        cfg = self.cfg
        self.t += 1
        names = list(grads)
        if cfg.optimizer == "adam":
            steps = [torch.tensor(float(self.t)) for _ in names]
            torch._fused_adam_([self.params[n][:n_active] for n in names], [grads[n].contiguous() for n in names],
                               [self.m[n][:n_active] for n in names], [self.v[n][:n_active] for n in names], [], steps,
                               lr=cfg.lr, beta1=0.9, beta2=0.999, weight_decay=cfg.weight_decay, eps=1e-8,
                               amsgrad=False, maximize=False)
            return
        for n in names:                                                   # torch.optim.SGD
            p, m, grad = self.params[n][:n_active], self.m[n][:n_active], grads[n]
            if cfg.weight_decay != 0:
                grad = grad.add(p, alpha=cfg.weight_decay)
            if cfg.momentum != 0:
                if self.t == 1:
                    m.copy_(grad)
                else:
                    m.mul_(cfg.momentum).add_(grad)
                grad = m
            p.add_(grad, alpha=-cfg.lr)
