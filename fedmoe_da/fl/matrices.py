"""What a FedMoE-DA run keeps of each refresh (``result.matrices``): A sparse, handed out dense.

Per refresh r and MoE layer l the run keeps three arrays, keyed ``matrix_key(r, group)`` (``run_folder.py``):

    A[l]      the aggregation matrix (M, M), M = pool clients x experts
    gate[l]   the uploaded gates it came from (M, d)
    pool[l]   the pool's clients, in A's row order (clients,)

A has about P + 1 non-zeros per row (Eq. 9 keeps the top P peers and the row
itself; more only on ties), so a dense A wastes nearly all of its M^2 floats:
at 200 clients x 8 experts one is 10 MB, and a run keeps one per refresh.
``Matrices`` stores each A in compressed sparse rows (CSR: int32 column indices
and A's values per non-zero, row starts in ``indptr``), O(nnz + M) bytes, and
gives it back as the dense ``np.ndarray`` on ``matrices[key]``, so readers index
it as the dict of arrays it used to be. The other arrays are kept as they are.

``arrays()`` / ``from_arrays`` turn it into flat named arrays and back (what
``run_folder.py`` writes to and reads from .npz files): a sparse A becomes
``<key>/indptr``, ``<key>/indices``, ``<key>/data`` and ``<key>/shape``, as in
``scipy.sparse.save_npz``; a dense array under ``<key>`` (the run folders
written before A was sparse) is read as well.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import NamedTuple

import numpy as np

from ..models.names import MATRIX, parse_group

PARTS = ("indptr", "indices", "data", "shape")   # a sparse A's arrays, ``<key>/<part>``


class SparseMatrix(NamedTuple):
    """A 2-D array in compressed sparse rows: row i's non-zeros are ``data[indptr[i]:indptr[i + 1]]`` in the
    columns ``indices[indptr[i]:indptr[i + 1]]``, left to right."""

    indptr: np.ndarray    # (rows + 1,) int32 (int64 past 2^31 - 1 non-zeros)
    indices: np.ndarray   # (nnz,) int32 column of each non-zero
    data: np.ndarray      # (nnz,) the non-zeros, in the dense array's dtype
    shape: tuple[int, int]

    @classmethod
    def from_dense(cls, dense) -> SparseMatrix:
        dense = np.asarray(dense)
        if dense.ndim != 2:
            raise ValueError(f"a sparse matrix needs a 2-D array, got shape {dense.shape}")
        rows, cols = np.nonzero(dense)                                     # row-major: row by row, left to right
        return cls.from_entries(rows, cols, dense[rows, cols], dense.shape)

    @classmethod
    def from_torch(cls, A) -> SparseMatrix:
        """From a torch sparse COO tensor (a FedMoE-DA strategy's A), without making it dense."""
        A = A.coalesce()
        (rows, cols), data = A.indices().numpy(), A.values().numpy()
        keep = data != 0
        return cls.from_entries(rows[keep], cols[keep], data[keep], A.shape)

    @classmethod
    def from_entries(cls, rows: np.ndarray, cols: np.ndarray, data: np.ndarray, shape) -> SparseMatrix:
        """From the non-zeros (rows, cols, data), sorted row by row and left to right within a row."""
        counts = np.bincount(rows, minlength=shape[0])                     # (rows,) non-zeros per row
        index = np.int32 if len(rows) <= np.iinfo(np.int32).max else np.int64
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(index)    # (rows + 1,)
        return cls(indptr, cols.astype(np.int32), data, (int(shape[0]), int(shape[1])))

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))  # (nnz,) the row of each non-zero
        out[rows, self.indices] = self.data
        return out

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.data.nbytes

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        """Its flat arrays, named ``<key>/<part>``."""
        return {f"{key}/{part}": np.asarray(value) for part, value in zip(PARTS, self)}

    @classmethod
    def from_parts(cls, parts: Mapping[str, np.ndarray]) -> SparseMatrix:
        indptr, indices, data = (np.asarray(parts[p]) for p in PARTS[:3])
        return cls(indptr, indices, data, (int(parts["shape"][0]), int(parts["shape"][1])))


def is_matrix_key(key: str) -> bool:
    """True for the key of an aggregation matrix, ``round<r>/A[l]`` (kept sparse)."""
    group = key.rsplit("/", 1)[-1]
    try:
        return parse_group(group).kind == MATRIX
    except ValueError:
        return False


class Matrices(MutableMapping):
    """A dict of arrays keyed ``matrix_key(round, group)`` that keeps every A sparse (``SparseMatrix``).

    ``m[key] = array`` stores it (A as CSR, anything else as a numpy array); ``m[key]`` gives it back dense.
    """

    def __init__(self, items: Mapping | None = None) -> None:
        self._stored: dict[str, SparseMatrix | np.ndarray] = {}
        if items is not None:
            self.update(items)

    def __setitem__(self, key: str, value) -> None:
        if isinstance(value, SparseMatrix):
            self._stored[key] = value
        elif is_matrix_key(key):
            self._stored[key] = SparseMatrix.from_dense(value)
        else:
            self._stored[key] = np.asarray(value)

    def __getitem__(self, key: str) -> np.ndarray:
        value = self._stored[key]
        return value.to_dense() if isinstance(value, SparseMatrix) else value

    def __delitem__(self, key: str) -> None:
        del self._stored[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def __repr__(self) -> str:
        return f"Matrices({len(self)} arrays, {self.nbytes:,} bytes)"

    def update(self, other=(), /, **kwargs) -> None:   # type: ignore[override]
        """As dict.update; from another ``Matrices`` the sparse A are taken as they are (not densified)."""
        if isinstance(other, Matrices):
            self._stored.update(other._stored)
            other = ()
        super().update(other, **kwargs)

    def stored(self, key: str) -> SparseMatrix | np.ndarray:
        """The array as kept: a ``SparseMatrix`` for A, the numpy array otherwise."""
        return self._stored[key]

    @property
    def nbytes(self) -> int:
        """Bytes of every array kept (A: its CSR arrays)."""
        return sum(v.nbytes for v in self._stored.values())

    def arrays(self, keys=None) -> dict[str, np.ndarray]:
        """Flat named arrays of ``keys`` (None: all): ``<key>/<part>`` for a sparse A, ``<key>`` otherwise."""
        out: dict[str, np.ndarray] = {}
        for key in self._stored if keys is None else keys:
            value = self._stored[key]
            out.update(value.arrays(key) if isinstance(value, SparseMatrix) else {key: value})
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Matrices:
        """``arrays()``'s inverse; a dense A (the format before A was sparse) is read and kept sparse."""
        grouped: dict[str, dict[str, np.ndarray] | np.ndarray] = {}     # key -> its parts or its array, in order
        for name in arrays:
            key, _, part = name.rpartition("/")
            if part in PARTS and is_matrix_key(key):
                grouped.setdefault(key, {})[part] = arrays[name]  # type: ignore[index]
            else:
                grouped[name] = arrays[name]
        out = cls()
        for key, value in grouped.items():
            if isinstance(value, dict):
                if set(value) != set(PARTS):
                    raise ValueError(f"sparse matrix {key!r} lacks {', '.join(sorted(set(PARTS) - set(value)))}")
                value = SparseMatrix.from_parts(value)
            out[key] = value
        return out
