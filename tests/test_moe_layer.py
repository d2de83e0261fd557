"""The MoE layer (sort-based 'torch' and dense-masked 'dense' backends) against a per-token loop reference.

Reference, for token t (float64):

    p      = softmax(x[t] W_g^T)                       (E,)
    idx    = the k largest p, ties to the lower index  (stable order)
    w      = p[idx] / sum(p[idx])
    y[t]   = sum_j w[j] * expert_{idx[j]}(x[t]),  expert_e(x) = gelu(x w1[e] + b1[e]) w2[e] + b2[e]

With a capacity C, tokens are visited in order (t, then j) and an assignment to
an expert that already took C is dropped (contributes 0).
"""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmoe_da.moe import MoELayer, load_balance_loss, resolve_backend, z_loss
from fedmoe_da.moe import backend as backend_mod
from fedmoe_da.moe import layer as layer_mod
from fedmoe_da.moe.backend import DENSE, DENSE_MAX_WORK, TORCH, dense_work
from fedmoe_da.moe.reference import TORCH_OPS, routing_index_reference

pytestmark = pytest.mark.equivalence   # also run on a CPU without AVX-512's kernels (Makefile: test)

TOL = dict(rtol=1e-10, atol=1e-12)   # fp64 throughout (the router too): agreement to fp64 rounding, on any CPU
BACKENDS = ["torch", "dense"]      # the CPU backends; triton is tested against torch in test_triton_dispatch.py


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, written out."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def reference(layer: MoELayer, x: torch.Tensor, capacity: int | None = None):
    """Loop over tokens: returns y (T, d_out), indices (list of lists), weights (T, k), dropped count."""
    Wg, w1, b1, w2, b2 = layer.gate.weight, layer.w1, layer.b1, layer.w2, layer.b2
    E, k = layer.num_experts, layer.top_k
    used = [0] * E
    ys, all_idx, all_w, dropped = [], [], [], 0
    for t in range(x.shape[0]):
        logits = torch.stack([torch.dot(x[t], Wg[e]) for e in range(E)])
        p = torch.exp(logits - logits.max())
        p = p / p.sum()
        pv = p.detach().tolist()
        idx = sorted(range(E), key=lambda e: (-pv[e], e))[:k]          # stable: ties -> lower index
        w = p[idx] / p[idx].sum()
        y = torch.zeros(w2.shape[2], dtype=x.dtype)
        for j, e in enumerate(idx):
            if capacity is not None and used[e] >= capacity:
                dropped += 1
                continue
            used[e] += 1
            h = gelu(x[t] @ w1[e] + b1[e])
            y = y + w[j] * (h @ w2[e] + b2[e])
        ys.append(y)
        all_idx.append(idx)
        all_w.append(w)
    return torch.stack(ys), all_idx, torch.stack(all_w), dropped


def make_layer(d=5, h=7, d_out=3, E=4, k=2, seed=0, backend="torch", **kw) -> MoELayer:
    torch.manual_seed(seed)
    layer = MoELayer(d, h, d_out, num_experts=E, top_k=k, backend=backend, **kw).double()
    with torch.no_grad():
        layer.gate.weight.normal_()   # spread the logits: no near-ties
    return layer


def grads(layer: MoELayer, x: torch.Tensor, out: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    params = [x, layer.gate.weight, layer.w1, layer.b1, layer.w2, layer.b2]
    return list(torch.autograd.grad((out * g).sum(), params, allow_unused=False))


def check_against_reference(layer: MoELayer, x: torch.Tensor, capacity: int | None = None) -> None:
    x = x.clone().requires_grad_(True)
    y = layer(x)
    lead = x.shape[:-1]
    xf = x.reshape(-1, x.shape[-1])
    y_ref, idx_ref, w_ref, dropped = reference(layer, xf, capacity)
    torch.testing.assert_close(y, y_ref.reshape(*lead, -1), **TOL)
    r = layer.routing
    assert r.indices.tolist() == idx_ref
    torch.testing.assert_close(r.weights.double(), w_ref.detach(), **TOL)
    counts = torch.bincount(torch.tensor(idx_ref).reshape(-1), minlength=layer.num_experts)
    assert r.tokens_per_expert.tolist() == counts.tolist()
    assert r.dropped == dropped
    g = torch.randn(y_ref.shape, dtype=y_ref.dtype, generator=torch.Generator().manual_seed(1))   # upstream grad
    got = grads(layer, x, y, g.reshape(y.shape))
    want = grads(layer, x, y_ref, g)
    for name, a, b in zip(("x", "gate", "w1", "b1", "w2", "b2"), got, want):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"grad of {n}: {m}")


