"""The dataset of an experiment: loaded, split into train and test once (seeded), each sample tagged with a domain.

    data = build(config)   # MultiDomainDataset

The tiny embedded set is scikit-learn's handwritten digits (1797 8x8 images,
shipped with scikit-learn, no download). After the train/test split each
sample gets one domain (uniformly at random, seeded) and that domain's
transform (see ``domains.py``). The real datasets (MNIST, Fashion-MNIST,
CIFAR-10, ``real.py``) get synthetic domains the same way.
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


def build(config: ExperimentConfig) -> MultiDomainDataset:
    """The dataset of ``config``: split once (stratified, seeded), domains assigned and applied."""
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
    x_tr = apply_domains(torch.from_numpy(x), d_tr, config.domain_names(), seed=seeds.integer_seed(config.seed, "transforms", 0))
    x_te = apply_domains(torch.from_numpy(x_test), d_te, config.domain_names(),
                         seed=seeds.integer_seed(config.seed, "transforms", 1))
    return MultiDomainDataset(config.dataset, x_tr, torch.from_numpy(y), d_tr, x_te, torch.from_numpy(y_test),
                              d_te, classes, config.domain_names())


