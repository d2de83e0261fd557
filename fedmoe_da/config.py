"""Experiment configuration: one documented, validated dataclass.

Every field has a one-line docstring (the string under it), a default that
runs the main job in a few minutes on 2 CPU cores, and a check in
:meth:`ExperimentConfig.validate` whose message names the field, its value
and what is allowed. ``ExperimentConfig.smoke()`` makes everything tiny for
tests and CI.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("fedmoe_da", "fedavg", "fedprox", "local")
DATASETS = ("digits", "mnist", "fmnist", "cifar10")
PARTITIONS = ("domain_dirichlet", "dirichlet", "shards", "domain", "iid")
MODELS = ("cnn", "mlp", "vit")
BACKENDS = ("auto", "torch", "triton")
DOMAINS = ("original", "rotate", "invert", "noise", "blur")
CHANNELS = ("server", "local")
OPTIMIZERS = ("adam", "sgd")


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming the field."""


@dataclass
class ExperimentConfig:
    # --- data -------------------------------------------------------------
    dataset: str = "digits"
    """Dataset: 'digits' (embedded, no download), 'mnist', 'fmnist' or 'cifar10'."""
    data_dir: str = "data"
    """Where real datasets are downloaded once and cached."""
    domains: tuple[str, ...] = DOMAINS
    """Domains each sample is assigned to (one each): original, rotate, invert, noise, blur."""
    test_fraction: float = 0.25
    """Fraction of the dataset held out for testing (split once, stratified, seeded)."""
    max_samples: int | None = None
    """Use at most this many samples of the dataset (None: all)."""
    partition: str = "domain_dirichlet"
    """How samples are dealt to clients: domain_dirichlet, dirichlet, shards, domain or iid."""
    alpha: float = 0.5
    """Dirichlet concentration of the label skew (smaller: more skewed)."""
    shards_per_client: int = 2
    """Label-sorted shards per client for the 'shards' partition."""
    domain_purity: float = 0.9
    """Share of a client's data drawn from its home domain ('domain_dirichlet', 'domain')."""
    min_samples: int = 8
    """Each client gets at least this many training samples (Dirichlet draws are retried)."""

    # --- model ------------------------------------------------------------
    model: str = "cnn"
    """Architecture: 'cnn' (conv backbone + MoE head), 'mlp', or 'vit' (MoE feed-forward blocks)."""
    d_model: int = 64
    """Width of the features the MoE layers route (token width)."""
    expert_hidden: int = 64
    """Hidden width of each expert's two-layer MLP."""
    num_experts: int = 8
    """Experts per MoE layer (E)."""
    top_k: int = 2
    """Experts each token visits (k)."""
    moe_layers: int = 2
    """Number of MoE feed-forward blocks in the 'vit' model (cnn and mlp have one MoE head)."""
    patch_size: int = 2
    """Patch side for the 'vit' model (tokens = patches)."""
    capacity_factor: float | None = None
    """Expert capacity = ceil(factor * T * k / E) tokens; None: dropless."""
    lb_coef: float = 1e-2
    """Coefficient of the load-balance auxiliary loss."""
    z_coef: float = 1e-3
    """Coefficient of the router z-loss."""
    backend: str = "auto"
    """MoE dispatch backend: 'torch', 'triton', or 'auto' (triton on CUDA, torch otherwise)."""

    # --- federated learning ----------------------------------------------
    strategy: str = "fedmoe_da"
    """Federated strategy: fedmoe_da, fedavg, fedprox or local."""
    num_clients: int = 20
    """Number of clients (N)."""
    participation: float = 1.0
    """Fraction of clients sampled each round (at least one)."""
    rounds: int = 30
    """Communication rounds."""
    local_epochs: int = 3
    """Local epochs per round."""
    batch_size: int = 16
    """Local mini-batch size."""
    optimizer: str = "adam"
    """Local optimizer, 'adam' or 'sgd'; its state is reset every round (clients keep only parameters)."""
    lr: float = 3e-3
    """Local learning rate."""
    momentum: float = 0.9
    """SGD momentum (ignored by adam)."""
    weight_decay: float = 0.0
    """Local weight decay."""
    mu: float = 0.01
    """FedProx proximal coefficient."""
    P: int = 8
    """FedMoE-DA: each expert is aggregated with its P most correlated experts in the pool."""
    tau: float = 0.1
    """FedMoE-DA: softmax temperature of the aggregation weights (Eq. 10)."""
    I: int = 5
    """FedMoE-DA: the aggregation matrix A is recomputed every I rounds."""
    fedmoe_backbone: str = "server"
    """FedMoE-DA: backbone channel, 'server' (FedAvg) or 'local' (never leaves the client)."""

    # --- run --------------------------------------------------------------
    seed: int = 0
    """One seed fixes data split, partition, initialisation, sampling and training."""
    device: str = "cpu"
    """Torch device for local training and evaluation."""
    out: str | None = None
    """Run folder to write (config.json, history.csv, ledger.csv, summary.json); None: none."""
    progress: bool = True
    """Show a progress bar over rounds."""

    def __post_init__(self) -> None:
        self.domains = tuple(self.domains)

    # ------------------------------------------------------------------
    def validate(self) -> "ExperimentConfig":
        """Check every field; raise ConfigError naming the first bad one."""

        def bad(name: str, allowed: str) -> None:
            raise ConfigError(f"config.{name}={getattr(self, name)!r} is invalid: {allowed}")

        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                bad(name, "must be one of " + ", ".join(options))

        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                bad(name, f"must be an integer >= {low}")

        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                bad(name, "must be a number > 0")

        choice("dataset", DATASETS)
        choice("partition", PARTITIONS)
        choice("model", MODELS)
        choice("backend", BACKENDS)
        choice("strategy", STRATEGIES)
        choice("fedmoe_backbone", CHANNELS)
        choice("optimizer", OPTIMIZERS)
        if not self.domains or any(d not in DOMAINS for d in self.domains) or len(set(self.domains)) != len(self.domains):
            bad("domains", "must be distinct names from " + ", ".join(DOMAINS))
        if not 0.0 < self.test_fraction < 1.0:
            bad("test_fraction", "must be in (0, 1)")
        if self.max_samples is not None:
            integer("max_samples", 2)
        positive("alpha")
        integer("shards_per_client", 1)
        if not 0.0 < self.domain_purity <= 1.0:
            bad("domain_purity", "must be in (0, 1]")
        integer("min_samples", 1)
        for name in ("d_model", "expert_hidden", "num_experts", "moe_layers", "patch_size"):
            integer(name, 1)
        integer("top_k", 1)
        if self.top_k > self.num_experts:
            bad("top_k", f"must be between 1 and num_experts ({self.num_experts})")
        if self.capacity_factor is not None:
            positive("capacity_factor")
        for name in ("lb_coef", "z_coef", "weight_decay", "mu"):
            if not getattr(self, name) >= 0:
                bad(name, "must be a number >= 0")
        if not 0.0 <= self.momentum < 1.0:
            bad("momentum", "must be in [0, 1)")
        integer("num_clients", 1)
        if not 0.0 < self.participation <= 1.0:
            bad("participation", "must be in (0, 1]")
        integer("rounds", 1)
        integer("local_epochs", 1)
        integer("batch_size", 1)
        positive("lr")
        integer("P", 0)
        positive("tau")
        integer("I", 1)
        integer("seed", 0)
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            bad("device", "must be 'cpu' or 'cuda[:n]'")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                bad("device", "CUDA is not available on this machine: use 'cpu'")
        return self

    # ------------------------------------------------------------------
    def replace(self, **changes: Any) -> "ExperimentConfig":
        """A copy with some fields changed (unknown names raise ConfigError)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}: allowed are " + ", ".join(sorted(names)))
        return dataclasses.replace(self, **changes)

    def smoke(self) -> "ExperimentConfig":
        """A tiny variant of this config for tests and CI (seconds, not minutes)."""
        return self.replace(
            num_clients=min(self.num_clients, 4), rounds=min(self.rounds, 2), local_epochs=1,
            num_experts=min(self.num_experts, 4), top_k=min(self.top_k, 2), d_model=16,
            expert_hidden=16, moe_layers=1, max_samples=self.max_samples or 400, P=min(self.P, 3),
            I=min(self.I, 2), min_samples=min(self.min_samples, 4),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["domains"] = list(self.domains)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        return cls().replace(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def describe_fields() -> dict[str, str]:
    """Field name -> its docstring, read from this module's source (for --help and docs)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(ExperimentConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value).strip()  # type: ignore[attr-defined]
    return docs
