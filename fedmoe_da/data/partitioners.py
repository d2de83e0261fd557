"""Partitioners: deal the training samples to clients, and each client a matching test split.

All partitioners but ``shards`` are one mechanism. For a cell of samples with
domain d and label c, client k's share is proportional to

    q[k | d, c]  ∝  W[k, d] * L[k, c]

* label skew (``dirichlet``): L[:, c] ~ Dir(alpha * 1_N) for every class c,
  i.e. per-class proportions over clients (the common convention of Hsu et
  al. 2019; the other convention, per-client proportions over classes, is not
  offered); otherwise L = 1.
* domain skew (``domain``): client k has home domain k mod D, W[k, home] =
  purity and the rest (1 - purity) / (D - 1); otherwise W = 1.
* ``domain_dirichlet`` is the product: each client mostly one domain, skewed labels.
* ``iid``: W = L = 1, a shuffled even split.

The cell's shuffled indices are cut at the cumulative shares, so every sample
goes to exactly one client. Draws are repeated (at most ``MAX_TRIES`` times)
until every client has ``min_samples``; after that the partition fails with a
message saying what to change, so it always terminates.

``shards`` (McMahan et al. 2017): sort by label, cut into N * s shards, give
each client s of them at random.

Test samples are dealt by ``assign_test``: each (domain, label) cell of the
test set is split among clients in proportion to their training counts of
that cell, so a client's held-out split looks like its training data.
"""
from __future__ import annotations

import numpy as np

PARTITIONERS = ("domain_dirichlet", "dirichlet", "shards", "domain", "iid")
MAX_TRIES = 100


def _cut(indices: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    """Split ``indices`` into len(shares) consecutive pieces of sizes round(cumulative share)."""
    bounds = np.round(np.cumsum(shares) / shares.sum() * len(indices)).astype(int)[:-1]
    return np.split(indices, bounds)


def affinity(num_clients: int, num_domains: int, purity: float) -> np.ndarray:
    """W (N, D): client k's weight for domain d; home domain k mod D gets ``purity``."""
    if num_domains == 1:
        return np.ones((num_clients, 1))
    W = np.full((num_clients, num_domains), (1.0 - purity) / (num_domains - 1))
    W[np.arange(num_clients), np.arange(num_clients) % num_domains] = purity
    W[:, W.sum(axis=0) == 0] = 1.0   # a domain that is nobody's home (purity 1, N < D) is shared evenly
    return W


def _by_cells(labels, domains, num_clients, weight, rng) -> list[np.ndarray]:
    """Deal each (domain, label) cell by the client weights weight(d, c) -> (N,); zero weight: unassigned."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for d in np.unique(domains):
        for c in np.unique(labels):
            cell = np.flatnonzero((domains == d) & (labels == c))
            if cell.size == 0:
                continue
            w = weight(d, c)
            if w.sum() <= 0:
                continue
            for k, piece in enumerate(_cut(rng.permutation(cell), w)):
                parts[k].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def partition(
    labels: np.ndarray, domains: np.ndarray, num_clients: int, scheme: str, rng: np.random.Generator,
    alpha: float = 0.5, shards_per_client: int = 2, purity: float = 0.9, min_samples: int = 1,
) -> list[np.ndarray]:
    """Training-sample indices of each client (sorted); together they cover every sample once."""
    labels, domains = np.asarray(labels), np.asarray(domains)
    n, N = len(labels), num_clients
    if scheme not in PARTITIONERS:
        raise ValueError(f"partition={scheme!r} is invalid: must be one of {', '.join(PARTITIONERS)}")
    if N * min_samples > n:
        raise ValueError(f"num_clients={N} is invalid: {n} training samples cannot give every client "
                         f"min_samples={min_samples}")
    if scheme == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(n), N)]
    if scheme == "shards":
        num_shards = N * shards_per_client
        if num_shards > n:
            raise ValueError(f"shards_per_client={shards_per_client} is invalid: {num_shards} shards "
                             f"exceed the {n} training samples")
        order = np.lexsort((rng.random(n), labels))                  # by label, random within label
        shards = np.array_split(order, num_shards)
        deal = rng.permutation(num_shards).reshape(N, shards_per_client)
        parts = [np.sort(np.concatenate([shards[s] for s in row])) for row in deal]
        if min(len(p) for p in parts) < min_samples:
            raise ValueError(f"partition='shards' gives a client {min(len(p) for p in parts)} samples, below "
                             f"min_samples={min_samples}: lower num_clients, shards_per_client or min_samples")
        return parts

    num_classes, num_domains = int(labels.max()) + 1, int(domains.max()) + 1
    W = affinity(N, num_domains, purity) if scheme in ("domain", "domain_dirichlet") else np.ones((N, num_domains))
    for _ in range(MAX_TRIES):
        if scheme in ("dirichlet", "domain_dirichlet"):
            L = rng.dirichlet(np.full(N, alpha), size=num_classes).T   # (N, C): column c ~ Dir(alpha 1_N)
        else:
            L = np.ones((N, num_classes))
        parts = _by_cells(labels, domains, N, lambda d, c: W[:, d] * L[:, c], rng)
        if min(len(p) for p in parts) >= min_samples:
            return parts
    raise ValueError(f"partition={scheme!r} could not give all {N} clients min_samples={min_samples} in "
                     f"{MAX_TRIES} draws: raise alpha, or lower num_clients or min_samples")


def assign_test(
    train_parts: list[np.ndarray], train_labels: np.ndarray, train_domains: np.ndarray,
    test_labels: np.ndarray, test_domains: np.ndarray, rng: np.random.Generator,
) -> list[np.ndarray]:
    """Deal each (domain, label) test cell in proportion to the clients' training counts of that cell.

    Test samples of a cell that no client trains on are left unassigned.
    """
    N = len(train_parts)
    num_domains = int(max(train_domains.max(), test_domains.max())) + 1
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    counts = np.zeros((N, num_domains, num_classes))
    for k, idx in enumerate(train_parts):
        np.add.at(counts[k], (train_domains[idx], train_labels[idx]), 1)
    return _by_cells(test_labels, test_domains, N, lambda d, c: counts[:, d, c], rng)
