"""Federated strategies: who sends which parameter group where, and how the server combines them.

Each strategy declares a channel per group kind (DESIGN section 4) and
implements one round's communication in four steps, all through the
transport (so the ledger counts every byte exactly once):

    upload    participants -> server    (channel server-up)
    aggregate server side
    download  server -> participants    (channel server-down)
    p2p       peer -> participant       (channel p2p)

| strategy  | backbone | gate                     | experts            |
|-----------|----------|--------------------------|--------------------|
| local     | local    | local                    | local              |
| fedavg    | server   | server                   | server (by slot)   |
| fedprox   | server   | server                   | server (+ prox mu) |
| fedmoe_da | server*  | uploaded for A, kept local | p2p, Eq. 8-11    |

(* ``fedmoe_backbone='local'`` keeps it local.) A head, where the model has
one, travels with the backbone.
"""
from __future__ import annotations

import re

import torch

from ..config import ExperimentConfig
from ..models import ParamRef, State, read_group, write_group
from .aggregation import aggregation_matrix, drop_absent, fedavg
from .p2p import ClientRows, fetch_plan, rows_for_client
from .transport import SERVER, Transport

Groups = dict[str, list[ParamRef]]


def group_kind(name: str) -> str:
    """'expert[0][3]' -> 'expert', 'gate[1]' -> 'gate', 'backbone' -> 'backbone'."""
    return re.sub(r"\[.*", "", name)


class Strategy:
    name = "base"
    channels: dict[str, str] = {}
    has_global_model = False
    prox_mu = 0.0

    def __init__(self, config: ExperimentConfig, groups: Groups, template: State, num_train: list[int]) -> None:
        self.config, self.groups, self.num_train = config, groups, num_train
        self.shapes = {g: {n: t.shape for n, t in read_group(template, refs).items()} for g, refs in groups.items()}
        self.global_state: State | None = None

    def server_groups(self) -> list[str]:
        return [g for g in self.groups if self.channels.get(group_kind(g)) == "server"]

    def begin_round(self, rnd: int, participants: list[int], states: list[State], transport: Transport) -> None:
        """Before local training (e.g. FedAvg sends the current global model to stale participants)."""

    def communicate(self, rnd: int, participants: list[int], states: list[State], transport: Transport) -> None:
        uploads = self.upload(rnd, participants, states, transport)
        self.aggregate(rnd, uploads)
        self.download(rnd, participants, states, transport)
        self.p2p(rnd, participants, states, transport)

    def upload(self, rnd, participants, states, transport) -> dict[str, dict[int, dict]]:
        """Each participant sends its server-channel groups; returns group -> {client: accepted payload}."""
        uploads: dict[str, dict[int, dict]] = {}
        for g in self.server_groups():
            uploads[g] = {}
            for k in participants:
                got = transport.send(rnd, k, SERVER, "server-up", g, read_group(states[k], self.groups[g]),
                                     expect=self.shapes[g])
                if got is not None:
                    uploads[g][k] = got
        return uploads

    def aggregate(self, rnd: int, uploads: dict[str, dict[int, dict]]) -> None:
        """FedAvg of every uploaded group, weighted by training-set size; missing uploads are skipped."""
        self.averaged: dict[str, dict] = {}
        for g, by_client in uploads.items():
            if not by_client:
                continue
            clients = sorted(by_client)
            weights = [self.num_train[k] for k in clients]
            self.averaged[g] = {n: fedavg([by_client[k][n] for k in clients], weights) for n in by_client[clients[0]]}
            if self.global_state is not None:
                write_group(self.global_state, self.groups[g], self.averaged[g])

    def download(self, rnd, participants, states, transport) -> None:
        for g, tensors in self.averaged.items():
            for k in participants:
                got = transport.send(rnd, SERVER, k, "server-down", g, tensors, expect=self.shapes[g])
                if got is not None:
                    write_group(states[k], self.groups[g], got)

    def p2p(self, rnd, participants, states, transport) -> None:
        pass


