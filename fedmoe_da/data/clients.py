"""Clients' private data: deal a dataset to clients with a partitioner, and count what each got.

    clients = partition(data, config)   # list[ClientData], one per client
    table = client_table(clients, data) # one row per client: home domain, sizes, domain and label counts

With ``config.eval_split="validation"`` each client's held-out split is carved
from its own training data instead (``val_fraction`` of it, seeded), and the
test set is not used at all: hyper-parameters are chosen that way, and test
numbers are reported once with the chosen settings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .. import seeds
from ..config import ConfigError, ExperimentConfig
from . import partitioners
from .datasets import MultiDomainDataset


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


def partition(data: MultiDomainDataset, config: ExperimentConfig) -> list[ClientData]:
    """Deal ``data`` to ``config.num_clients`` clients with ``config.partition`` (see partitioners.py)."""
    n = len(data.y_train)
    if config.num_clients > n:
        raise ConfigError(f"config.num_clients={config.num_clients} is invalid: more clients than the "
                          f"{n} training samples")
    rng = seeds.generator(config.seed, "partition")
    y, d = data.y_train.numpy(), data.d_train.numpy()
    try:
        train_parts = partitioners.partition(
            y, d, config.num_clients, config.partition, rng, alpha=config.alpha,
            shards_per_client=config.shards_per_client, purity=config.domain_purity,
            min_samples=config.min_samples)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.eval_split == "validation":
        val_rng = seeds.generator(config.seed, "validation")
        held = [np.sort(val_rng.permutation(tr)[:int(round(config.val_fraction * len(tr)))]) for tr in train_parts]
        train_parts = [np.setdiff1d(tr, va) for tr, va in zip(train_parts, held)]
        return [ClientData(k, data.x_train[tr], data.y_train[tr], data.d_train[tr],
                           data.x_train[va], data.y_train[va], data.d_train[va])
                for k, (tr, va) in enumerate(zip(train_parts, held))]
    test_parts = partitioners.assign_test(train_parts, y, d, data.y_test.numpy(), data.d_test.numpy(), rng)
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


def client_table(clients: list[ClientData], data: MultiDomainDataset) -> pd.DataFrame:
    """One row per client: home domain (its most frequent training domain), sizes, domain and label counts."""
    domains = client_counts(clients, data, by="domain")
    labels = client_counts(clients, data, by="label")
    home = domains.to_numpy().argmax(axis=1)
    table = pd.DataFrame({"client": [c.client for c in clients], "home_domain": home,
                          "home_domain_name": [data.domains[h] for h in home],
                          "n_train": [c.num_train for c in clients], "n_test": [len(c.y_test) for c in clients]})
    counts = pd.concat([domains.add_prefix("domain:"), labels.add_prefix("label:")], axis=1).reset_index(drop=True)
    return pd.concat([table, counts], axis=1)
