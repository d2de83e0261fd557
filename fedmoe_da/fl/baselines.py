"""The baselines FedMoE-DA is compared with, each a few lines on top of ``Strategy``.

| strategy | backbone | gate + experts (+ head) | local training |
|----------|----------|-------------------------|----------------|
| local    | local    | local                   | plain          |
| fedavg   | server   | server (experts by slot)| plain          |
| fedprox  | server   | server                  | + (mu/2) ||w - w_global||^2 |
| fedper   | server   | local (personal head)   | plain          |
| fedrep   | server   | local (personal head)   | head first (body frozen), then body (head frozen) |
| ditto    | server (global) + full personal copy | | global: plain; personal: + (lambda/2) ||v - w_global||^2 |

"Head" here is every group but the backbone: the MoE layer(s) and, for the
ViT, its classifier. For the CNN and MLP the MoE layer *is* the head, so
FedPer is also "FedMoE-DA with P = 0".
"""
from __future__ import annotations

from ..models.names import BACKBONE, group_kind
from .client import Job
from .state import State
from .strategy import Round, Strategy

_ALL_SERVER = {"backbone": "server", "head": "server", "gate": "server", "expert": "server"}
_PERSONAL_HEAD = {"backbone": "server", "head": "local", "gate": "local", "expert": "local"}


class Local(Strategy):
    """Every client trains alone: no communication at all."""

    name = "local"
    channels = {"backbone": "local", "head": "local", "gate": "local", "expert": "local"}

    def communicate(self, r: Round) -> None:
        pass


class FedAvg(Strategy):
    """McMahan et al. 2017, "Communication-efficient learning of deep networks from decentralized data":
    the whole model averaged at the server (experts slot by slot), weighted by training-set size."""

    name = "fedavg"
    channels = _ALL_SERVER


class FedProx(FedAvg):
    """Li et al. 2020, "Federated optimization in heterogeneous networks": FedAvg whose local
    objective adds (mu / 2) ||w - w_global||^2, w_global being the model the round started from."""

    name = "fedprox"

    def jobs(self, k, state, x, y, seed):
        return [Job(state, x, y, seed, prox_center=state, prox_mu=self.config.mu)]


class FedPer(Strategy):
    """Arivazhagan et al. 2019, "Federated learning with personalization layers": the backbone is
    averaged at the server, the head (here: the MoE layers) stays personal and never leaves the client."""

    name = "fedper"
    channels = _PERSONAL_HEAD


class FedRep(FedPer):
    """Collins et al. 2021, "Exploiting shared representations for personalized federated learning":
    as FedPer, but each round trains the personal head first (``head_epochs``, backbone frozen), then
    the backbone (``local_epochs``, head frozen); only the backbone is averaged."""

    name = "fedrep"

    def jobs(self, k, state, x, y, seed):
        body = {r.key for g, refs in self.groups.items() if group_kind(g) == BACKBONE for r in refs}
        head = set(state) - body
        phases = [(self.config.head_epochs, head), (self.config.local_epochs, body)]
        return [Job(state, x, y, seed, phases=[p for p in phases if p[0] > 0])]


class Ditto(Strategy):
    """Li et al. 2021, "Ditto: fair and robust federated learning through personalization".

    Two models per client: the global one, trained as in FedAvg and averaged at the server, and a
    personal one (the client's state, the one evaluated), trained on the same data with
    (lambda / 2) ||v - w_global||^2 pulling it towards the global model the round started from.
    Each client's copy of the global model is the server's latest (``server_state``): a participant
    that missed an aggregation gets it at the start of its next round, as in FedAvg.
    ``global_updates`` lives within one round (every participant trains before it uploads), so a
    checkpoint needs only the base state (``Strategy.state_dict``).
    """

    name = "ditto"
    channels = _ALL_SERVER

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.global_updates: dict[int, State] = {}

    @property
    def global_state(self) -> State:
        return self.server_state

    def jobs(self, k, state, x, y, seed):
        """The global model from the server's latest, then the personal one pulled towards it."""
        start = {n: t.clone() for n, t in self.server_state.items()}
        return [Job(start, x, y, seed), Job(state, x, y, seed, prox_center=self.server_state,
                                            prox_mu=self.config.ditto_lambda)]

    def finish(self, k, results):
        self.global_updates[k] = {n: t.to(self.server_state[n].device, copy=True)   # results may be views (on the
                                  for n, t in results[0][0].items()}              # engine's device)
        return results[1]

    def upload_state(self, k, states):
        return self.global_updates.get(k, self.server_state)

    def receive(self, k, group, tensors, states) -> None:
        """The personal model is not overwritten: the client's global copy is the server's aggregate."""