# --------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("k,E", [(1, 4), (2, 4), (4, 6), (4, 4)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_backward_match_loop_reference(k, E, backend):
    layer = make_layer(E=E, k=k, seed=k * 10 + E, backend=backend)
    torch.manual_seed(5)
    check_against_reference(layer, torch.randn(13, 5, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dimensions_are_flattened_to_tokens(backend):
    layer = make_layer(k=2, seed=3, backend=backend)
    torch.manual_seed(6)
    check_against_reference(layer, torch.randn(2, 3, 5, dtype=torch.float64))
    assert layer(torch.randn(2, 3, 5, dtype=torch.float64)).shape == (2, 3, 3)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_single_token(k, backend):
    layer = make_layer(k=k, seed=4, backend=backend)
    torch.manual_seed(7)
    check_against_reference(layer, torch.randn(1, 5, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_expert_receiving_no_token(backend):
    """Expert 3's gate row points away from every (positive) input: it is never chosen, its grads are 0."""
    layer = make_layer(E=4, k=2, seed=8, backend=backend)
    with torch.no_grad():
        layer.gate.weight[3] = -10.0
    torch.manual_seed(9)
    x = torch.rand(11, 5, dtype=torch.float64) + 0.1
    check_against_reference(layer, x)
    assert layer.routing.tokens_per_expert[3] == 0
    x = x.clone().requires_grad_(True)
    gw1, gb1, gw2, gb2 = torch.autograd.grad(layer(x).sum(), [layer.w1, layer.b1, layer.w2, layer.b2])
    for g in (gw1, gb1, gw2, gb2):
        assert torch.count_nonzero(g[3]) == 0 and torch.count_nonzero(g[:3]) > 0


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 9), E=st.integers(1, 5), k=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_random_shapes_against_reference(backend, T, E, k, seed):
    k = min(k, E)
    layer = make_layer(d=3, h=4, d_out=2, E=E, k=k, seed=seed, backend=backend)
    x = torch.randn(T, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    check_against_reference(layer, x)


# --------------------------------------------------------------------------- dense path = sort path
def _fwd_bwd(layer: MoELayer, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y.square().mean() + layer.aux_loss).backward()
    return y, {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}


@pytest.mark.parametrize("T,E,k,capacity_factor", [(64, 8, 2, None), (37, 6, 3, None), (50, 10, 1, None),
                                                   (64, 8, 2, 0.5), (40, 3, 2, 1.0)])
def test_dense_matches_sort_path_fp32(T, E, k, capacity_factor):
    """The default workload's shapes (d = h = 64, d_out = 10), fp32: same routing, values and grads close."""
    torch.manual_seed(T + E + k)
    sort = MoELayer(64, 64, 10, num_experts=E, top_k=k, backend="torch", capacity_factor=capacity_factor)
    dense = MoELayer(64, 64, 10, num_experts=E, top_k=k, backend="dense", capacity_factor=capacity_factor)
    dense.load_state_dict(sort.state_dict())
    x = torch.randn(T, 64)
    y_ref, g_ref = _fwd_bwd(sort, x)
    y, g = _fwd_bwd(dense, x)
    for field in ("indices", "weights", "tokens_per_expert"):
        assert torch.equal(getattr(dense.routing, field), getattr(sort.routing, field)), field
    assert dense.routing.dropped == sort.routing.dropped
    if capacity_factor == 0.5:
        assert dense.routing.dropped > 0
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    assert set(g) == {"x", "gate.weight", "w1", "b1", "w2", "b2"}
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_dense_matches_sort_path_half_precision(dtype):
    """Same half-precision weights and inputs: identical routing; values and grads within half rounding."""
    torch.manual_seed(3)
    sort = MoELayer(64, 64, 10, num_experts=8, top_k=2, backend="torch").to(dtype)
    dense = MoELayer(64, 64, 10, num_experts=8, top_k=2, backend="dense").to(dtype)
    dense.load_state_dict(sort.state_dict())
    x = torch.randn(33, 64).to(dtype)
    (y_ref, g_ref), (y, g) = _fwd_bwd(sort, x), _fwd_bwd(dense, x)
    assert torch.equal(dense.routing.indices, sort.routing.indices) and y.dtype == dtype
    for name, a, b in [("y", y, y_ref)] + [(n, g[n], g_ref[n]) for n in g]:
        assert a.dtype == b.dtype, name
        tol = 2e-2 * b.float().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


def test_dense_with_no_tokens():
    layer = make_layer(backend="dense")
    assert layer(torch.zeros(0, 5, dtype=torch.float64)).shape == (0, 3)
    assert layer.routing.tokens_per_expert.tolist() == [0, 0, 0, 0]


# --------------------------------------------------------------------------- the 'auto' rule
def test_auto_rule_on_cpu():
    cpu = torch.device("cpu")
    default = dense_work(tokens=64, d_model=64, d_hidden=64, d_out=10, num_experts=8)   # the default workload
    vit = dense_work(tokens=16 * 65, d_model=64, d_hidden=128, d_out=64, num_experts=8)
    assert default == 8 * 64 * (64 + 10) * 64
    assert resolve_backend("auto", cpu, default) is DENSE
    assert resolve_backend("auto", cpu, DENSE_MAX_WORK) is DENSE
    assert resolve_backend("auto", cpu, DENSE_MAX_WORK + 1) is TORCH
    assert resolve_backend("auto", cpu, vit) is TORCH
    assert resolve_backend("auto", cpu, None) is TORCH                  # capacity set, or size unknown
    assert resolve_backend("torch", cpu, default) is TORCH and resolve_backend("dense", cpu, vit) is DENSE
    with pytest.raises(ValueError, match="backend='nope' is invalid"):
        resolve_backend("nope", cpu)


@pytest.mark.parametrize("T,capacity_factor,expected", [(16, None, "dense"), (64, None, "dense"),
                                                        (64, 1.0, "torch"), (4096, None, "torch")])
def test_auto_layer_picks_dense_only_small_and_dropless(monkeypatch, T, capacity_factor, expected):
    picked = []

    def spy(*args):
        backend = backend_mod.resolve_backend(*args)
        picked.append(backend.name)
        return backend

    monkeypatch.setattr(layer_mod, "resolve_backend", spy)
    layer = MoELayer(64, 64, 10, num_experts=8, top_k=2, capacity_factor=capacity_factor)   # backend='auto'
    layer(torch.randn(T, 64))
    assert picked == [expected]


# --------------------------------------------------------------------------- ties
@pytest.mark.parametrize("k", [1, 2, 3])
def test_all_equal_logits_route_to_lowest_indices(k):
    layer = make_layer(E=5, k=k, seed=1)
    with torch.no_grad():
        layer.gate.weight.zero_()
    layer(torch.randn(6, 5, dtype=torch.float64))
    assert layer.routing.indices.tolist() == [list(range(k))] * 6
    # fp64 model: fp64 routing
    torch.testing.assert_close(layer.routing.weights, torch.full((6, k), 1.0 / k, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_ties_break_to_lower_index(backend):
    """Experts 1 and 3 tie for best, 0, 2, 4 tie below them: order is 1, 3, 0, 2, 4."""
    layer = make_layer(E=5, k=4, seed=2, backend=backend)
    v = torch.ones(5, dtype=torch.float64)
    with torch.no_grad():
        layer.gate.weight.copy_(torch.stack([0.5 * v, v, 0.5 * v, v, 0.5 * v]))
    x = torch.randint(1, 9, (4, 5), generator=torch.Generator().manual_seed(0)).double() / 8   # exact sums in
    layer(x)                                                                                     # any order: exact ties
    assert layer.routing.indices.tolist() == [[1, 3, 0, 2]] * 4
    check_against_reference(layer, x)


# --------------------------------------------------------------------------- capacity
@pytest.mark.parametrize("factor", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_capacity_drops_latest_tokens_of_full_experts(factor, backend):
    layer = make_layer(E=4, k=2, seed=11, capacity_factor=factor, backend=backend)
    with torch.no_grad():
        layer.gate.weight[0] += 2.0           # make expert 0 popular so that it overflows
    torch.manual_seed(12)
    x = torch.rand(16, 5, dtype=torch.float64)
    capacity = math.ceil(factor * 16 * 2 / 4)
    assert layer.capacity(16) == capacity
    check_against_reference(layer, x, capacity)
    if factor < 1.0:
        assert layer.routing.dropped > 0


def test_dropless_by_default():
    layer = make_layer(E=4, k=2, seed=13)
    with torch.no_grad():
        layer.gate.weight[0] += 5.0
    layer(torch.rand(20, 5, dtype=torch.float64))
    assert layer.capacity(20) is None and layer.routing.dropped == 0
    assert layer.routing.tokens_per_expert[0] == 20


# --------------------------------------------------------------------------- aux losses
def lb_reference(logits: torch.Tensor, indices: list[list[int]], E: int, k: int) -> float:
    """(E/k) sum_e f_e P_e, f_e = count_e / T, P_e = mean softmax prob, by loops."""
    T = logits.shape[0]
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]
    total = 0.0
    for e in range(E):
        f = sum(row.count(e) for row in indices) / T
        Pe = sum(probs[t][e] for t in range(T)) / T
        total += f * Pe
    return E / k * total


@pytest.mark.parametrize("k", [1, 2])
def test_load_balance_is_one_at_perfect_balance(k):
    """Token t routes to experts t mod 4 (and t+1 mod 4 for k=2): f_e = k/E, so L = sum_e P_e = 1."""
    E = 4
    layer = make_layer(d=4, E=E, k=k, seed=0)
    with torch.no_grad():
        layer.gate.weight.copy_(5.0 * torch.eye(4, dtype=torch.float64))
    x = torch.stack([torch.eye(4, dtype=torch.float64)[t % 4] + 0.5 * torch.eye(4, dtype=torch.float64)[(t + 1) % 4]
                     for t in range(8)])
    layer(x)
    assert layer.routing.tokens_per_expert.tolist() == [2 * k] * 4
    assert abs(layer.aux_losses["load_balance"].item() - 1.0) < 1e-6
    # the function alone: uniform probabilities and balanced counts
    probs = torch.full((8, E), 1.0 / E)
    idx = torch.tensor([[(t + j) % E for j in range(k)] for t in range(8)])
    assert abs(float(load_balance_loss(probs, idx, E)) - 1.0) < 1e-6


def test_load_balance_above_one_when_collapsed():
    layer = make_layer(E=4, k=1, seed=0)
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.weight[2] = 3.0
    layer(torch.rand(10, 5, dtype=torch.float64) + 0.5)
    assert layer.routing.tokens_per_expert.tolist() == [0, 0, 10, 0]
    assert layer.aux_losses["load_balance"].item() > 3.0      # E * P_2 with P_2 close to 1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_aux_losses_match_formulas(k):
    layer = make_layer(E=5, k=k, seed=21, lb_coef=0.3, z_coef=0.07)
    torch.manual_seed(22)
    x = 2 * torch.randn(17, 5, dtype=torch.float64)
    layer(x)
    r = layer.routing
    lb = lb_reference(r.logits, r.indices.tolist(), 5, k)
    z = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in r.logits.tolist()) / 17
    assert layer.aux_losses["load_balance"].item() == pytest.approx(lb, rel=1e-5)
    assert layer.aux_losses["z_loss"].item() == pytest.approx(z, rel=1e-5)
    assert layer.aux_loss.item() == pytest.approx(0.3 * lb + 0.07 * z, rel=1e-5)
    assert float(z_loss(r.logits)) == pytest.approx(z, rel=1e-5)


def test_load_balance_gradient_flows_through_probabilities_only():
    logits = torch.randn(6, 4, requires_grad=True)
    probs = torch.softmax(logits, -1)
    idx = torch.tensor([[0], [0], [1], [2], [0], [3]])
    (g,) = torch.autograd.grad(load_balance_loss(probs, idx, 4), [logits])
    # d/dP_e of (E/k) sum f_e P_e is (E/k) f_e / T per token: compare with autograd of that linear form
    f = torch.tensor([3, 1, 1, 1]) / 6.0
    (g_ref,) = torch.autograd.grad((4 / 1) * (f * torch.softmax(logits, -1).mean(0)).sum(), [logits])
    torch.testing.assert_close(g, g_ref)


def test_routing_info_after_forward():
    layer = make_layer(E=4, k=2, seed=30)
    assert layer.routing is None
    x = torch.randn(9, 5, dtype=torch.float64)
    layer(x)
    r = layer.routing
    assert r.weights.shape == (9, 2) and r.indices.shape == (9, 2) and r.logits.shape == (9, 4)
    torch.testing.assert_close(r.logits, x @ layer.gate.weight.detach().T)
    torch.testing.assert_close(r.weights.sum(1), torch.ones(9, dtype=torch.float64))
    assert int(r.tokens_per_expert.sum()) == 9 * 2
    assert not r.weights.requires_grad and not r.logits.requires_grad


def test_invalid_layer_arguments():
    with pytest.raises(ValueError, match="top_k=5"):
        MoELayer(4, 4, num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="activation='tanh'"):
        MoELayer(4, 4, num_experts=4, top_k=1, activation="tanh")
    with pytest.raises(ValueError, match="backend='sparse' is invalid: must be one of auto, torch, dense, triton"):
        MoELayer(4, 4, num_experts=4, top_k=1, backend="sparse")


# --------------------------------------------------------------------------- routing index
@settings(max_examples=50, deadline=None)
@given(T=st.integers(1, 20), k=st.integers(1, 4), E=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_routing_index_is_the_stable_order(T, k, E, seed):
    idx = torch.randint(0, E, (T, k), generator=torch.Generator().manual_seed(seed))
    flat = idx.reshape(-1).tolist()
    order = sorted(range(T * k), key=lambda a: (flat[a], a))     # expert-contiguous, stable by assignment
    ri = routing_index_reference(idx, E)
    assert ri.token_of.tolist() == [a // k for a in order]
    assert ri.counts.tolist() == [flat.count(e) for e in range(E)]
    assert ri.offsets.tolist() == [sum(flat.count(f) for f in range(e)) for e in range(E + 1)]
    for t in range(T):
        for j in range(k):
            assert ri.pos_of[t, j] == order.index(t * k + j)
    # permute then combine with weights summing to 1 and identity experts gives x back
    x = torch.randn(T, 3, generator=torch.Generator().manual_seed(seed + 1))
    w = torch.softmax(torch.randn(T, k, generator=torch.Generator().manual_seed(seed + 2)), -1)
    back = TORCH_OPS.combine(TORCH_OPS.permute(x, ri), w, ri)
    torch.testing.assert_close(back, x)
    assert torch.equal(TORCH_OPS.permute(x, ri), torch.stack([x[a // k] for a in order]))


# --------------------------------------------------------------------------- the CPU benchmark, smoke run
def test_cpu_benchmark_tiny_runs(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "moe_cpu.csv"
    subprocess.run([sys.executable, str(root / "benchmarks" / "moe_cpu.py"), "--tiny", "--out", str(out)],
                   check=True, cwd=root, timeout=120, capture_output=True)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["backend"] for r in rows} == {"torch", "dense"}
    assert all(float(r["median_us"]) > 0 and r["auto_picks"] == "dense" for r in rows)
    assert out.with_suffix(".json").exists()
