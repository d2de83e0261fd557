"""Experiment configuration: one documented, validated dataclass.

Every field has a one-line docstring (the string under it: the single help
text), a default that runs the main job in a few minutes on 2 CPU cores, and
a *rule* (``rules.py``) saying what is allowed:

    rounds: int = rule(30, Integer(1))
    \"\"\"Communication rounds.\"\"\"

The rules are the one place where choices and ranges live: ``validate()``,
the command line (``cli.py`` builds one flag per field) and the docs
(:func:`describe_fields`, :func:`allowed`, :func:`reference_table`) all read
them. A failed check raises :class:`ConfigError` with one line,
``config.<field>=<value> is invalid: must be <what is allowed>``.

To add a field: write ``name: type = rule(default, Rule)`` plus a one-line
docstring under it; the flag ``--name`` and its help appear by themselves.
``ExperimentConfig.smoke()`` shrinks the sizes for tests and CI and nothing else.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_files import read_table
from .rules import INT_LIMIT, Bool, Choice, ConfigError, Device, Integer, Number, Optional, OutDir, Rule, String, is_int

STRATEGIES = ("fedmoe_da", "fedavg", "fedprox", "fedper", "fedrep", "ditto", "local")
DATASETS = ("digits", "digit_domains", "mnist", "fmnist", "cifar10")
PARTITIONS = ("domain_dirichlet", "dirichlet", "shards", "domain", "iid")
MODELS = ("cnn", "mlp", "vit")
BACKENDS = ("auto", "torch", "dense", "triton")
DOMAINS = ("original", "rotate", "invert", "noise", "blur")
DIGIT_DOMAINS = ("mnist", "usps", "mnistm", "synth")
CHANNELS = ("server", "local")
DTYPES = ("float32", "float64")
ENGINES = ("stacked", "loop")   # fl/engine.py and fl/client.py; the ViT always runs the loop
OPTIMIZERS = ("adam", "sgd")
PROXIES = ("gate", "gate_delta", "gate_centred", "gate_signature", "domain")
GATE_INITS = ("shared", "per_client")
SYNCS = ("every_round", "refresh")
EVAL_SPLITS = ("test", "validation")
COMPARE_STRATEGIES = ("fedmoe_da", "fedmoe_da:proxy=gate_signature", "fedper", "fedavg", "local")
"""What ``compare`` runs by default: FedMoE-DA as configured (its defaults chosen on validation data by
benchmarks/method_study.py, which picked the paper's gate proxy), its domain-aware variant, and three baselines."""
SERVER_AGGREGATES = ("mean", "trimmed_mean", "median")


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class DomainNames(Rule):
    """A non-empty tuple of distinct domain names of the config's dataset."""

    def accepts(self, value):
        raise TypeError("DomainNames depends on the dataset: use problem(value, config)")

    def describe(self):
        return (f"distinct names from {', '.join(DIGIT_DOMAINS)} for dataset digit_domains, "
                f"from {', '.join(DOMAINS)} for the others")

    def problem(self, value, config):
        names = dataset_domains(config.dataset)
        ok = (isinstance(value, tuple) and len(value) > 0 and all(isinstance(v, str) and v in names for v in value)
              and len(set(value)) == len(value))
        return None if ok else f"must be distinct names from {', '.join(names)} (dataset {config.dataset})"


def rule(default: Any, check: Rule) -> Any:
    """A dataclass field with its default and its rule (read by validate, the CLI and the docs)."""
    return field(default=default, metadata={"rule": check})


def dataset_domains(dataset: str) -> tuple[str, ...]:
    """The domain names a dataset offers: its own sources for digit_domains, the synthetic transforms otherwise."""
    return DIGIT_DOMAINS if dataset == "digit_domains" else DOMAINS


# --------------------------------------------------------------------------- the config
@dataclass
class ExperimentConfig:
    # --- data -------------------------------------------------------------
    dataset: str = rule("digit_domains", Choice(DATASETS))
    """Dataset: digits (8x8, embedded), digit_domains (embedded mnist/usps/mnistm/synth), or a download."""
    data_dir: str = rule("data", String())
    """Where real datasets are downloaded once and cached."""
    domains: tuple[str, ...] | None = rule(None, Optional(DomainNames()))
    """Domains each sample is assigned to (one each); None: all the dataset's own domains."""
    test_fraction: float = rule(0.4, Number(0, 1, low_open=True, high_open=True))
    """Fraction of the dataset held out for testing (split once, stratified, seeded)."""
    max_samples: int | None = rule(3200, Optional(Integer(2)))
    """Use at most this many samples of the dataset (None: all); 3200: ~100 training images per client, the regime
    FedMoE-DA targets."""
    partition: str = rule("domain", Choice(PARTITIONS))
    """How training samples are dealt to clients (domain: one home domain each; domain_dirichlet: x Dirichlet label
    skew)."""
    alpha: float = rule(0.5, Number(0, low_open=True))
    """Dirichlet concentration of the label skew (smaller: more skewed)."""
    shards_per_client: int = rule(2, Integer(1))
    """Label-sorted shards per client for the 'shards' partition."""
    domain_purity: float = rule(0.9, Number(0, 1, low_open=True))
    """Share of a client's data drawn from its home domain ('domain_dirichlet', 'domain')."""
    min_samples: int = rule(8, Integer(1))
    """Each client gets at least this many training samples (Dirichlet draws are retried)."""

    # --- model ------------------------------------------------------------
    model: str = rule("cnn", Choice(MODELS))
    """Architecture: cnn (conv backbone + MoE head), mlp, or vit (MoE feed-forward blocks)."""
    d_model: int = rule(64, Integer(1))
    """Width of the features the MoE layers route (token width)."""
    expert_hidden: int = rule(64, Integer(1))
    """Hidden width of each expert's two-layer MLP."""
    num_experts: int = rule(8, Integer(1))
    """Experts per MoE layer (E)."""
    top_k: int = rule(2, Integer(1))
    """Experts each token visits (k); at most num_experts."""
    moe_layers: int = rule(2, Integer(1))
    """Number of MoE feed-forward blocks in the 'vit' model (cnn and mlp have one MoE head)."""
    patch_size: int = rule(2, Integer(1))
    """Patch side for the 'vit' model (tokens = patches)."""
    capacity_factor: float | None = rule(None, Optional(Number(0, low_open=True)))
    """Expert capacity = ceil(factor * T * k / E) tokens; None: dropless."""
    lb_coef: float = rule(0.0, Number(0))
    """Coefficient of the load-balance auxiliary loss (0: it cost FedMoE-DA 13 points in benchmarks/method_study.py)."""
    z_coef: float = rule(1e-3, Number(0))
    """Coefficient of the router z-loss."""
    backend: str = rule("auto", Choice(BACKENDS))
    """MoE dispatch backend: torch (sort-based reference), dense (all experts, masked), triton; auto: triton on CUDA,
    dense for small CPU problems, torch otherwise."""

    # --- federated learning ----------------------------------------------
    strategy: str = rule("fedmoe_da", Choice(STRATEGIES))
    """Federated strategy."""
    num_clients: int = rule(20, Integer(1))
    """Number of clients (N)."""
    participation: float = rule(1.0, Number(0, 1, low_open=True))
    """Fraction of clients sampled each round (at least one)."""
    rounds: int = rule(30, Integer(1))
    """Communication rounds."""
    local_epochs: int = rule(3, Integer(1))
    """Local epochs per round."""
    batch_size: int = rule(16, Integer(1))
    """Local mini-batch size."""
    optimizer: str = rule("adam", Choice(OPTIMIZERS))
    """Local optimizer; its state is reset every round (clients keep only parameters)."""
    lr: float = rule(3e-3, Number(0, low_open=True))
    """Local learning rate."""
    momentum: float = rule(0.9, Number(0, 1, high_open=True))
    """SGD momentum (ignored by adam)."""
    weight_decay: float = rule(0.0, Number(0))
    """Local weight decay."""
    mu: float = rule(0.01, Number(0))
    """FedProx proximal coefficient."""
    ditto_lambda: float = rule(0.1, Number(0))
    """Ditto: regularisation of each personal model towards the global one."""
    head_epochs: int = rule(1, Integer(0))
    """FedRep: local epochs on the head (body frozen) before the body epochs."""
    P: int = rule(3, Integer(0))
    """FedMoE-DA: each expert is aggregated with its P most correlated experts in the pool (default: chosen on
    validation)."""
    tau: float = rule(0.1, Number(0, low_open=True))
    """FedMoE-DA: softmax temperature of the aggregation weights (Eq. 10)."""
    I: int = rule(1, Integer(1))   # noqa: E741 (the paper's symbol for the refresh interval)
    """FedMoE-DA: the aggregation matrix A is recomputed every I rounds (1: gates are small, uploading them every round
    is cheap)."""
    fedmoe_backbone: str = rule("server", Choice(CHANNELS))
    """FedMoE-DA: backbone channel, server (FedAvg) or local (never leaves the client)."""
    proxy: str = rule("gate", Choice(PROXIES))
    """FedMoE-DA: expert proxy: gate row (paper), gate_delta (minus init), gate_centred (over pool), gate_signature
    (client fingerprint + slot), domain (oracle)."""
    gate_init: str = rule("shared", Choice(GATE_INITS))
    """FedMoE-DA: all clients start from one gate initialisation (shared) or each from its own (per_client)."""
    sync: str = rule("every_round", Choice(SYNCS))
    """FedMoE-DA: apply Eq. 11 every round with the last A (every_round) or only at refresh rounds (refresh)."""
    min_correlation: float | None = rule(None, Optional(Number(-1, 1, high_open=True)))
    """FedMoE-DA: pool pairs with R_ij <= this are never selected (ties at zero); None: Eq. 9 as published."""

    # --- peers that lie, clients that drop (fl/robust.py) -----------------
    p2p_screen: float | None = rule(None, Optional(Number(0, low_open=True)))
    """FedMoE-DA: a client rejects a peer's expert farther from its own expert of that slot than this x the own
    expert's norm; None: off."""
    upload_screen: float | None = rule(None, Optional(Number(0, low_open=True)))
    """Server: reject an upload farther from the coordinate-wise median of the round's uploads than this x the median's
    norm; None: off."""
    server_aggregate: str = rule("mean", Choice(SERVER_AGGREGATES))
    """Server: combine uploads by mean (FedAvg, weighted by data size), trimmed_mean or median (coordinate-wise,
    unweighted)."""
    trim_fraction: float = rule(0.1, Number(0, 0.5, high_open=True))
    """server_aggregate=trimmed_mean: share of uploads dropped at each end of every coordinate."""
    dropout: float = rule(0.0, Number(0, 1))
    """Probability that a participant drops after local training: it sends and receives nothing that round."""

    # --- evaluation -------------------------------------------------------
    eval_split: str = rule("test", Choice(EVAL_SPLITS))
    """Held-out split each client is evaluated on: test, or validation (carved from its training data: tuning)."""
    val_fraction: float = rule(0.2, Number(0, 1, low_open=True, high_open=True))
    """Share of each client's training data held out when eval_split is validation."""

    # --- run --------------------------------------------------------------
    label: str | None = rule(None, Optional(String()))
    """Name of the run in tables and plots (compare sets it to the strategy entry); None: the strategy."""
    seed: int = rule(0, Integer(0, INT_LIMIT))
    """One seed fixes data split, partition, initialisation, sampling and training."""
    device: str = rule("cpu", Device())
    """Torch device for local training and evaluation."""
    threads: int = rule(1, Integer(1))
    """Torch intra-op threads of the run (on 2 busy cores, 2 threads are slower than 1)."""
    dtype: str = rule("float32", Choice(DTYPES))
    """Parameters and inputs: float32, or float64 (slower; the engine tests compare in float64, rounding then hardly
    depends on the CPU)."""
    engine: str = rule("stacked", Choice(ENGINES))
    """Local training and evaluation: stacked (every client at once; CNN, MLP) or loop (one after another, the
    reference)."""
    dist_timeout: float = rule(30.0, Number(0, low_open=True))
    """Under torchrun: seconds a rank waits for another before the run stops with an error naming it."""
    out: str | None = rule(None, Optional(OutDir()))
    """Run folder to write (config.json, history.csv, ledger.csv, summary.json); None: none."""
    checkpoint_every: int = rule(1, Integer(0))
    """Write the run folder's checkpoint.pt every K rounds (0: never), from which --resume continues."""
    progress: bool = rule(True, Bool())
    """Show a progress bar over rounds."""

    def __post_init__(self) -> None:
        if isinstance(self.domains, list):   # JSON and TOML give lists
            self.domains = tuple(self.domains)

    # ------------------------------------------------------------------
    def validate(self) -> "ExperimentConfig":
        """Check every field by its rule, then the cross-field limits; raise ConfigError naming the first bad one."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = f.metadata["rule"].problem(value, self)
            if problem is not None:
                raise ConfigError(f"config.{f.name}={value!r} is invalid: {problem}")
        if self.top_k > self.num_experts:
            raise ConfigError(f"config.top_k={self.top_k!r} is invalid: must be between 1 and num_experts "
                              f"({self.num_experts})")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"config.device={self.device!r} is invalid: CUDA is not available on this "
                                  "machine: use 'cpu'")
        return self

    def domain_names(self) -> tuple[str, ...]:
        """The domains this run uses: ``domains``, or all of the dataset's own."""
        return self.domains if self.domains is not None else dataset_domains(self.dataset)

    # ------------------------------------------------------------------
    def replace(self, **changes: Any) -> "ExperimentConfig":
        """A copy with some fields changed (unknown names raise ConfigError)."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}: allowed are " + ", ".join(sorted(names)))
        return dataclasses.replace(self, **changes)

    def smoke(self) -> "ExperimentConfig":
        """This config with its sizes shrunk for tests and CI (seconds, not minutes); nothing else changes.

        Each size becomes at most: num_clients 4, max_samples 400 (None: 400), d_model 16,
        expert_hidden 16, num_experts 4, top_k num_experts, moe_layers 1, rounds 2,
        local_epochs 1, min_samples 4. Smaller values are kept; every other field (P, I, tau,
        strategy, lr, ...) is left exactly as set.
        """
        def at_most(name: str, cap: int) -> Any:
            value = getattr(self, name)
            return min(value, cap) if is_int(value) else value   # a bad value is left for validate()

        caps = {"num_clients": 4, "d_model": 16, "expert_hidden": 16, "num_experts": 4, "moe_layers": 1,
                "rounds": 2, "local_epochs": 1, "min_samples": 4}
        small = {name: at_most(name, cap) for name, cap in caps.items()}
        small["max_samples"] = 400 if self.max_samples is None else at_most("max_samples", 400)
        if is_int(self.top_k) and is_int(small["num_experts"]):
            small["top_k"] = min(self.top_k, small["num_experts"])
        return self.replace(**small)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.domains is not None:
            d["domains"] = list(self.domains)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        return cls().replace(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "ExperimentConfig":
        """The config in a JSON or TOML file of fields, or in a run folder's config.json (not validated)."""
        return cls().replace(**read_config_file(path)[0])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# --------------------------------------------------------------------------- files
def read_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fields, extras) of a .json or .toml file (``config_files.read_table``); unknown fields raise ConfigError."""
    data, extras, where = read_table(path)
    names = [f.name for f in dataclasses.fields(ExperimentConfig)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown config field {unknown[0]!r}: allowed are " + ", ".join(sorted(names)))
    return dict(data), extras


# --------------------------------------------------------------------------- docs
def describe_fields() -> dict[str, str]:
    """Field name -> its docstring, read from this module's source, whitespace joined (for --help and docs)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(ExperimentConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[attr-defined]
    return docs


