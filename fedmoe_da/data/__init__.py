"""Data: the embedded multi-domain default, real-dataset loaders, and partitioners.

    data = build(config)              # MultiDomainDataset: split train/test once, seeded
    clients = partition(data, config) # list[ClientData], one per client

The embedded default is scikit-learn's handwritten digits (1797 8x8 images,
shipped with scikit-learn, no download). After the train/test split each
sample gets one domain (uniformly at random, seeded) and that domain's
transform (see ``domains.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import ConfigError, ExperimentConfig
from . import partition as _partition
from .domains import DOMAIN_TRANSFORMS, apply_domains


@dataclass
class MultiDomainDataset:
    """A dataset split into train and test once, each sample tagged with a domain."""

    name: str
    x_train: Tensor   # (n, C, H, W) float32 in [0, 1]
    y_train: Tensor   # (n,) int64
    d_train: Tensor   # (n,) int64 domain index
    x_test: Tensor
    y_test: Tensor
    d_test: Tensor
    classes: list[str]
    domains: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class ClientData:
    """One client's private data: a training split and a held-out split that resembles it."""

    client: int
    x_train: Tensor
    y_train: Tensor
    d_train: Tensor
    x_test: Tensor
    y_test: Tensor
    d_test: Tensor

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])


def _load_raw(config: ExperimentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]:
    """(x, y) of the whole set, or also a given test split for real datasets."""
    if config.dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[:, None]          # (1797, 1, 8, 8)
        return x, digits.target.astype(np.int64), None, None, [str(c) for c in range(10)]
    from .real import load_real

    real = load_real(config.dataset, root=f"{config.data_dir}", download=True)
    return (real.x_train.numpy(), real.y_train.numpy(), real.x_test.numpy(), real.y_test.numpy(),
            list(real.classes))


def _split(config: ExperimentConfig, x, y, x_test, y_test):
    """Train/test split once (stratified, seeded), unless the dataset comes with its own test split."""
    from sklearn.model_selection import train_test_split

    if x_test is None:
        if config.max_samples is not None and config.max_samples < len(y):
            keep, _ = train_test_split(np.arange(len(y)), train_size=config.max_samples, stratify=y,
                                       random_state=config.seed)
            x, y = x[keep], y[keep]
        tr, te = train_test_split(np.arange(len(y)), test_size=config.test_fraction, stratify=y,
                                  random_state=config.seed)
        return x[tr], y[tr], x[te], y[te]
    if config.max_samples is not None:
        n_test = max(1, round(config.max_samples * config.test_fraction))
        x, y = x[: config.max_samples - n_test], y[: config.max_samples - n_test]
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    return x, y, x_test, y_test


def build(config: ExperimentConfig) -> MultiDomainDataset:
    """The dataset of ``config``: split once (stratified, seeded), domains assigned and applied."""
    rng = np.random.default_rng(config.seed)
    x, y, x_test, y_test, classes = _load_raw(config)
    try:
        x, y, x_test, y_test = _split(config, x, y, x_test, y_test)
    except ValueError as exc:   # scikit-learn: too few samples to stratify
        raise ConfigError(f"config.max_samples={config.max_samples!r} is invalid for {config.dataset}: "
                          f"{str(exc).splitlines()[0]}") from None
    D = len(config.domains)
    d_tr = torch.from_numpy(rng.integers(0, D, size=len(y)))
    d_te = torch.from_numpy(rng.integers(0, D, size=len(y_test)))
    x_tr = apply_domains(torch.from_numpy(x), d_tr, config.domains, seed=config.seed)
    x_te = apply_domains(torch.from_numpy(x_test), d_te, config.domains, seed=config.seed + 1)
    return MultiDomainDataset(config.dataset, x_tr, torch.from_numpy(y), d_tr, x_te, torch.from_numpy(y_test),
                              d_te, classes, tuple(config.domains))


def partition(data: MultiDomainDataset, config: ExperimentConfig) -> list[ClientData]:
    """Deal ``data`` to ``config.num_clients`` clients with ``config.partition`` (see partition.py)."""
    n = len(data.y_train)
    if config.num_clients > n:
        raise ConfigError(f"config.num_clients={config.num_clients} is invalid: more clients than the "
                          f"{n} training samples")
    rng = np.random.default_rng([config.seed, 1])
    y, d = data.y_train.numpy(), data.d_train.numpy()
    try:
        train_parts = _partition.partition(
            y, d, config.num_clients, config.partition, rng, alpha=config.alpha,
            shards_per_client=config.shards_per_client, purity=config.domain_purity,
            min_samples=config.min_samples)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    test_parts = _partition.assign_test(train_parts, y, d, data.y_test.numpy(), data.d_test.numpy(), rng)
    return [
        ClientData(k, data.x_train[tr], data.y_train[tr], data.d_train[tr],
                   data.x_test[te], data.y_test[te], data.d_test[te])
        for k, (tr, te) in enumerate(zip(train_parts, test_parts))
    ]


def client_counts(clients: list[ClientData], data: MultiDomainDataset, by: str = "label",
                  split: str = "train") -> pd.DataFrame:
    """Per-client sample counts as a table: rows = clients, columns = labels (or domains)."""
    if by not in ("label", "domain") or split not in ("train", "test"):
        raise ValueError(f"by={by!r}, split={split!r} are invalid: by is 'label' or 'domain', split 'train' or 'test'")
    names = data.classes if by == "label" else list(data.domains)
    rows = []
    for c in clients:
        values = {"label": {"train": c.y_train, "test": c.y_test}, "domain": {"train": c.d_train, "test": c.d_test}}
        counts = torch.bincount(values[by][split], minlength=len(names)).tolist()
        rows.append(counts)
    df = pd.DataFrame(rows, columns=names)
    df.index.name = "client"
    df.columns.name = by
    return df


__all__ = ["MultiDomainDataset", "ClientData", "build", "partition", "client_counts", "DOMAIN_TRANSFORMS"]