class Local(Strategy):
    """Every client trains alone: no communication at all."""

    name = "local"
    channels = {"backbone": "local", "head": "local", "gate": "local", "expert": "local"}

    def communicate(self, rnd, participants, states, transport) -> None:
        pass


class FedAvg(Strategy):
    """McMahan et al. 2017: the whole model averaged at the server (experts slot by slot)."""

    name = "fedavg"
    channels = {"backbone": "server", "head": "server", "gate": "server", "expert": "server"}
    has_global_model = True

    def __init__(self, config, groups, template, num_train) -> None:
        super().__init__(config, groups, template, num_train)
        self.global_state = {n: t.clone() for n, t in template.items()}
        self.global_version = 0                      # bumped by every aggregation
        self.held = [0] * len(num_train)             # version of the global model each client holds

    def begin_round(self, rnd, participants, states, transport) -> None:
        """Participants that missed the latest global model (partial participation) get it before training."""
        for k in participants:
            if self.held[k] == self.global_version:
                continue
            for g, refs in self.groups.items():
                got = transport.send(rnd, SERVER, k, "server-down", g, read_group(self.global_state, refs),
                                     expect=self.shapes[g])
                if got is not None:
                    write_group(states[k], refs, got)
            self.held[k] = self.global_version

    def aggregate(self, rnd, uploads) -> None:
        super().aggregate(rnd, uploads)
        self.global_version += 1

    def download(self, rnd, participants, states, transport) -> None:
        super().download(rnd, participants, states, transport)
        for k in participants:
            self.held[k] = self.global_version


class FedProx(FedAvg):
    """Li et al. 2020: FedAvg with a proximal term (mu / 2) ||w - w_global||^2 in local training."""

    name = "fedprox"

    def __init__(self, config, groups, template, num_train) -> None:
        super().__init__(config, groups, template, num_train)
        self.prox_mu = config.mu


