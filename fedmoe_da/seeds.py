"""Seed streams: one experiment seed, an independent random stream per named purpose.

    rng  = generator(seed, "partition")            # numpy Generator
    s    = integer_seed(seed, "batches", rnd, k)   # an int for torch.Generator / scikit-learn

Each purpose is a child of ``numpy.random.SeedSequence(seed)`` with its own
spawn key (the purpose's position in ``PURPOSES``, then any extra integers
such as round and client), so streams never overlap, adding a purpose at the
end changes no existing stream, and a client's batch order does not depend on
who trained before it.
"""
from __future__ import annotations

import numpy as np

PURPOSES = (
    "split",          # train/test split of the dataset (scikit-learn random_state)
    "domains",        # which synthetic domain each sample gets
    "transforms",     # the randomness inside the domain transforms (noise), per split
    "partition",      # the partitioner's draws and the test deal
    "init",           # model initialisation (one shared init, or one per client)
    "participants",   # which clients take part in each round
    "batches",        # mini-batch order of one client in one round
    "validation",     # which training samples each client holds out for validation
    "dropout",        # which participants drop after local training in each round
)


def sequence(seed: int, purpose: str, *key: int) -> np.random.SeedSequence:
    if purpose not in PURPOSES:
        raise ValueError(f"seed purpose {purpose!r} is invalid: must be one of {', '.join(PURPOSES)}")
    return np.random.SeedSequence(seed, spawn_key=(PURPOSES.index(purpose), *key))


def generator(seed: int, purpose: str, *key: int) -> np.random.Generator:
    """A numpy Generator for ``purpose`` (and ``key``, e.g. round and client) under ``seed``."""
    return np.random.default_rng(sequence(seed, purpose, *key))


def integer_seed(seed: int, purpose: str, *key: int) -> int:
    """A 31-bit integer seed for ``purpose``: valid for torch.Generator and scikit-learn's random_state."""
    return int(sequence(seed, purpose, *key).generate_state(1, np.uint32)[0] >> 1)
