"""Real-dataset loaders, on tiny files written here in the exact published formats.

The reference is the arrays the test wrote: every pixel and label must come back.
No test touches the network: downloads go through ``fetch`` patched to copy a
local file, or through the real ``fetch`` on a ``file://`` URL.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import shutil
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmoe_da.data import real

IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    """IDX encoding, written independently of the parser: magic, big-endian sizes, big-endian values."""
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    head = bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", s) for s in a.shape)
    return head + a.astype(dtype).tobytes()


def write_idx_dataset(folder: Path, rng: np.random.Generator, n_train=5, n_test=3):
    """Four gzipped IDX files (28x28 uint8 images, uint8 labels); returns the arrays and a spec."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)]
    arrays[0][0, 0, 0], arrays[0][0, 0, 1] = 0, 255       # both ends of the range present
    for name, a in zip(IDX_FILES, arrays):
        (folder / name).write_bytes(gzip.compress(idx_bytes(a)))
    spec = dataclasses.replace(real.DATASETS["mnist"], mirrors=("https://invalid.example/",),
                               files=tuple((n, md5(folder / n)) for n in IDX_FILES))
    return arrays, spec


def write_cifar_archive(path: Path, rng: np.random.Generator, per_batch=(2, 3, 1, 2, 2), n_test=3):
    """A cifar-10-python.tar.gz with data_batch_1..5 and test_batch; returns the (N, 3072) rows and labels."""
    batches = {f"data_batch_{i + 1}": n for i, n in enumerate(per_batch)} | {"test_batch": n_test}
    written = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, n in batches.items():
            rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, n)]
            blob = pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": rows})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            written[name] = (rows, labels)
    return written


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_idx_round_trip(tmp_path, rng):
    arrays, spec = write_idx_dataset(tmp_path / "mnist", rng)
    data = real.load_real("mnist", root=tmp_path, download=False, spec=spec)
    assert data.name == "mnist" and data.classes == [str(d) for d in range(10)]
    assert data.x_train.shape == (5, 1, 28, 28) and data.x_test.shape == (3, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    for x, y, (xa, ya) in [(data.x_train, data.y_train, arrays[:2]), (data.x_test, data.y_test, arrays[2:])]:
        assert torch.equal(x * 255, torch.from_numpy(xa[:, None].astype(np.float32)))  # exact: v/255*255 == v
        assert y.tolist() == ya.tolist()


@pytest.mark.parametrize("code", [0x08, 0x0C, 0x0D])
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_dtypes_and_plain_files(tmp_path, rng, code, gz):
    a = rng.integers(-1000 if code != 0x08 else 0, 256, (2, 3, 4))
    blob = idx_bytes(a, code)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(blob) if gz else blob)
    out = real.read_idx(path)
    assert out.shape == (2, 3, 4) and np.array_equal(out, a)


def test_read_idx_bad_magic_and_size(tmp_path):
    good = idx_bytes(np.zeros((2, 4), dtype=np.uint8))
    bad_magic = tmp_path / "bad.idx"
    bad_magic.write_bytes(b"\x00\x00\x07\x02" + good[4:])           # 0x07 is no IDX dtype
    with pytest.raises(ValueError, match="not an IDX file"):
        real.read_idx(bad_magic)
    short = tmp_path / "short.idx.gz"
    short.write_bytes(gzip.compress(good[:-1]))
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        real.read_idx(short)


def test_cifar_round_trip_and_channel_order(tmp_path, rng):
    written = write_cifar_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", rng)
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    spec = dataclasses.replace(real.DATASETS["cifar10"], files=(("cifar-10-python.tar.gz", md5(archive)),))
    data = real.load_real("cifar10", root=tmp_path, download=False, spec=spec)
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.x_train.dtype == torch.float32 and data.y_test.dtype == torch.int64
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.classes[0] == "airplane" and data.classes[9] == "truck"
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    rows = np.concatenate([r for r, _ in train])
    labels = [v for _, ls in train for v in ls]
    for x, y, (r, ls) in [(data.x_train, data.y_train, (rows, labels)),
                          (data.x_test, data.y_test, written["test_batch"])]:
        assert y.tolist() == ls
        ref = np.zeros((len(r), 3, 32, 32), dtype=np.uint8)
        for n in range(len(r)):                     # row = R plane, G plane, B plane, each 32x32 row-major
            for c in range(3):
                for i in range(32):
                    for j in range(32):
                        ref[n, c, i, j] = r[n, c * 1024 + i * 32 + j]
        assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(ref))


