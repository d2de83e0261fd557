"""The Triton dispatch backend against its torch reference (the oracle), op by op and as a whole layer.

Indices and routing-index tensors must be identical; values and gradients
close. Half-precision inputs are compared with the fp32 reference run on the
same upcast inputs. On CPU the kernels run in Triton's interpreter (conftest.py
sets TRITON_INTERPRET=1), so sizes stay small there; on CUDA the same tests run
at real sizes.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmoe_da.moe import MoELayer, triton_available
from fedmoe_da.moe.reference import TORCH_OPS as REF
from fedmoe_da.moe.router import routing_dtype

_OK, _WHY = triton_available()           # (bool, reason): the tuple itself is always truthy
if not _OK:
    pytest.skip(f"Triton backend skipped: {_WHY}", allow_module_level=True)

from fedmoe_da.moe.triton_dispatch import TRITON_OPS as TRI  # noqa: E402

pytestmark = pytest.mark.equivalence   # also run on a CPU without AVX-512's kernels (Makefile: test)

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# token counts: not multiples of any block size, plus a single token; d spans two BLOCK_D tiles (32 interpreted)
TOKENS = (1, 37, 4096) if CUDA else (1, 37, 130)
D = 1024 + 40 if CUDA else 40
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}   # relative to the largest |expected|
EK = [(E, k) for E in (1, 4, 64) for k in (1, 2, 4) if k <= E]
# E not a power of two: the kernels pad the expert axis to E_PAD and must mask the padding out
EK_ODD = [(E, k) for E in (3, 6, 10) for k in (1, 2, 3)]


def _close(actual, expected, dtype=torch.float32):
    """|actual - expected| <= tol * max|expected| (+ tiny atol), elementwise, in fp32."""
    actual, expected = actual.float(), expected.float()
    assert actual.shape == expected.shape
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=TOL[dtype], atol=TOL[dtype] * scale + 1e-6)


def _indices(T, E, k, seed, empty=None):
    """(T, k) expert ids, any pattern (repeats allowed); expert `empty` (if given) receives nothing."""
    g = torch.Generator().manual_seed(seed)
    if empty is None:
        return torch.randint(0, E, (T, k), generator=g).to(DEVICE)
    idx = torch.randint(0, E - 1, (T, k), generator=g)
    return (idx + (idx >= empty).long()).to(DEVICE)


def _assert_same_index(a, b):
    for name in ("counts", "offsets", "token_of", "pos_of"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == torch.int64, name
        assert torch.equal(x, y), name


# --------------------------------------------------------------------------- topk_softmax

@pytest.mark.parametrize("E,k", EK)
@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_topk_softmax_matches_reference(E, k, T, dtype):
    torch.manual_seed(T * 100 + E * 10 + k)
    z = (3 * torch.randn(T, E, device=DEVICE)).to(dtype).requires_grad_()
    z32 = z.detach().float().requires_grad_()                      # the same logits, upcast
    w, idx = TRI.topk_softmax(z, k)
    w_ref, idx_ref = REF.topk_softmax(z32, k)
    assert w.dtype == torch.float32 and idx.dtype == torch.int64 and w.shape == idx.shape == (T, k)
    assert torch.equal(idx, idx_ref)
    _close(w, w_ref)
    g = torch.randn(T, k, device=DEVICE)
    (gz,) = torch.autograd.grad(w, z, g)
    (gz_ref,) = torch.autograd.grad(w_ref, z32, g)
    assert gz.dtype == dtype
    _close(gz, gz_ref, dtype)


@pytest.mark.parametrize("E,k", EK_ODD)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_topk_softmax_experts_not_a_power_of_two(E, k, dtype):
    T = TOKENS[1]
    torch.manual_seed(E * 10 + k)
    z = (3 * torch.randn(T, E, device=DEVICE)).to(dtype).requires_grad_()
    z32 = z.detach().float().requires_grad_()
    w, idx = TRI.topk_softmax(z, k)
    w_ref, idx_ref = REF.topk_softmax(z32, k)
    assert torch.equal(idx, idx_ref)
    assert int(idx.max()) < E                                      # never a padding column
    _close(w, w_ref)
    g = torch.randn(T, k, device=DEVICE)
    (gz,) = torch.autograd.grad(w, z, g)
    (gz_ref,) = torch.autograd.grad(w_ref, z32, g)
    _close(gz, gz_ref, dtype)


@pytest.mark.parametrize("renormalize", [True, False])
def test_topk_softmax_without_renormalisation(renormalize):
    z = torch.randn(37, 8, device=DEVICE, requires_grad=True)
    w, idx = TRI.topk_softmax(z, 3, renormalize=renormalize)
    w_ref, idx_ref = REF.topk_softmax(z, 3, renormalize=renormalize)
    assert torch.equal(idx, idx_ref)
    _close(w, w_ref)
    g = torch.randn(37, 3, device=DEVICE)
    _close(torch.autograd.grad(w, z, g)[0], torch.autograd.grad(w_ref, z, g)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_topk_softmax_ties_go_to_lower_index(dtype):
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                      [1.0, 3.0, 3.0, 1.0],
                      [2.0, 1.0, 2.0, 2.0],
                      [-1.0, 5.0, -1.0, 5.0]], device=DEVICE, dtype=dtype)
    _, idx = TRI.topk_softmax(z, 3)
    expected = torch.tensor([[0, 1, 2], [1, 2, 0], [0, 2, 3], [1, 3, 0]], device=DEVICE)
    assert torch.equal(idx, expected)
    assert torch.equal(idx, REF.topk_softmax(z, 3)[1])


# --------------------------------------------------------------------------- routing_index

@pytest.mark.parametrize("E,k", EK)
@pytest.mark.parametrize("T", TOKENS)
def test_routing_index_matches_reference(E, k, T):
    idx = _indices(T, E, k, seed=T + E + k)
    _assert_same_index(TRI.routing_index(idx, E), REF.routing_index(idx, E))


@pytest.mark.parametrize("E,k", EK_ODD)
def test_routing_index_experts_not_a_power_of_two(E, k):
    idx = _indices(TOKENS[-1], E, k, seed=E + k, empty=E - 1)
    _assert_same_index(TRI.routing_index(idx, E), REF.routing_index(idx, E))


@pytest.mark.parametrize("E,k", [(4, 2), (64, 4)])
@pytest.mark.parametrize("empty", ["first", "last"])
def test_routing_index_with_an_expert_that_gets_no_token(E, k, empty):
    e = 0 if empty == "first" else E - 1
    idx = _indices(TOKENS[-1], E, k, seed=3, empty=e)
    index = TRI.routing_index(idx, E)
    assert index.counts[e] == 0
    _assert_same_index(index, REF.routing_index(idx, E))


def test_routing_index_all_tokens_to_one_expert():
    idx = torch.full((TOKENS[-1], 2), 5, device=DEVICE)
    _assert_same_index(TRI.routing_index(idx, 64), REF.routing_index(idx, 64))


@settings(max_examples=15, deadline=None)
@given(T=st.integers(1, 150), E=st.integers(1, 64), k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_routing_index_property(T, E, k, seed):
    idx = _indices(T, E, k, seed)
    index = TRI.routing_index(idx, E)
    _assert_same_index(index, REF.routing_index(idx, E))
    # pos_of is a permutation and token_of inverts it
    assert torch.equal(torch.sort(index.pos_of.reshape(-1)).values, torch.arange(T * k, device=DEVICE))
    assert torch.equal(index.token_of[index.pos_of], torch.arange(T, device=DEVICE)[:, None].expand(T, k))


# --------------------------------------------------------------------------- permute / combine

@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_permute_matches_reference(k, T, dtype):
    E = 8
    index = REF.routing_index(_indices(T, E, k, seed=T * k, empty=2), E)
    x = torch.randn(T, D, device=DEVICE).to(dtype).requires_grad_()
    x32 = x.detach().float().requires_grad_()
    x_perm = TRI.permute(x, index)
    assert x_perm.dtype == dtype
    assert torch.equal(x_perm, REF.permute(x.detach(), index))   # a pure gather: exact
    g = torch.randn(T * k, D, device=DEVICE).to(dtype)
    (gx,) = torch.autograd.grad(x_perm, x, g)
    (gx_ref,) = torch.autograd.grad(REF.permute(x32, index), x32, g.float())
    assert gx.dtype == dtype
    _close(gx, gx_ref, dtype)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_combine_matches_reference(k, T, dtype):
    E = 8
    index = REF.routing_index(_indices(T, E, k, seed=T * k + 1, empty=5), E)
    y_perm = torch.randn(T * k, D, device=DEVICE).to(dtype).requires_grad_()
    w = torch.softmax(torch.randn(T, k, device=DEVICE), -1).requires_grad_()
    y_perm32 = y_perm.detach().float().requires_grad_()
    y = TRI.combine(y_perm, w, index)
    y_ref = REF.combine(y_perm32, w, index)
    assert y.dtype == dtype and y.shape == (T, D)
    _close(y, y_ref, dtype)
    g = torch.randn(T, D, device=DEVICE).to(dtype)
    gyp, gw = torch.autograd.grad(y, (y_perm, w), g)
    gyp_ref, gw_ref = torch.autograd.grad(y_ref, (y_perm32, w), g.float())
    assert gyp.dtype == dtype and gw.dtype == torch.float32
    _close(gyp, gyp_ref, dtype)
    _close(gw, gw_ref, dtype)


def test_combine_backward_only_weights_or_only_rows():
    T, k = TOKENS[1], 2
    index = REF.routing_index(_indices(T, 4, k, seed=7), 4)
    y_perm = torch.randn(T * k, D, device=DEVICE)
    w = torch.rand(T, k, device=DEVICE)
    for wants in ("w", "y"):
        yp = y_perm.clone().requires_grad_(wants == "y")
        ww = w.clone().requires_grad_(wants == "w")
        out, out_ref = TRI.combine(yp, ww, index), REF.combine(yp, ww, index)
        g = torch.randn_like(out)
        leaf = yp if wants == "y" else ww
        _close(torch.autograd.grad(out, leaf, g)[0], torch.autograd.grad(out_ref, leaf, g)[0])


# --------------------------------------------------------------------------- fallbacks: fp64 and empty inputs

def _all_ops(ops, T, d, E, k, dtype, seed=0):
    """Run the four ops (forward and backward) on one set of inputs: {name: tensor}."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(T, E, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    x = torch.randn(T, d, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    y_perm = torch.randn(T * k, d, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    w, idx = ops.topk_softmax(z, k)
    index = ops.routing_index(idx, E)
    x_perm = ops.permute(x, index)
    y = ops.combine(y_perm, w, index)
    out = {"weights": w, "indices": idx, **{n: getattr(index, n) for n in ("counts", "offsets", "token_of", "pos_of")},
           "x_perm": x_perm, "y": y}
    if T:
        loss = y.square().sum() + (x_perm * torch.arange(x_perm.numel(), device=DEVICE).view_as(x_perm)).sum()
        out |= dict(zip(("grad_z", "grad_x", "grad_y_perm"), torch.autograd.grad(loss, (z, x, y_perm))))
    return out


