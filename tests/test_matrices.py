"""What a FedMoE-DA run keeps of each refresh (``fl/matrices.py``, the run folder's matrices/).

A is kept sparse and handed out dense: the reference is the dense array itself (exact equality, zeros
included), and the memory a kept A takes is counted from its arrays' nbytes against nnz and M.
"""
from __future__ import annotations

import numpy as np
import pytest

from fedmoe_da import load_run
from fedmoe_da.config import ExperimentConfig
from fedmoe_da.fl import checkpoint
from fedmoe_da.fl import simulation as sim
from fedmoe_da.fl.matrices import Matrices, SparseMatrix
from fedmoe_da.fl.run_folder import RunFolder, matrix_key, matrix_round


class Stop(Exception):
    """Stands for a crash inside the run."""


def sparse_rows(M: int, per_row: int, seed: int = 0) -> np.ndarray:
    """(M, M) float32 with ``per_row`` random non-zeros per row, the diagonal among them (A's pattern)."""
    rng = np.random.default_rng(seed)
    A = np.zeros((M, M), np.float32)
    for i in range(M):
        cols = np.concatenate([[i], rng.choice(np.delete(np.arange(M), i), per_row - 1, replace=False)])
        A[i, cols] = rng.random(per_row, dtype=np.float32) + 1e-3
    return A


def smoke(**changes) -> ExperimentConfig:
    return ExperimentConfig(progress=False, backend="torch", seed=0).smoke().replace(
        **{"strategy": "fedmoe_da", "rounds": 3, "I": 1, "moe_layers": 1, **changes})


# --------------------------------------------------------------------------- the mapping
@pytest.mark.parametrize("A", [
    sparse_rows(40, 4),
    np.zeros((5, 5), np.float32),                                                # every row empty
    np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5,                         # dense, negatives, not square
    np.diag([1.0, 0.0, 2.0, -0.0]).astype(np.float64),                           # empty rows between, float64
    np.array([[np.nan, 0, np.inf], [0, 0, 0], [1e-45, 0, -1]], np.float32),      # nan, inf, a subnormal
], ids=["P+1-per-row", "zeros", "dense", "empty-rows", "special"])
def test_a_kept_sparse_is_given_back_exactly(A):
    m = Matrices()
    m["round4/A[0]"] = A
    kept = m.stored("round4/A[0]")
    assert isinstance(kept, SparseMatrix) and len(kept.data) == np.count_nonzero(A)
    got = m["round4/A[0]"]
    assert isinstance(got, np.ndarray) and got.dtype == A.dtype and got.shape == A.shape
    np.testing.assert_array_equal(got, A)                                       # values, zeros and nan in place
    back = Matrices.from_arrays(m.arrays())                                       # the flat arrays of an .npz
    np.testing.assert_array_equal(back["round4/A[0]"], A)


def test_a_takes_memory_in_its_non_zeros_not_its_size():
    M, per_row = 1600, 4                                                          # 200 clients x 8 experts, P = 3
    A = sparse_rows(M, per_row)
    m = Matrices({"round1/A[0]": A})
    nnz = M * per_row
    assert m.stored("round1/A[0]").nbytes == 4 * (M + 1) + 4 * nnz + 4 * nnz     # int32 indptr, indices; fp32 data
    assert m.nbytes < A.nbytes / 50                                                # 10 MB dense, 51 kB kept
    twice = Matrices({"round1/A[0]": sparse_rows(2 * M, per_row)})
    assert twice.nbytes < 2.01 * m.nbytes                                         # linear in M at P + 1 per row


def test_it_behaves_as_a_dict_of_arrays():
    A, gates, pool = sparse_rows(8, 2), np.ones((8, 3), np.float32), np.arange(2)
    m = Matrices({"round1/A[0]": A, "round1/gate[0]": gates})
    m.update({"round1/pool[0]": pool})
    assert list(m) == list(m.keys()) == ["round1/A[0]", "round1/gate[0]", "round1/pool[0]"] and len(m) == 3
    assert "round1/A[0]" in m and "round2/A[0]" not in m
    assert m.stored("round1/gate[0]") is gates                                     # other arrays kept as they are
    for (key, value), expected in zip(m.items(), (A, gates, pool)):
        np.testing.assert_array_equal(value, expected)
    other = Matrices()
    other.update(m)                                                                # sparse A copied as kept
    assert other.stored("round1/A[0]") is m.stored("round1/A[0]")
    del other["round1/gate[0]"]
    assert sorted(other) == ["round1/A[0]", "round1/pool[0]"] and len(m) == 3
    with pytest.raises(KeyError):
        m["round9/A[0]"]
    with pytest.raises(ValueError, match="2-D"):
        m["round2/A[0]"] = np.ones(3)
    parts = m.arrays(["round1/A[0]"])
    assert sorted(parts) == [f"round1/A[0]/{p}" for p in ("data", "indices", "indptr", "shape")]
    del parts["round1/A[0]/indices"]
    with pytest.raises(ValueError, match="lacks indices"):
        Matrices.from_arrays(parts)