def field_rule(name: str) -> Rule:
    """The rule of one field."""
    return {f.name: f.metadata["rule"] for f in dataclasses.fields(ExperimentConfig)}[name]


def allowed(name: str) -> str:
    """What a field allows, in words ('one of a, b', 'a finite number > 0', ...)."""
    return field_rule(name).describe()


def reference_table() -> str:
    """A markdown table of every field: default, what is allowed, meaning (for the README)."""
    docs = describe_fields()
    rows = ["| field | default | allowed | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(ExperimentConfig):
        rows.append(f"| `{f.name}` | `{f.default!r}` | {allowed(f.name)} | {docs[f.name]} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- text -> value
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_value(name: str, text: str) -> Any:
    """A field's value from its text form (command line, ``name:field=value`` entries), by its annotation.

    ``none`` gives None for optional fields; tuples are comma-separated; the
    result is not validated (``validate`` says what is wrong with it).
    """
    types = {f.name: str(f.type) for f in dataclasses.fields(ExperimentConfig)}
    if name not in types:
        raise ConfigError(f"unknown config field {name!r}: allowed are " + ", ".join(sorted(types)))
    kind, text = types[name], text.strip()
    if "None" in kind and text.lower() == "none":
        return None
    try:
        if kind.startswith("tuple"):
            return tuple(t.strip() for t in text.split(",") if t.strip())
        if kind.startswith("bool"):
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError(text)
            return text.lower() in _TRUE
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ConfigError(f"config.{name}={text!r} is invalid: must be {allowed(name)}") from None
    return text
