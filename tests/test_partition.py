"""Partitioners and the multi-domain dataset, checked against properties and naive references.

The partitioner functions live in ``fedmoe_da/data/partitioners.py`` (named so
that it is not shadowed by the ``partition`` function ``fedmoe_da.data`` exports).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fedmoe_da.data.partitioners as P
from fedmoe_da import data
from fedmoe_da.config import ConfigError, ExperimentConfig

SCHEMES = ("iid", "dirichlet", "shards", "domain", "domain_dirichlet")
CELL_SCHEMES = ("iid", "dirichlet", "domain", "domain_dirichlet")   # retried until min_samples holds
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _labels_domains(n: int, classes: int, domains: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed + 12345)
    return g.integers(0, classes, n), g.integers(0, domains, n)


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    """Every index 0..n-1 appears in exactly one part (no loss, no duplicate)."""
    allidx = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.zeros(0, int)
    assert len(allidx) == n, f"{len(allidx)} assignments for {n} samples"
    assert np.array_equal(np.sort(allidx), np.arange(n))


# --------------------------------------------------------------------------- coverage, determinism
@FAST
@given(scheme=st.sampled_from(SCHEMES), n=st.integers(1, 400), clients=st.integers(1, 12),
       classes=st.integers(1, 10), domains=st.integers(1, 5), alpha=st.floats(0.05, 50.0),
       purity=st.floats(0.05, 0.99), shards=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_every_sample_assigned_exactly_once(scheme, n, clients, classes, domains, alpha, purity, shards, seed):
    assume(clients <= n and clients * shards <= n)
    y, d = _labels_domains(n, classes, domains, seed)
    parts = P.partition(y, d, clients, scheme, np.random.default_rng(seed), alpha=alpha,
                        shards_per_client=shards, purity=purity, min_samples=0)
    assert len(parts) == clients
    for p in parts:
        assert np.all(np.diff(p) > 0), "each client's indices are sorted and distinct"
    _assert_exact_cover(parts, n)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_seeded_determinism(scheme):
    y, d = _labels_domains(300, 10, 5, seed=1)
    run = lambda s: P.partition(y, d, 6, scheme, np.random.default_rng(s), alpha=0.5, min_samples=2)  # noqa: E731
    a, b, c = run(7), run(7), run(8)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c)), "another seed gives another partition"


# --------------------------------------------------------------------------- min_samples and termination
@FAST
@given(scheme=st.sampled_from(CELL_SCHEMES), n=st.integers(10, 300), clients=st.integers(1, 10),
       alpha=st.floats(0.05, 10.0), min_samples=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_min_samples_respected_or_clear_error(scheme, n, clients, alpha, min_samples, seed):
    """Either every client gets min_samples, or a one-line ValueError says what to change."""
    y, d = _labels_domains(n, 10, 5, seed)
    try:
        parts = P.partition(y, d, clients, scheme, np.random.default_rng(seed), alpha=alpha,
                            purity=0.8, min_samples=min_samples)
    except ValueError as exc:
        msg = str(exc)
        assert "\n" not in msg and "min_samples" in msg
        return
    assert min(len(p) for p in parts) >= min_samples
    _assert_exact_cover(parts, n)


def test_shards_respects_min_samples():
    """10 samples, 3 clients x 2 shards -> shard sizes 2,2,2,2,1,1; 3 * 3 <= 10 is accepted, so each
    client must get >= 3 (or the call must raise). Checked over many seeds."""
    y, d = np.arange(10) % 3, np.zeros(10, dtype=int)
    for seed in range(200):
        try:
            parts = P.partition(y, d, 3, "shards", np.random.default_rng(seed), shards_per_client=2, min_samples=3)
        except ValueError:
            continue
        assert min(len(p) for p in parts) >= 3, f"seed {seed}: sizes {[len(p) for p in parts]}"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_more_demand_than_samples_raises(scheme):
    y, d = _labels_domains(20, 3, 2, seed=0)
    with pytest.raises(ValueError, match="min_samples"):
        P.partition(y, d, 5, scheme, np.random.default_rng(0), min_samples=5)


def test_impossible_dirichlet_terminates_with_clear_error():
    """Tiny alpha concentrates each class on ~1 client: 10 clients can never all get 30 of 300."""
    y, d = _labels_domains(300, 10, 1, seed=0)
    with pytest.raises(ValueError, match="could not give all 10 clients min_samples=30") as info:
        P.partition(y, d, 10, "dirichlet", np.random.default_rng(0), alpha=1e-3, min_samples=30)
    assert "\n" not in str(info.value) and "alpha" in str(info.value)


def test_too_many_shards_raises():
    y, d = _labels_domains(10, 2, 1, seed=0)
    with pytest.raises(ValueError, match="shards_per_client=4"):
        P.partition(y, d, 3, "shards", np.random.default_rng(0), shards_per_client=4, min_samples=1)


def test_unknown_scheme_raises():
    y, d = _labels_domains(10, 2, 1, seed=0)
    with pytest.raises(ValueError, match="partition='nope'"):
        P.partition(y, d, 2, "nope", np.random.default_rng(0))


# --------------------------------------------------------------------------- skew properties
def _label_tv(parts, y, classes=10) -> float:
    """Mean over clients of the total-variation distance of its label histogram to the global one."""
    glob = np.bincount(y, minlength=classes) / len(y)
    tvs = [0.5 * np.abs(np.bincount(y[p], minlength=classes) / len(p) - glob).sum() for p in parts]
    return float(np.mean(tvs))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_skew_small_alpha_skewed_large_alpha_uniform(seed):
    y = np.repeat(np.arange(10), 200)                      # balanced labels, one domain
    d = np.zeros_like(y)
    skewed = P.partition(y, d, 10, "dirichlet", np.random.default_rng(seed), alpha=0.1, min_samples=1)
    flat = P.partition(y, d, 10, "dirichlet", np.random.default_rng(seed), alpha=1000.0, min_samples=1)
    assert _label_tv(skewed, y) > 0.45
    assert _label_tv(flat, y) < 0.1
    iid = P.partition(y, d, 10, "iid", np.random.default_rng(seed))
    assert _label_tv(iid, y) < 0.1


def _home_share(parts, d, D) -> np.ndarray:
    return np.array([np.mean(d[p] == k % D) for k, p in enumerate(parts)])


@pytest.mark.parametrize("clients", [5, 10])
def test_domain_purity_home_share(clients):
    """domain: client k's home domain k mod D makes up ~purity of its data (balanced domains, N = D or 2D)."""
    y, d = _labels_domains(3000, 10, 5, seed=3)
    parts = P.partition(y, d, clients, "domain", np.random.default_rng(0), purity=0.9, min_samples=1)
    share = _home_share(parts, d, 5)
    assert np.all((share > 0.8) & (share < 0.97)), share
    even = P.partition(y, d, clients, "domain", np.random.default_rng(0), purity=0.2, min_samples=1)
    assert np.all(np.abs(_home_share(even, d, 5) - 0.2) < 0.08), "purity 1/D is no domain skew"


