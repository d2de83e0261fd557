"""The strategy interface: who sends which parameter group where, and how the server combines them.

A strategy declares a channel per group kind (docs/ARCHITECTURE.md §2): ``server``
(aggregated at the server), ``p2p`` (synchronised between peers) or
``local`` (never leaves the client). One round of a strategy is:

    begin_round  participants that missed the latest server aggregate get it (server-down)
    jobs         what each participant trains (``client.Job``: from its state; FedProx, FedRep and Ditto
                 say otherwise), trained by the engine for all participants at once; ``finish`` takes
                 the results back (Ditto keeps its global copy)
    answering    who of them is still there (``config.dropout``: a participant may drop after training)
    upload       answering participants -> server   (server-up; ``config.upload_screen`` judges them)
    aggregate    server side: FedAvg of every server group (weights: training-set sizes), or a
                 robust aggregate (``config.server_aggregate``)
    download     server -> answering participants   (server-down)
    p2p          peer -> answering participant      (p2p)

Every payload goes through the transport, so the ledger counts every byte
exactly once and nothing here counts bytes.

A participant that drops after local training (probability ``config.dropout``,
seed stream "dropout", drawn per round and client) keeps its trained state
but sends and receives nothing for the rest of the round: it writes no
ledger rows (no byte moved) and one rejections row
(round, k, k, "dropout", "all", reason). The server averages over who
answered; FedMoE-DA's peers treat it as absent (rows renormalised). Like any
participant that missed an aggregate, it gets the latest one at the start of
its next round. A late message is the same as a dropped one.

A client's state is a dict of tensors, or the runner's dict-like view of its
row in the stacked states (``state.ClientStates``): strategies read and write
``states[k][name]`` either way. The server keeps
``server_state``, the latest aggregate of every server group, and the
version each client holds.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import seeds
from ..config import ExperimentConfig
from ..models import ParamRef
from ..models.names import group_kind
from .client import Job, Trainer
from .robust import upload_outliers
from .server_aggregation import server_aggregate
from .state import State, read_group, write_group
from .transport import SERVER, Transport

Groups = dict[str, list[ParamRef]]


class Round(NamedTuple):
    """One round as the communication hooks see it, their one argument (docs/ARCHITECTURE.md §3).

    ``communicate`` passes ``upload``, ``download`` and ``p2p`` the same round with ``participants`` narrowed to
    those that answered (``answering``)."""

    rnd: int
    participants: list[int]
    states: list[State]
    transport: Transport


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
    def begin_round(self, r: Round) -> None:
        """Participants that missed the latest server aggregate (partial participation) get it before training."""
        rnd, participants, states, transport = r
        for k in participants:
            if self.held[k] == self.server_version:
                continue
            for g in self.server_groups():
                got = transport.send(rnd, SERVER, k, "server-down", g, read_group(self.server_state, self.groups[g]),
                                     expect=self.shapes[g])
                if got is not None:
                    self.receive(k, g, got, states)
            self.held[k] = self.server_version

    def jobs(self, k: int, state: State, x, y, seed: int) -> list[Job]:
        """What client k trains this round from ``state`` on its data (x, y): plain local training."""
        return [Job(state, x, y, seed)]

    def finish(self, k: int, results: list[tuple[State, float]]) -> tuple[State, float]:
        """Client k's new state and training loss from the results of its ``jobs``, in order."""
        return results[0]

    def train(self, k: int, trainer: Trainer, state: State, x, y, seed: int) -> tuple[State, float]:
        """Client k's local update, alone: ``finish`` of its ``jobs`` trained by ``trainer``."""
        return self.finish(k, trainer.train_jobs(self.jobs(k, state, x, y, seed)))

    def communicate(self, r: Round) -> None:
        answered = r._replace(participants=self.answering(r))
        self.aggregate(r.rnd, self.upload(answered))
        self.download(answered)
        self.p2p(answered)

    def answering(self, r: Round) -> list[int]:
        """The participants that did not drop after local training (each drops with probability ``dropout``)."""
        rnd, participants, _, transport = r
        if self.config.dropout == 0:
            return participants
        draws = seeds.generator(self.config.seed, "dropout", rnd).random(len(self.num_train))   # one per client
        for k in participants:
            if draws[k] < self.config.dropout:
                transport.ledger.reject(rnd, k, k, "dropout", "all",
                                        "dropped after local training: sent and received nothing this round")
        return [k for k in participants if draws[k] >= self.config.dropout]

    def upload(self, r: Round) -> dict[str, dict[int, dict]]:
        """Each participant sends its server-channel groups; returns group -> {client: accepted payload}.

        The server judges each group's uploads together (``upload_screen``: far from their median)."""
        rnd, participants, states, transport = r
        c = self.config.upload_screen
        screen = None if c is None else (lambda received: upload_outliers(received, c))
        return {g: transport.gather(rnd, SERVER, "server-up", g,
                                    {k: read_group(self.upload_state(k, states), self.groups[g]) for k in participants},
                                    expect=self.shapes[g], screen=screen)
                for g in self.server_groups()}

    def upload_state(self, k: int, states: list[State]) -> State:
        """The state client k uploads from (its own; Ditto uploads its copy of the global model)."""
        return states[k]

    def aggregate(self, rnd: int, uploads: dict[str, dict[int, dict]]) -> None:
        """FedAvg of every uploaded group, weighted by training-set size (or ``server_aggregate``); missing
        uploads are skipped."""
        self.averaged: dict[str, dict] = {}
        kind, trim = self.config.server_aggregate, self.config.trim_fraction
        for g, by_client in uploads.items():
            if not by_client:
                continue
            clients = sorted(by_client)
            weights = [self.num_train[k] for k in clients]
            self.averaged[g] = {n: server_aggregate(kind, [by_client[k][n] for k in clients], weights, trim)
                                for n in by_client[clients[0]]}
            write_group(self.server_state, self.groups[g], self.averaged[g])
        if self.averaged:
            self.server_version += 1

    def download(self, r: Round) -> None:
        rnd, participants, states, transport = r
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

    def p2p(self, r: Round) -> None:
        pass

    def diagnostics(self) -> list[dict]:
        """Rows for the run folder's aggregation.csv, produced since the last call (FedMoE-DA only)."""
        return []

    # ------------------------------------------------------------------ checkpoint (``checkpoint.py``)
    def state_dict(self) -> dict:
        """What the server side carries from one round to the next: tensors, lists, dicts and ints only."""
        return {"server_state": self.server_state, "server_version": self.server_version, "held": list(self.held)}

    def load_state_dict(self, state: dict) -> None:
        """Take back what ``state_dict`` gave (from a checkpoint)."""
        self.server_state = dict(state["server_state"])
        self.server_version, self.held = int(state["server_version"]), [int(v) for v in state["held"]]
