"""The MoE layer (torch backend) against a per-token loop reference written here.

Reference, for token t (float64):

    p      = softmax(x[t] W_g^T)                       (E,)
    idx    = the k largest p, ties to the lower index  (stable order)
    w      = p[idx] / sum(p[idx])
    y[t]   = sum_j w[j] * expert_{idx[j]}(x[t]),  expert_e(x) = gelu(x w1[e] + b1[e]) w2[e] + b2[e]

With a capacity C, tokens are visited in order (t, then j) and an assignment to
an expert that already took C is dropped (contributes 0).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmoe_da.moe import MoELayer, load_balance_loss, z_loss
from fedmoe_da.moe.reference import TORCH_OPS, routing_index_reference

TOL = dict(rtol=1e-5, atol=1e-6)   # the router's softmax runs in fp32 even for fp64 inputs


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


def make_layer(d=5, h=7, d_out=3, E=4, k=2, seed=0, **kw) -> MoELayer:
    torch.manual_seed(seed)
    layer = MoELayer(d, h, d_out, num_experts=E, top_k=k, backend="torch", **kw).double()
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
def test_forward_backward_match_loop_reference(k, E):
    layer = make_layer(E=E, k=k, seed=k * 10 + E)
    torch.manual_seed(5)
    check_against_reference(layer, torch.randn(13, 5, dtype=torch.float64))


def test_leading_dimensions_are_flattened_to_tokens():
    layer = make_layer(k=2, seed=3)
    torch.manual_seed(6)
    check_against_reference(layer, torch.randn(2, 3, 5, dtype=torch.float64))
    assert layer(torch.randn(2, 3, 5, dtype=torch.float64)).shape == (2, 3, 3)


@pytest.mark.parametrize("k", [1, 2])
def test_single_token(k):
    layer = make_layer(k=k, seed=4)
    torch.manual_seed(7)
    check_against_reference(layer, torch.randn(1, 5, dtype=torch.float64))


def test_expert_receiving_no_token():
    """Expert 3's gate row points away from every (positive) input: it is never chosen, its grads are 0."""
    layer = make_layer(E=4, k=2, seed=8)
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


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 9), E=st.integers(1, 5), k=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_random_shapes_against_reference(T, E, k, seed):
    k = min(k, E)
    layer = make_layer(d=3, h=4, d_out=2, E=E, k=k, seed=seed)
    x = torch.randn(T, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    check_against_reference(layer, x)


# --------------------------------------------------------------------------- ties
@pytest.mark.parametrize("k", [1, 2, 3])
def test_all_equal_logits_route_to_lowest_indices(k):
    layer = make_layer(E=5, k=k, seed=1)
    with torch.no_grad():
        layer.gate.weight.zero_()
    layer(torch.randn(6, 5, dtype=torch.float64))
    assert layer.routing.indices.tolist() == [list(range(k))] * 6
    torch.testing.assert_close(layer.routing.weights, torch.full((6, k), 1.0 / k))


def test_partial_ties_break_to_lower_index():
    """Experts 1 and 3 tie for best, 0, 2, 4 tie below them: order is 1, 3, 0, 2, 4."""
    layer = make_layer(E=5, k=4, seed=2)
    v = torch.ones(5, dtype=torch.float64)
    with torch.no_grad():
        layer.gate.weight.copy_(torch.stack([0.5 * v, v, 0.5 * v, v, 0.5 * v]))
    x = torch.rand(4, 5, dtype=torch.float64) + 0.1
    layer(x)
    assert layer.routing.indices.tolist() == [[1, 3, 0, 2]] * 4
    check_against_reference(layer, x)


# --------------------------------------------------------------------------- capacity
@pytest.mark.parametrize("factor", [0.25, 0.5, 1.0])
def test_capacity_drops_latest_tokens_of_full_experts(factor):
    layer = make_layer(E=4, k=2, seed=11, capacity_factor=factor)
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
    torch.testing.assert_close(r.weights.sum(1), torch.ones(9))
    assert int(r.tokens_per_expert.sum()) == 9 * 2
    assert not r.weights.requires_grad and not r.logits.requires_grad


def test_invalid_layer_arguments():
    with pytest.raises(ValueError, match="top_k=5"):
        MoELayer(4, 4, num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="activation='tanh'"):
        MoELayer(4, 4, num_experts=4, top_k=1, activation="tanh")


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