def test_domain_dirichlet_mostly_home_domain():
    y, d = _labels_domains(3000, 10, 5, seed=4)
    parts = P.partition(y, d, 10, "domain_dirichlet", np.random.default_rng(0), alpha=1.0, purity=0.9,
                        min_samples=1)
    share = _home_share(parts, d, 5)
    assert share.mean() > 0.7 and np.median(share) > 0.7, share


@pytest.mark.parametrize("scheme", ["domain", "domain_dirichlet"])
def test_full_purity_with_fewer_clients_than_domains_still_covers(scheme):
    y, d = _labels_domains(500, 10, 5, seed=0)
    parts = P.partition(y, d, 2, scheme, np.random.default_rng(0), purity=1.0, min_samples=1)
    _assert_exact_cover(parts, 500)


# --------------------------------------------------------------------------- test-set assignment
@FAST
@given(scheme=st.sampled_from(SCHEMES), clients=st.integers(1, 8), n_test=st.integers(1, 200),
       seed=st.integers(0, 2**31))
def test_assign_test_only_to_clients_training_on_the_cell(scheme, clients, n_test, seed):
    y, d = _labels_domains(200, 6, 3, seed)
    parts = P.partition(y, d, clients, scheme, np.random.default_rng(seed), alpha=0.3, purity=0.9, min_samples=0)
    yt, dt = _labels_domains(n_test, 6, 3, seed + 1)
    tests = P.assign_test(parts, y, d, yt, dt, np.random.default_rng(seed))
    owner = {}
    for k, idx in enumerate(tests):
        for i in idx.tolist():
            assert i not in owner, f"test sample {i} given to clients {owner[i]} and {k}"
            owner[i] = k
    trained = {k: set(zip(d[p].tolist(), y[p].tolist())) for k, p in enumerate(parts)}
    anyone = set().union(*trained.values())
    for i in range(n_test):
        cell = (int(dt[i]), int(yt[i]))
        if i in owner:
            assert cell in trained[owner[i]], "test sample of a cell its client does not train on"
        else:
            assert cell not in anyone, "a cell some client trains on left a test sample unassigned"


