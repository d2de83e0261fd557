"""The scaled Eq. 8-11 (``fl/aggregation_scaled.py``: row blocks, sparse A, Eq. 11 split over own and received
experts) against the dense references of ``fl/aggregation.py`` on random inputs, in float64.

Both sides compute in float64 and differ only in summation order, so 1e-12 holds on any CPU's vector kernels.
"""
from __future__ import annotations

import pytest
import torch

from fedmoe_da.fl import aggregation_scaled as scaled
from fedmoe_da.fl.aggregation import aggregate_experts, aggregation_matrix
from fedmoe_da.fl.diagnostics import matrix_diagnostics

pytestmark = pytest.mark.equivalence
TOL = dict(rtol=0, atol=1e-12)


def proxies_of(M: int, d: int, seed: int, ties: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:                                                           # small integers: many exact ties, zero rows
        return torch.randint(-2, 3, (M, d), generator=g).double()
    return torch.randn(M, d, generator=g, dtype=torch.float64)


def sparse_dense(proxies, P, tau) -> torch.Tensor:
    return scaled.sparse_aggregation_matrix(proxies, P, tau, dtype=torch.float64).to_dense()


@pytest.mark.parametrize("M,d", [(1, 3), (5, 2), (12, 8), (40, 6)])
@pytest.mark.parametrize("P", [0, 1, 3, 11, 39, 100])                # P = 0, P >= pool
@pytest.mark.parametrize("ties", [False, True])
def test_sparse_matrix_equals_the_dense_reference(M, d, P, ties):
    proxies = proxies_of(M, d, seed=M * 100 + P, ties=ties)
    for tau in (0.05, 0.5, 3.0):
        torch.testing.assert_close(sparse_dense(proxies, P, tau), aggregation_matrix(proxies, P, tau), **TOL)


def test_identical_proxies_tie_alike():
    """Round 1: every client starts from one gate, so (k, e) ties with (k', e) for every k'."""
    proxies = proxies_of(4, 5, seed=1).repeat(3, 1)                    # (12, 5): 3 clients x 4 slots
    for P in (0, 1, 2, 5):
        torch.testing.assert_close(sparse_dense(proxies, P, 0.1), aggregation_matrix(proxies, P, 0.1), **TOL)


def test_row_blocks_give_the_same_matrix_and_diagnostics(monkeypatch):
    """Eq. 8-10 and the diagnostics a few rows at a time (how 1,000-client pools fit in memory) equal one block."""
    proxies = proxies_of(24, 5, seed=3)
    proxies[7] = proxies[3]                                            # a tie
    pool, homes = list(range(6)), [0, 1, 0, 2, 1, 2]
    whole = scaled.sparse_aggregation_matrix(proxies, 3, 0.2, min_correlation=-0.5, dtype=torch.float64)
    monkeypatch.setattr(scaled, "ROW_BLOCK_ELEMENTS", 24 * 5)         # 5 rows a block, the last one 4
    assert len(scaled.row_blocks(24)) == 5
    blocks = scaled.sparse_aggregation_matrix(proxies, 3, 0.2, min_correlation=-0.5, dtype=torch.float64)
    torch.testing.assert_close(blocks.to_dense(), whole.to_dense(), **TOL)
    diag = matrix_diagnostics(whole, pool, 4, homes)
    for key, value in matrix_diagnostics(blocks, pool, 4, homes).items():
        assert value == pytest.approx(diag[key], abs=1e-12), key
    torch.testing.assert_close(sparse_dense(proxies, 3, 0.2), aggregation_matrix(proxies, 3, 0.2), **TOL)


def test_float32_matrix_is_the_float64_one_rounded():
    """What a run keeps (float32 values) is the float64 matrix rounded once."""
    proxies = proxies_of(30, 4, seed=7)
    A32 = scaled.sparse_aggregation_matrix(proxies, 4, 0.3).to_dense()
    assert A32.dtype == torch.float32
    assert torch.equal(A32, aggregation_matrix(proxies, 4, 0.3).float())


@pytest.mark.parametrize("n,T,P", [(12, 0, 3), (12, 5, 3), (20, 9, 0), (20, 9, 30)])
@pytest.mark.parametrize("present", ["all", "subset"])
def test_split_eq11_equals_the_dense_reference(n, T, P, present):
    """Eq. 11 over [own (n, ...); received (T, ...)] for some rows of A (a participation subset: rows of only
    some clients, absent peers dropped and the rows renormalised) equals one dense product over the pool."""
    g = torch.Generator().manual_seed(n * 10 + T + P)
    M = n + T
    A = aggregation_matrix(proxies_of(M, 4, seed=M + P), P, 0.4)                # (M, M) float64
    rows = torch.arange(M)[: n // 2] if present == "subset" else torch.arange(n)
    W = A[rows]                                                                # (m, M)
    if present == "subset":
        there = torch.rand(M, generator=g) > 0.3
        there[rows] = True                                                     # each row keeps its own expert
        W = scaled.drop_absent(W, there.expand_as(W))
    thetas = {"w": torch.randn(M, 3, 2, generator=g, dtype=torch.float64),
              "b": torch.randn(M, 3, generator=g, dtype=torch.float64)}
    r, s = W.nonzero(as_tuple=True)
    out = scaled.aggregate_split(r, s, W[r, s], len(rows), {k: v[:n] for k, v in thetas.items()},
                                 {k: v[n:] for k, v in thetas.items()})
    for name, value in thetas.items():
        assert out[name].dtype == torch.float64
        torch.testing.assert_close(out[name], aggregate_experts(W, value), **TOL)


def test_split_eq11_keeps_float32_in_float32():
    g = torch.Generator().manual_seed(0)
    W = torch.softmax(torch.randn(4, 6, generator=g), 1)
    thetas = torch.randn(6, 5, generator=g)
    r, s = W.nonzero(as_tuple=True)
    out = scaled.aggregate_split(r, s, W[r, s], 4, {"t": thetas[:4]}, {"t": thetas[4:]})["t"]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, aggregate_experts(W, thetas), rtol=1e-6, atol=1e-6)
