"""The strategy interface: who sends which parameter group where, and how the server combines them.

A strategy declares a channel per group kind (DESIGN section 4): ``server``
(aggregated at the server), ``p2p`` (synchronised between peers) or
``local`` (never leaves the client). One round of a strategy is:

    begin_round  participants that missed the latest server aggregate get it (server-down)
    train        each participant's local update (``Trainer.train``; FedProx, FedRep, Ditto override it)
    upload       participants -> server      (server-up)
    aggregate    server side: FedAvg of every server group (weights: training-set sizes)
    download     server -> participants      (server-down)
    p2p          peer -> participant         (p2p)

Every payload goes through the transport, so the ledger counts every byte
exactly once and nothing here counts bytes. Client states are plain dicts of
tensors (``state.py``); the server keeps ``server_state``, the latest
aggregate of every server group, and the version each client holds.
"""
from __future__ import annotations

from ..config import ExperimentConfig
from ..models import ParamRef
from ..models.names import group_kind
from .aggregation import fedavg
from .client import Trainer
from .state import State, read_group, write_group
from .transport import SERVER, Transport

Groups = dict[str, list[ParamRef]]


class Strategy:
    name = "base"
    channels: dict[str, str] = {}
    prox_mu = 0.0

    def __init__(self, config: ExperimentConfig, groups: Groups, template: State, num_train: list[int],
                 home_domains: list[int] | None = None) -> None:
        self.config, self.groups, self.num_train = config, groups, num_train
        self.home_domains = home_domains
        self.shapes = {g: {n: t.shape for n, t in read_group(template, refs).items()} for g, refs in groups.items()}
        self.server_state: State = {r.key: template[r.key].clone() for g in self.server_groups()
                                    for r in self.groups[g]}
        self.server_version = 0                      # bumped by every aggregation
        self.held = [0] * len(num_train)             # server_version each client holds

    # ------------------------------------------------------------------ what goes where
    def server_groups(self) -> list[str]:
        return [g for g in self.groups if self.channels.get(group_kind(g)) == "server"]

    @property
    def global_state(self) -> State | None:
        """The server's whole model when every group is aggregated there (FedAvg, FedProx), else None."""
        return self.server_state if self.server_groups() == list(self.groups) else None

    def start(self, states: list[State]) -> None:
        """Called once with the clients' initial states, before round 1."""

    # ------------------------------------------------------------------ one round
    def begin_round(self, rnd: int, participants: list[int], states: list[State], transport: Transport) -> None:
        """Participants that missed the latest server aggregate (partial participation) get it before training."""
        for k in participants:
            if self.held[k] == self.server_version:
                continue
            for g in self.server_groups():
                got = transport.send(rnd, SERVER, k, "server-down", g, read_group(self.server_state, self.groups[g]),
                                     expect=self.shapes[g])
                if got is not None:
                    self.receive(k, g, got, states)
            self.held[k] = self.server_version

    def train(self, k: int, trainer: Trainer, state: State, x, y, seed: int) -> tuple[State, float]:
        """Client k's local update from ``state`` on its data (x, y)."""
        return trainer.train(state, x, y, seed)

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
                got = transport.send(rnd, k, SERVER, "server-up", g, read_group(self.upload_state(k, states), self.groups[g]),
                                     expect=self.shapes[g])
                if got is not None:
                    uploads[g][k] = got
        return uploads

    def upload_state(self, k: int, states: list[State]) -> State:
        """The state client k uploads from (its own; Ditto uploads its copy of the global model)."""
        return states[k]

    def aggregate(self, rnd: int, uploads: dict[str, dict[int, dict]]) -> None:
        """FedAvg of every uploaded group, weighted by training-set size; missing uploads are skipped."""
        self.averaged: dict[str, dict] = {}
        for g, by_client in uploads.items():
            if not by_client:
                continue
            clients = sorted(by_client)
            weights = [self.num_train[k] for k in clients]
            self.averaged[g] = {n: fedavg([by_client[k][n] for k in clients], weights) for n in by_client[clients[0]]}
            write_group(self.server_state, self.groups[g], self.averaged[g])
        if self.averaged:
            self.server_version += 1

    def download(self, rnd, participants, states, transport) -> None:
        for g, tensors in self.averaged.items():
            for k in participants:
                got = transport.send(rnd, SERVER, k, "server-down", g, tensors, expect=self.shapes[g])
                if got is not None:
                    self.receive(k, g, got, states)
        for k in participants:
            self.held[k] = self.server_version

    def receive(self, k: int, group: str, tensors: dict, states: list[State]) -> None:
        """Client k takes a downloaded server group into its state (Ditto keeps it beside its own)."""
        write_group(states[k], self.groups[group], tensors)

    def p2p(self, rnd, participants, states, transport) -> None:
        pass

    def diagnostics(self) -> list[dict]:
        """Rows for the run folder's aggregation.csv, produced since the last call (FedMoE-DA only)."""
        return []