def test_assign_test_is_proportional_to_training_counts():
    """One cell, clients training 10, 30, 60 of it: its 1000 test samples split ~1:3:6."""
    y, d = np.zeros(100, int), np.zeros(100, int)
    parts = [np.arange(0, 10), np.arange(10, 40), np.arange(40, 100)]
    tests = P.assign_test(parts, y, d, np.zeros(1000, int), np.zeros(1000, int), np.random.default_rng(0))
    assert [len(t) for t in tests] == [100, 300, 600]


# --------------------------------------------------------------------------- data.build
@pytest.fixture(scope="module")
def plain_and_domains():
    """The same split built twice: once all 'original', once with every domain (same seed)."""
    plain = data.build(ExperimentConfig(dataset="digits", max_samples=None, test_fraction=0.25, domains=("original",),
                                        seed=3))
    multi = data.build(ExperimentConfig(dataset="digits", max_samples=None, test_fraction=0.25, seed=3))
    return plain, multi


def test_build_splits_train_test_disjointly(plain_and_domains):
    """Train + test is exactly the digits dataset as a multiset: no sample in both, none lost."""
    from sklearn.datasets import load_digits

    plain, _ = plain_and_domains
    digits = load_digits()
    key = lambda x, y: (np.asarray(x, dtype=np.float32).tobytes(), int(y))  # noqa: E731
    raw = Counter(key(x / 16.0, y) for x, y in zip(digits.images, digits.target))
    got = Counter(key(x[0], y) for x, y in zip(plain.x_train.numpy(), plain.y_train.numpy()))
    got_test = Counter(key(x[0], y) for x, y in zip(plain.x_test.numpy(), plain.y_test.numpy()))
    assert got + got_test == raw
    assert len(plain.y_test) == int(np.ceil(0.25 * len(digits.target)))


def _naive_blur(img: np.ndarray, passes: int = 2) -> np.ndarray:
    """[1,2,1] x [1,2,1] / 16 with replicate padding, by a loop over pixels."""
    k = np.array([1.0, 2.0, 1.0])
    kern = np.outer(k, k) / 16.0
    H, W = img.shape
    for _ in range(passes):
        out = np.zeros_like(img)
        for i in range(H):
            for j in range(W):
                out[i, j] = sum(kern[a + 1, b + 1] * img[min(max(i + a, 0), H - 1), min(max(j + b, 0), W - 1)]
                                for a in (-1, 0, 1) for b in (-1, 0, 1))
        img = out
    return img