def test_fp64_inputs_fall_back_to_the_reference_exactly():
    got, want = _all_ops(TRI, 37, 20, 6, 2, torch.float64), _all_ops(REF, 37, 20, 6, 2, torch.float64)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_zero_tokens_give_empty_results(dtype):
    E, k, d = 5, 2, 20
    out = _all_ops(TRI, 0, d, E, k, dtype)
    shapes = {"weights": (0, k), "indices": (0, k), "counts": (E,), "offsets": (E + 1,), "token_of": (0,),
              "pos_of": (0, k), "x_perm": (0, d), "y": (0, d)}
    assert {n: tuple(t.shape) for n, t in out.items()} == shapes
    assert out["counts"].sum() == 0 and out["offsets"].sum() == 0
    assert out["weights"].dtype == routing_dtype(dtype) and out["y"].dtype == dtype


# --------------------------------------------------------------------------- the whole layer

def _layer_pair(E, k, dtype, capacity_factor=None, seed=0):
    torch.manual_seed(seed)
    ref = MoELayer(D, 24, num_experts=E, top_k=k, backend="torch", capacity_factor=capacity_factor)
    tri = MoELayer(D, 24, num_experts=E, top_k=k, backend="triton", capacity_factor=capacity_factor)
    tri.load_state_dict(ref.state_dict())
    return ref.to(DEVICE, dtype), tri.to(DEVICE, dtype)