def test_checksum_mismatch_on_cached_file(tmp_path, rng):
    _, spec = write_idx_dataset(tmp_path / "mnist", rng)
    files = list(spec.files)
    files[1] = (files[1][0], "0" * 32)
    with pytest.raises(real.ChecksumError, match=r"train-labels-idx1-ubyte\.gz.*expected 0{32}.*delete"):
        real.load_real("mnist", root=tmp_path, spec=dataclasses.replace(spec, files=tuple(files)))


def test_missing_file_without_download(tmp_path, rng):
    _, spec = write_idx_dataset(tmp_path / "mnist", rng)
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz is missing: put it in .*mnist"):
        real.load_real("mnist", root=tmp_path, download=False, spec=spec)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="allowed: cifar10, fmnist, mnist"):
        real.load_real("svhn", download=False)


def test_registry_can_be_monkeypatched(tmp_path, rng, monkeypatch):
    arrays, spec = write_idx_dataset(tmp_path / "fmnist", rng)
    monkeypatch.setitem(real.DATASETS, "fmnist", dataclasses.replace(spec, classes=real.DATASETS["fmnist"].classes))
    data = real.load_real("fmnist", root=tmp_path, download=False)
    assert data.classes[0] == "T-shirt/top" and data.y_train.tolist() == arrays[1].tolist()


def test_cached_files_are_not_downloaded(tmp_path, rng, monkeypatch):
    _, spec = write_idx_dataset(tmp_path / "mnist", rng)

    def no_network(*args, **kwargs):
        pytest.fail("tried to download a cached file")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(real, "fetch", no_network)
    real.load_real("mnist", root=tmp_path, download=True, spec=spec)


def test_download_lands_in_root_and_is_verified(tmp_path, rng, monkeypatch):
    arrays, spec = write_idx_dataset(tmp_path / "source", rng)
    calls = []

    def copy_fetch(url, dest):
        calls.append(url)
        shutil.copy(tmp_path / "source" / url.rsplit("/", 1)[1], dest)

    monkeypatch.setattr(real, "fetch", copy_fetch)
    data = real.load_real("mnist", root=tmp_path / "root", spec=spec)
    assert calls == [spec.mirrors[0] + n for n in IDX_FILES]
    assert sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir()) == sorted(IDX_FILES)   # no .part left
    assert data.y_test.tolist() == arrays[3].tolist()
    real.load_real("mnist", root=tmp_path / "root", spec=spec)                # second call: cached
    assert len(calls) == 4

    # a mirror serving the wrong bytes: error, and nothing is left in the cache
    bad = dataclasses.replace(spec, files=((IDX_FILES[0], "f" * 32),) + spec.files[1:])
    with pytest.raises(real.ChecksumError, match="downloaded train-images"):
        real.load_real("mnist", root=tmp_path / "other", spec=bad)
    assert not any((tmp_path / "other" / "mnist").iterdir())


def test_real_fetch_with_mirror_fallback(tmp_path, rng):
    """The unpatched fetch on file:// URLs (no network): a dead first mirror, then a good one."""
    write_cifar_archive(tmp_path / "source" / "cifar-10-python.tar.gz", rng, per_batch=(1, 1, 1, 1, 1), n_test=1)
    archive = tmp_path / "source" / "cifar-10-python.tar.gz"
    spec = dataclasses.replace(real.DATASETS["cifar10"], files=(("cifar-10-python.tar.gz", md5(archive)),),
                               mirrors=((tmp_path / "nowhere").as_uri() + "/", archive.parent.as_uri() + "/"))
    data = real.load_real("cifar10", root=tmp_path / "root", spec=spec)
    assert (tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    assert data.x_train.shape == (5, 3, 32, 32)
    dead = dataclasses.replace(spec, mirrors=spec.mirrors[:1])
    with pytest.raises(OSError, match="could not download cifar-10-python.tar.gz"):
        real.load_real("cifar10", root=tmp_path / "root2", spec=dead)