def test_domains_are_the_documented_transforms(plain_and_domains):
    plain, multi = plain_and_domains
    assert torch.equal(plain.y_train, multi.y_train) and torch.equal(plain.y_test, multi.y_test)
    names = multi.domains
    assert set(multi.d_train.tolist()) == set(range(len(names))), "every domain is used"
    for x0, x1, dom in ((plain.x_train, multi.x_train, multi.d_train), (plain.x_test, multi.x_test, multi.d_test)):
        for i in range(len(dom)):
            name, a, b = names[int(dom[i])], x0[i, 0], x1[i, 0]
            if name == "original":
                assert torch.equal(b, a)
            elif name == "rotate":
                assert torch.equal(b, torch.rot90(a, 1, (0, 1)))
            elif name == "invert":
                assert torch.allclose(b, 1.0 - a)
            elif name == "noise":
                assert b.min() >= 0 and b.max() <= 1 and (b - a).abs().mean() > 0.05
            elif name == "blur" and i < 40:   # the loop reference is slow; a few suffice
                np.testing.assert_allclose(b.numpy(), _naive_blur(a.numpy().astype(np.float64)), atol=1e-6)
    # visibly different: the mean image of an inverted domain is the inverse of the original one
    mean = lambda name: multi.x_train[multi.d_train == names.index(name)].mean()  # noqa: E731
    assert abs(mean("invert") - (1 - mean("original"))) < 0.05 and abs(mean("invert") - mean("original")) > 0.3


# --------------------------------------------------------------------------- data.partition, client_counts
@pytest.fixture(scope="module")
def smoke_split():
    cfg = ExperimentConfig(num_clients=6, max_samples=400, min_samples=4, seed=5)
    ds = data.build(cfg)
    return cfg, ds, data.partition(ds, cfg)


def test_client_data_covers_training_set(smoke_split):
    cfg, ds, clients = smoke_split
    assert [c.client for c in clients] == list(range(cfg.num_clients))
    assert sum(c.num_train for c in clients) == len(ds.y_train)
    assert sum(len(c.y_test) for c in clients) <= len(ds.y_test)
    assert min(c.num_train for c in clients) >= cfg.min_samples
    for c in clients:
        assert c.x_train.shape == (c.num_train, *ds.input_shape)
        assert len(c.x_test) == len(c.y_test) == len(c.d_test)


@pytest.mark.parametrize("by", ["label", "domain"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_client_counts_sum_to_sizes(smoke_split, by, split):
    _, ds, clients = smoke_split
    table = data.client_counts(clients, ds, by=by, split=split)
    assert list(table.columns) == (ds.classes if by == "label" else list(ds.domains))
    sizes = [c.num_train if split == "train" else len(c.y_test) for c in clients]
    assert table.sum(axis=1).tolist() == sizes
    c = clients[2]
    values = {("label", "train"): c.y_train, ("label", "test"): c.y_test,
              ("domain", "train"): c.d_train, ("domain", "test"): c.d_test}[(by, split)]
    for j in range(table.shape[1]):
        assert table.iloc[2, j] == int((values == j).sum())


def test_client_counts_rejects_bad_axis(smoke_split):
    _, ds, clients = smoke_split
    with pytest.raises(ValueError, match="by='colour'"):
        data.client_counts(clients, ds, by="colour")


def test_partition_more_clients_than_samples_is_config_error(smoke_split):
    cfg, ds, _ = smoke_split
    n = len(ds.y_train)
    with pytest.raises(ConfigError, match=f"num_clients={n + 1}") as info:
        data.partition(ds, cfg.replace(num_clients=n + 1))
    assert "\n" not in str(info.value)


def test_partition_failure_becomes_config_error(smoke_split):
    cfg, ds, _ = smoke_split
    with pytest.raises(ConfigError, match="min_samples"):
        data.partition(ds, cfg.replace(num_clients=50, min_samples=7))