def _run(layer, x):
    x = x.clone().requires_grad_()
    y = layer(x)
    (y.float().square().mean() + layer.aux_loss).backward()
    grads = {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}
    return y, grads


def _compare_layers(ref, tri, x, dtype):
    y_ref, g_ref = _run(ref, x)
    y, g = _run(tri, x)
    assert torch.equal(tri.routing.indices, ref.routing.indices)
    assert torch.equal(tri.routing.tokens_per_expert, ref.routing.tokens_per_expert)
    assert tri.routing.dropped == ref.routing.dropped
    _close(y, y_ref, dtype)
    assert set(g) == {"x", "gate.weight", "w1", "b1", "w2", "b2"}
    for name in g:
        _close(g[name], g_ref[name], dtype)


@pytest.mark.parametrize("E,k", [(4, 1), (4, 2), (4, 4), (6, 3), (10, 2), (64, 2), (64, 4)])
@pytest.mark.parametrize("T", TOKENS)
def test_moe_layer_triton_matches_torch(E, k, T):
    ref, tri = _layer_pair(E, k, torch.float32, seed=T + E + k)
    _compare_layers(ref, tri, torch.randn(T, D, device=DEVICE), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_moe_layer_half_precision(dtype):
    # the same half-precision layer through both backends: identical logits, so identical routing
    ref, tri = _layer_pair(8, 2, dtype, seed=1)
    _compare_layers(ref, tri, torch.randn(2, TOKENS[1], D, device=DEVICE).to(dtype), dtype)


def test_moe_layer_expert_without_tokens_and_capacity_drops():
    ref, tri = _layer_pair(8, 2, torch.float32, capacity_factor=0.5, seed=2)
    x = torch.randn(TOKENS[-1], D, device=DEVICE)
    x[:, 0] = 1.0
    with torch.no_grad():
        for layer in (ref, tri):                      # expert 3's logit is about -100 for every token
            layer.gate.weight[3] = 0.0
            layer.gate.weight[3, 0] = -100.0
    _compare_layers(ref, tri, x, torch.float32)
    assert tri.routing.tokens_per_expert[3] == 0
    if TOKENS[-1] > 1:
        assert tri.routing.dropped > 0


# --------------------------------------------------------------------------- the benchmark script, smoke run

def test_benchmark_tiny_runs(tmp_path):
    out = tmp_path / "x.csv"
    env = dict(os.environ)
    if not CUDA:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "moe_dispatch.py"), "--tiny", "--out", str(out)],
                   check=True, env=env, cwd=ROOT, timeout=300)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    expected = {"op", "backend", "tokens", "hidden", "experts", "top_k", "dtype", "median_ms", "bytes",
                "gb_per_s", "copy_gb_per_s", "frac_of_copy", "speedup_vs_torch", "device", "torch", "triton"}
    assert rows and expected <= set(rows[0])
    ops = {r["op"] for r in rows}
    assert {"topk_softmax", "routing_index", "permute_fwd", "permute_bwd", "combine_fwd", "combine_bwd",
            "layer_fwd_bwd"} <= ops
    assert {r["backend"] for r in rows} == {"torch", "triton"}
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert out.with_suffix(".png").exists() and out.with_suffix(".json").exists()
