"""The dataset of an experiment: loaded, split into train and test once (seeded), each sample tagged with a domain.

    data = build(config)   # MultiDomainDataset

* ``digit_domains`` (the default): four sources of digits with real domain
  shift (MNIST, USPS-like, MNIST-M-style, printed), built offline from data
  that pip packages ship (``digit_domains.py``); a sample's domain is its source.
* ``digits``: the tiny set, scikit-learn's 1797 8x8 digits. After the split each
  sample gets one synthetic domain (uniformly at random, seeded) and that
  domain's transform (``domains.py``). The real datasets (MNIST, Fashion-MNIST,
  CIFAR-10, ``real.py``) get synthetic domains the same way.

Splits are stratified by label (and by domain, where domains are sources).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import seeds
from ..config import ConfigError, ExperimentConfig
from .domains import apply_domains


@dataclass
class MultiDomainDataset:
    """A dataset split into train and test once, each sample tagged with a domain."""

    name: str
    x_train: Tensor   # (n, C, H, W) in config.dtype
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


def _load_raw(
    config: ExperimentConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]:
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
                                       random_state=seeds.integer_seed(config.seed, "split", 0))
            x, y = x[keep], y[keep]
        tr, te = train_test_split(np.arange(len(y)), test_size=config.test_fraction, stratify=y,
                                  random_state=seeds.integer_seed(config.seed, "split", 1))
        return x[tr], y[tr], x[te], y[te]
    if config.max_samples is not None:
        n_test = max(1, round(config.max_samples * config.test_fraction))
        x, y = x[: config.max_samples - n_test], y[: config.max_samples - n_test]
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    return x, y, x_test, y_test


def _build_sources(config: ExperimentConfig) -> MultiDomainDataset:
    """digit_domains: keep the chosen sources, then subsample and split stratified by (domain, label)."""
    from sklearn.model_selection import train_test_split

    from .digit_domains import load_digit_domains

    full = load_digit_domains(config.data_dir)
    names = config.domain_names()
    source = np.array([full.names.index(n) for n in names])
    keep = np.flatnonzero(np.isin(full.domain, source))
    remap = np.full(len(full.names), -1)
    remap[source] = np.arange(len(source))
    d = remap[full.domain[keep]]                                                       # (n,) index into names
    y = full.y[keep]
    cell = d * 10 + y                                                                  # (n,) stratum
    idx = np.arange(len(keep))
    try:
        if config.max_samples is not None and config.max_samples < len(idx):
            idx, _ = train_test_split(idx, train_size=config.max_samples, stratify=cell,
                                      random_state=seeds.integer_seed(config.seed, "split", 0))
        tr, te = train_test_split(idx, test_size=config.test_fraction, stratify=cell[idx],
                                  random_state=seeds.integer_seed(config.seed, "split", 1))
    except ValueError as exc:   # scikit-learn: too few samples to stratify
        raise ConfigError(f"config.max_samples={config.max_samples!r} is invalid for {config.dataset}: "
                          f"{str(exc).splitlines()[0]}") from None
    # standardised per channel with the whole benchmark's mean and std (fixed by the build, not by a client)
    mean, std = full.x.mean(axis=(0, 2, 3), keepdims=True), full.x.std(axis=(0, 2, 3), keepdims=True)
    x = torch.from_numpy((full.x[keep] - mean) / std)                                  # (n, 3, 28, 28)
    y_t, d_t = torch.from_numpy(y), torch.from_numpy(d)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return MultiDomainDataset(config.dataset, x[tr], y_t[tr], d_t[tr], x[te], y_t[te], d_t[te],
                              [str(c) for c in range(10)], names)


def build(config: ExperimentConfig) -> MultiDomainDataset:
    """The dataset of ``config``: split once (stratified, seeded), each sample with its domain; images in
    ``config.dtype``."""
    data = _build_sources(config) if config.dataset == "digit_domains" else _build_transformed(config)
    dtype = getattr(torch, config.dtype)
    data.x_train, data.x_test = data.x_train.to(dtype), data.x_test.to(dtype)
    return data


def _build_transformed(config: ExperimentConfig) -> MultiDomainDataset:
    """digits and the real datasets: split, then a synthetic domain per sample and its transform."""
    rng = seeds.generator(config.seed, "domains")
    x, y, x_test, y_test, classes = _load_raw(config)
    try:
        x, y, x_test, y_test = _split(config, x, y, x_test, y_test)
    except ValueError as exc:   # scikit-learn: too few samples to stratify
        raise ConfigError(f"config.max_samples={config.max_samples!r} is invalid for {config.dataset}: "
                          f"{str(exc).splitlines()[0]}") from None
    D = len(config.domain_names())
    d_tr = torch.from_numpy(rng.integers(0, D, size=len(y)))
    d_te = torch.from_numpy(rng.integers(0, D, size=len(y_test)))
    x_tr = apply_domains(torch.from_numpy(x), d_tr, config.domain_names(),
                         seed=seeds.integer_seed(config.seed, "transforms", 0))
    x_te = apply_domains(torch.from_numpy(x_test), d_te, config.domain_names(),
                         seed=seeds.integer_seed(config.seed, "transforms", 1))
    return MultiDomainDataset(config.dataset, x_tr, torch.from_numpy(y), d_tr, x_te, torch.from_numpy(y_test),
                              d_te, classes, config.domain_names())


