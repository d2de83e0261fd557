"""Real image datasets: MNIST, Fashion-MNIST and CIFAR-10, read from their original files.

No torchvision: the two formats are small enough to parse here.

* **IDX** (MNIST, Fashion-MNIST): a 4-byte magic ``00 00 <dtype> <ndim>``, then
  ``ndim`` big-endian uint32 sizes, then the values, big-endian, row-major.
  The files are served gzipped; ``read_idx`` reads either form.
* **CIFAR-10 python**: one ``cifar-10-python.tar.gz`` holding pickled dicts
  ``data_batch_1..5`` (train) and ``test_batch``; ``b"data"`` is (N, 3072) uint8,
  each row the R plane, then G, then B, each 32x32 row-major, and ``b"labels"``
  a list of N ints. The batches are read straight out of the archive.

Files are cached in ``root/<name>/``, downloaded once (to ``<file>.part``, then
renamed) and their md5 is checked after download and on every read. Pickle can
run code, so an archive is unpickled only after its md5 matched the published one.

The registry ``DATASETS`` is a plain dict: tests (or a user with a local mirror)
can monkeypatch it or pass their own ``spec`` to ``load_real``.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's files come from and how to read them."""

    format: str
    """``"idx"`` (files: train images, train labels, test images, test labels) or ``"cifar10"`` (one archive)."""
    files: tuple[tuple[str, str], ...]
    """(file name, md5 hex digest) per file, in the order ``format`` expects."""
    mirrors: tuple[str, ...]
    """Base URLs ending in ``/``, tried in order; the file name is appended."""
    classes: tuple[str, ...]
    """Class names, indexed by label."""


# md5s: MNIST and Fashion-MNIST as listed by torchvision's MNIST/FashionMNIST `resources`
# (Fashion-MNIST's also in zalandoresearch/fashion-mnist's README); CIFAR-10 as published on
# https://www.cs.toronto.edu/~kriz/cifar.html and used by torchvision's CIFAR10 `tgz_md5`.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        format="idx",
        files=(
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        # yann.lecun.com now often refuses downloads; ossci-datasets is torchvision's mirror.
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        classes=tuple(str(d) for d in range(10)),
    ),
    "fmnist": DatasetSpec(
        format="idx",
        files=(
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "cifar10": DatasetSpec(
        format="cifar10",
        files=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        classes=("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"),
    ),
}


@dataclass
class RealData:
    """A dataset's official train/test split as tensors."""

    x_train: Tensor
    """(N, C, H, W) float32 in [0, 1]."""
    y_train: Tensor
    """(N,) int64 class indices."""
    x_test: Tensor
    """(M, C, H, W) float32 in [0, 1]."""
    y_test: Tensor
    """(M,) int64 class indices."""
    classes: list[str]
    """Class names, indexed by label."""
    name: str
    """Registry name, e.g. ``"mnist"``."""


class ChecksumError(ValueError):
    """A file's md5 is not the published one."""


# ---------------------------------------------------------------- files: fetch, verify, cache

def md5sum(path: str | Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path) -> None:
    """Write the bytes at ``url`` to ``dest``; no checks (the caller verifies the md5)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f)


def ensure_file(folder: Path, filename: str, md5: str, mirrors: tuple[str, ...], download: bool) -> Path:
    """Return ``folder/filename`` after checking its md5, downloading it first if missing."""
    path = folder / filename
    if not path.exists():
        if not download:
            raise FileNotFoundError(f"{filename} is missing: put it in {folder}/ "
                                    f"(from {mirrors[0] + filename}) or pass download=True")
        folder.mkdir(parents=True, exist_ok=True)
        part = path.with_name(filename + ".part")
        failures = []
        for base in mirrors:
            try:
                fetch(base + filename, part)
                break
            except OSError as err:  # URLError and HTTPError are OSErrors
                failures.append(f"{base + filename} ({err})")
        else:
            part.unlink(missing_ok=True)
            raise OSError(f"could not download {filename}: " + "; ".join(failures))
        actual = md5sum(part)
        if actual != md5:
            part.unlink()
            raise ChecksumError(f"downloaded {filename} has md5 {actual}, expected {md5}; "
                                "the mirror served a different file")
        os.replace(part, path)
        return path
    actual = md5sum(path)
    if actual != md5:
        raise ChecksumError(f"{path}: md5 is {actual}, expected {md5}; delete the file to re-download it")
    return path


# ---------------------------------------------------------------- parsers

# IDX dtype codes (third magic byte) -> big-endian numpy dtypes.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not (told apart by the gzip magic ``1f 8b``)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()}, "
                         f"expected 0000 + dtype code in {sorted(IDX_DTYPES)} + ndim >= 1)")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes of data), "
                         f"file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_cifar10(archive: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from ``cifar-10-python.tar.gz``; x is (N, 3, 32, 32) uint8."""
    def batch(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str):
        if name not in members:
            raise ValueError(f"{archive}: no {name} in the archive")
        d = pickle.load(tar.extractfile(members[name]), encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8)                     # (N, 3072)
        y = np.asarray(d[b"labels"], dtype=np.int64)                   # (N,)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
            raise ValueError(f"{archive}:{name}: data {x.shape} and {len(y)} labels, expected (N, 3072) and N")
        return x.reshape(-1, 3, 32, 32), y                             # R, G, B planes, rows of 32

    with tarfile.open(archive, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        train = [batch(tar, members, f"data_batch_{i}") for i in range(1, 6)]
        x_test, y_test = batch(tar, members, "test_batch")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def _images(x: np.ndarray) -> Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W) in [0, 1]."""
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise ValueError(f"images are {x.dtype} with shape {x.shape}, expected uint8 (N, [C,] H, W)")
    x = x[:, None] if x.ndim == 3 else x
    return torch.from_numpy(x.astype(np.float32) / 255.0)


def _labels(y: np.ndarray, n: int, what: str) -> Tensor:
    if y.shape != (n,):
        raise ValueError(f"{what}: labels have shape {y.shape}, expected ({n},) to match the images")
    return torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------- entry point

def load_real(name: str, root: str | Path = "data", download: bool = True,
              spec: DatasetSpec | None = None) -> RealData:
    """Load dataset ``name`` (a key of ``DATASETS``, or any name with an explicit ``spec``)."""
    if spec is None:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}")
        spec = DATASETS[name]
    folder = Path(root) / name
    paths = [ensure_file(folder, f, md5, spec.mirrors, download) for f, md5 in spec.files]
    if spec.format == "idx":
        xtr, ytr, xte, yte = (read_idx(p) for p in paths)
    elif spec.format == "cifar10":
        xtr, ytr, xte, yte = read_cifar10(paths[0])
    else:
        raise ValueError(f"spec.format={spec.format!r}; allowed: 'idx', 'cifar10'")
    return RealData(x_train=_images(xtr), y_train=_labels(ytr, len(xtr), f"{name} train"),
                    x_test=_images(xte), y_test=_labels(yte, len(xte), f"{name} test"),
                    classes=list(spec.classes), name=name)