class FedMoEDA(Strategy):
    """FedMoE-DA: backbone by FedAvg; every expert aggregated with its P most correlated peers (Eq. 8-11).

    * Refresh rounds are 1, 1 + I, 1 + 2I, ...: participants upload their gates
      (server-up), and the server recomputes each layer's A over the pool of
      every client whose gate it holds (latest upload).
    * Each participant that does not hold the current A gets its rows
      (server-down, group ``A[l]``); rows are kept until the next refresh.
    * P2P: a participant fetches the distinct remote (peer, slot) experts of its
      rows from peers present this round; absent or rejected peers are dropped
      and the row renormalised (its own expert is always there).
    * Eq. 11 is applied from the experts as they were after local training
      (synchronous). A participant that joined after the last refresh has no
      rows yet and keeps its experts until the next refresh.
    """

    name = "fedmoe_da"

    def __init__(self, config, groups, template, num_train) -> None:
        super().__init__(config, groups, template, num_train)
        self.channels = {"backbone": config.fedmoe_backbone, "head": config.fedmoe_backbone,
                         "gate": "local", "expert": "p2p"}
        self.num_layers = sum(1 for g in groups if group_kind(g) == "gate")
        self.E = template[groups["gate[0]"][0].key].shape[0]                    # experts per layer
        self.server_gates: list[dict[int, torch.Tensor]] = [{} for _ in range(self.num_layers)]
        self.A: list[torch.Tensor | None] = [None] * self.num_layers
        self.pool: list[list[int]] = [[] for _ in range(self.num_layers)]
        self.version = 0
        self.client_rows: dict[int, list[ClientRows]] = {}

    def is_refresh(self, rnd: int) -> bool:
        return (rnd - 1) % self.config.I == 0

    def upload(self, rnd, participants, states, transport):
        uploads = super().upload(rnd, participants, states, transport)   # backbone (+ head) if 'server'
        if self.is_refresh(rnd):
            for l in range(self.num_layers):
                g = f"gate[{l}]"
                for k in participants:
                    got = transport.send(rnd, k, SERVER, "server-up", g, read_group(states[k], self.groups[g]),
                                         expect=self.shapes[g])
                    if got is not None:
                        self.server_gates[l][k] = next(iter(got.values()))   # (E, d) proxies
        return uploads

    def aggregate(self, rnd, uploads) -> None:
        super().aggregate(rnd, uploads)
        if not self.is_refresh(rnd):
            return
        self.version = rnd
        for l in range(self.num_layers):
            pool = sorted(self.server_gates[l])
            self.pool[l] = pool
            if pool:
                proxies = torch.cat([self.server_gates[l][k] for k in pool])         # (M, d), M = |pool| * E
                self.A[l] = aggregation_matrix(proxies, self.config.P, self.config.tau)  # (M, M)

    def download(self, rnd, participants, states, transport) -> None:
        super().download(rnd, participants, states, transport)
        for k in participants:
            held = self.client_rows.get(k)
            if held is not None and held[0].version == self.version:
                continue
            rows = []
            for l in range(self.num_layers):
                if self.A[l] is None or k not in self.pool[l]:
                    break
                r = rows_for_client(self.A[l], self.pool[l], k, self.E, self.version)
                got = transport.send(rnd, SERVER, k, "server-down", f"A[{l}]", r.to_payload(),
                                     expect={"index": (len(r.row), 3), "weight": (len(r.row),)})
                if got is None:
                    break
                rows.append(ClientRows.from_payload(got, self.version))
            if len(rows) == self.num_layers:
                self.client_rows[k] = rows

    def p2p(self, rnd, participants, states, transport) -> None:
        present = set(participants)
        expert_keys = {r.key for g, refs in self.groups.items() if group_kind(g) == "expert" for r in refs}
        before = {k: {n: states[k][n].clone() for n in expert_keys} for k in participants}   # synchronous
        for k in participants:
            for l, rows in enumerate(self.client_rows.get(k, [])):
                self._sync_layer(rnd, k, l, rows, present, before, states, transport)

    def _sync_layer(self, rnd, k, l, rows: ClientRows, present, before, states, transport) -> None:
        """Fetch client k's remote experts of layer l, then Eq. 11 with absent peers dropped."""
        fetched: dict[tuple[int, int], dict] = {}
        for peer, slot in fetch_plan(rows, k, present):
            g = f"expert[{l}][{slot}]"
            got = transport.send(rnd, peer, k, "p2p", g, read_group(before[peer], self.groups[g]),
                                 expect=self.shapes[g])
            if got is not None:
                fetched[(peer, slot)] = got
        sources = sorted({(int(p), int(s)) for p, s in zip(rows.peer, rows.slot)})
        available = {src: (read_group(before[k], self.groups[f"expert[{l}][{src[1]}]"]) if src[0] == k
                           else fetched.get(src)) for src in sources}
        col = {src: i for i, src in enumerate(sources)}
        W = torch.zeros(self.E, len(sources))                                   # (E, S) client k's rows
        W[rows.row, torch.tensor([col[(int(p), int(s))] for p, s in zip(rows.peer, rows.slot)])] = rows.weight
        present_mask = torch.tensor([available[src] is not None for src in sources])
        W = drop_absent(W, present_mask.expand_as(W))                             # renormalised rows
        for key in (r.key for r in self.groups[f"expert[{l}][0]"]):
            stacked = torch.stack([available[src][f"{key}[{src[1]}]"] if available[src] is not None
                                   else torch.zeros_like(before[k][key][0]) for src in sources])   # (S, ...)
            new = torch.tensordot(W, stacked.float(), dims=1).to(stacked.dtype)  # Eq. 11: (E, ...)
            states[k][key] = new


STRATEGY_CLASSES = {cls.name: cls for cls in (Local, FedAvg, FedProx, FedMoEDA)}


def make_strategy(config: ExperimentConfig, groups: Groups, template: State, num_train: list[int]) -> Strategy:
    return STRATEGY_CLASSES[config.strategy](config, groups, template, num_train)
