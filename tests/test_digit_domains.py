"""The embedded multi-source digits (fedmoe_da/data/digit_domains.py): content, determinism, cache."""
import warnings
import zipfile

import numpy as np
import pytest

from fedmoe_da.data import digit_domains as dd


@pytest.fixture(scope="module")
def built() -> dd.DigitDomains:
    return dd.build_digit_domains()


@pytest.fixture
def fake_build(built, monkeypatch):
    """Make the loader's builds instant (the real one is checked above): count them."""
    calls = []
    arrays = (dd._to_u8(built.x), built.y, built.domain)

    def build():
        calls.append(1)
        return tuple(a.copy() for a in arrays)
    monkeypatch.setattr(dd, "_build_u8", build)
    return calls


def test_shapes_dtypes_ranges(built):
    n = len(built.y)
    assert built.x.shape == (n, 3, 28, 28) and built.x.dtype == np.float32
    assert built.y.shape == built.domain.shape == (n,)
    assert built.y.dtype == built.domain.dtype == np.int64
    assert 0.0 <= built.x.min() and built.x.max() <= 1.0
    assert set(np.unique(built.y)) == set(range(10))
    assert built.names == dd.DIGIT_DOMAINS == ("mnist", "usps", "mnistm", "synth")
    assert list(np.unique(built.domain)) == [0, 1, 2, 3]
    grey = built.domain <= 1   # mnist and usps: one grey channel replicated
    assert np.array_equal(built.x[grey, 0], built.x[grey, 1]) and np.array_equal(built.x[grey, 0], built.x[grey, 2])


def test_every_domain_has_every_class_roughly_balanced(built):
    counts = built.counts()
    assert list(counts.index) == list(dd.DIGIT_DOMAINS) and list(counts.columns) == list(range(10))
    assert counts.loc[["mnist", "mnistm"]].eq(250).all().all()
    assert counts.loc["synth"].eq(dd.SYNTH_PER_CLASS).all()
    assert counts.loc["usps"].sum() == 1797
    assert (counts.max(axis=1) <= 1.1 * counts.min(axis=1)).all()


def test_domains_really_differ(built):
    """Domain means are far apart compared to two halves of one domain, and a nearest-centroid
    digit classifier fit on MNIST loses most of its accuracy on the other domains."""
    X = built.x.reshape(len(built.y), -1).astype(np.float64)
    rng = np.random.default_rng(0)
    means, within = [], []
    for k in range(4):
        idx = rng.permutation(np.flatnonzero(built.domain == k))
        means.append(X[idx].mean(0))
        h = len(idx) // 2
        within.append(np.linalg.norm(X[idx[:h]].mean(0) - X[idx[h:]].mean(0)))
    between = min(np.linalg.norm(means[a] - means[b]) for a in range(4) for b in range(a + 1, 4))
    assert between > 5 * max(within)

    mnist = rng.permutation(np.flatnonzero(built.domain == 0))
    fit, test = mnist[:2000], mnist[2000:]
    centroids = np.stack([X[fit][built.y[fit] == c].mean(0) for c in range(10)])   # (10, 2352)

    def accuracy(idx):
        d2 = ((X[idx, None, :] - centroids[None]) ** 2).sum(-1)
        return (d2.argmin(1) == built.y[idx]).mean()
    in_domain = accuracy(test)
    assert in_domain > 0.7
    for k in (1, 2, 3):
        assert accuracy(np.flatnonzero(built.domain == k)) < in_domain - 0.2


def test_no_mnist_image_in_two_domains(built):
    img, y = dd._mnist_5k()
    assert img.shape == (5000, 28, 28) and np.bincount(y).tolist() == [500] * 10
    a, b = dd._halves(y)
    assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == 5000
    assert np.bincount(y[a]).tolist() == np.bincount(y[b]).tolist() == [250] * 10
    u8 = dd._to_u8(built.x)
    assert np.array_equal(u8[built.domain == 0][:, 0], img[a])          # mnist = half a, untouched
    assert np.array_equal(u8[built.domain == 2], dd._mnistm(img[b]))     # mnistm = made from half b only
    seen = {im.tobytes() for im in img[a]}
    assert not any(im.tobytes() in seen for im in img[b])                 # and no image is in both halves


def test_build_is_deterministic_and_has_the_recorded_checksum(built):
    again = dd.build_digit_domains()
    for f in ("x", "y", "domain"):
        assert np.array_equal(getattr(built, f), getattr(again, f))
    assert dd.checksum(built) == dd.DIGITS_SHA256, "the builder changed: update DIGITS_SHA256 (and say why)"


def test_cache_round_trip(tmp_path, built, fake_build):
    first = dd.load_digit_domains(tmp_path / "data")
    assert len(fake_build) == 1 and (tmp_path / "data" / dd.CACHE_NAME).is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = dd.load_digit_domains(tmp_path / "data")
    assert len(fake_build) == 1, "the second load must come from the cache"
    for f in ("x", "y", "domain"):
        assert np.array_equal(getattr(first, f), getattr(built, f))
        assert np.array_equal(getattr(second, f), getattr(built, f))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [dd.CACHE_NAME]


def _tamper(path, **changes):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    np.savez_compressed(path, **arrays)


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(b"not a zip"), "unreadable"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "unreadable"),
    (lambda p: _tamper(p, y=np.zeros(1, np.int64)), "corrupt"),
    (lambda p: _tamper(p, reference=np.array("0" * 64)), "stale"),
])
def test_corrupt_or_stale_cache_is_rebuilt_with_a_warning(tmp_path, built, fake_build, damage, reason):
    dd.load_digit_domains(tmp_path)
    damage(tmp_path / dd.CACHE_NAME)
    with pytest.warns(UserWarning, match=reason):
        data = dd.load_digit_domains(tmp_path)
    assert len(fake_build) == 2 and np.array_equal(data.x, built.x)
    assert not isinstance(dd._read_cache(tmp_path / dd.CACHE_NAME), str)   # repaired on disk
    assert zipfile.is_zipfile(tmp_path / dd.CACHE_NAME)


def test_rebuild_is_atomic(tmp_path, fake_build, monkeypatch):
    """A write that fails half way leaves the old file as it was and no temporary file."""
    path = tmp_path / dd.CACHE_NAME
    path.write_bytes(b"old, corrupt")

    def broken(f, **arrays):
        f.write(b"PK half a zip")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.warns(UserWarning, match="unreadable"), pytest.raises(OSError, match="disk full"):
        dd.load_digit_domains(tmp_path)
    assert path.read_bytes() == b"old, corrupt"
    assert [p.name for p in tmp_path.iterdir()] == [dd.CACHE_NAME]


def test_plot_domain_samples(built):
    from fedmoe_da.viz import plot_domain_samples

    fig, ax, df = plot_domain_samples(built.x, built.y, built.domain, built.names, per_domain=10)
    assert ax.shape == (4, 10) and len(df) == 40
    assert list(df.columns[:3]) == ["domain", "label", "index"]
    for r in df.itertuples():
        assert built.y[r.index] == r.label and built.names[built.domain[r.index]] == r.domain
    assert sorted(df.groupby("domain")["label"].nunique().tolist()) == [10] * 4
    import matplotlib.pyplot as plt
    plt.close(fig)