# --------------------------------------------------------------------------- the run folder
def test_a_run_writes_one_sparse_file_per_refresh_and_reads_it_back(tmp_path):
    cfg = smoke(out=str(tmp_path / "run"))
    result = sim.simulate(cfg)
    folder = tmp_path / "run" / "matrices"
    assert sorted(p.name for p in folder.iterdir()) == ["round1.npz", "round2.npz", "round3.npz"]
    M = cfg.num_clients * cfg.num_experts
    for rnd in (1, 2, 3):
        with np.load(folder / f"round{rnd}.npz") as saved:                       # only its own refresh, A sparse
            sparse_a = [f"round{rnd}/A[0]/{p}" for p in ("data", "indices", "indptr", "shape")]
            assert sorted(saved.files) == sorted(sparse_a + [f"round{rnd}/gate[0]", f"round{rnd}/pool[0]"])
            assert saved[f"round{rnd}/A[0]/indptr"].shape == (M + 1,)
        A = result.matrices[matrix_key(rnd, "A[0]")]                             # dense, P + 1 or more per row
        assert A.dtype == np.float32 and A.shape == (M, M) and ((A > 0).sum(1) >= cfg.P + 1).all()
        np.testing.assert_allclose(A.sum(1), 1.0, atol=1e-5)
    back = load_run(tmp_path / "run").matrices
    assert list(back) == list(result.matrices)
    for key in back:
        np.testing.assert_array_equal(back[key], result.matrices[key])
        assert back[key].dtype == result.matrices[key].dtype
    assert sorted(RunFolder(tmp_path / "run").matrices(2)) == sorted(k for k in back if matrix_round(k) <= 2)


def write_dense_format(run: RunFolder) -> None:
    """Turn a run folder's matrices/ into the matrices.npz of before: every refresh in one file, A dense."""
    dense = dict(run.matrices())
    for path in (run.path / "matrices").iterdir():
        path.unlink()
    (run.path / "matrices").rmdir()
    np.savez_compressed(run.path / "matrices.npz", **dense)


def test_a_folder_of_the_dense_format_still_loads(tmp_path):
    result = sim.simulate(smoke(out=str(tmp_path / "run")))
    run = RunFolder(tmp_path / "run")
    write_dense_format(run)
    with np.load(run.path / "matrices.npz") as saved:
        assert saved["round3/A[0]"].ndim == 2                                     # the old format, A dense
    back = load_run(run.path).matrices
    assert sorted(back) == sorted(result.matrices)
    for key in back:
        np.testing.assert_array_equal(back[key], result.matrices[key])
    assert isinstance(back.stored("round3/A[0]"), SparseMatrix)                   # kept sparse once read
    assert sorted(run.matrices(1)) == ["round1/A[0]", "round1/gate[0]", "round1/pool[0]"]


def test_a_dense_format_folder_resumes_into_one_file_per_refresh(tmp_path, monkeypatch):
    cfg = smoke(rounds=4)
    full = sim.simulate(cfg.replace(out=str(tmp_path / "full")))
    save = checkpoint.save

    def stop_after_round_3(folder, rnd, *args):   # round 3's A is written, its checkpoint is not
        if rnd == 3:
            raise Stop
        save(folder, rnd, *args)

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save", stop_after_round_3)
        with pytest.raises(Stop):
            sim.simulate(cfg.replace(out=str(tmp_path / "cut")))
    cut = RunFolder(tmp_path / "cut")
    write_dense_format(cut)                                                       # as an older version left it
    resumed = sim.resume(cut.path)
    assert not (cut.path / "matrices.npz").exists()
    names = sorted(p.name for p in (cut.path / "matrices").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "full" / "matrices").iterdir())
    for name in names:
        assert (cut.path / "matrices" / name).read_bytes() == (tmp_path / "full" / "matrices" / name).read_bytes()
    assert list(resumed.matrices) == list(full.matrices)
