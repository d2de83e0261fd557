"""FedAvg and the dense references of FedMoE-DA's Eq. 8-11 against loop references, and the strategies end to end
(the scaled path against the dense references: test_aggregation_scaled.py).

Reference of Eq. 8-10, written here pair by pair:

    R_ij = cos(pi_i, pi_j)                          (R_ii = 1; a zero proxy has cos 0 with the others)
    S_i  = { j : R_ij >= (P+1)-th largest of row i } ties kept; P = 0 -> identity
    a_ij = exp(R_ij / tau) / sum_{l in S_i} exp(R_il / tau)  for j in S_i, else 0

Eq. 11: theta_i <- sum_j a_ij theta_j from the pre-update thetas.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedmoe_da import models
from fedmoe_da.config import ExperimentConfig
from fedmoe_da.fl import InProcessTransport, aggregate_experts, aggregation_matrix, correlation, drop_absent, fedavg
from fedmoe_da.fl.registry import FedAvg, FedMoEDA, Local
from fedmoe_da.fl.state import get_state
from fedmoe_da.fl.strategy import Round
from fedmoe_da.fl.transport import SERVER
from fedmoe_da.models.names import parse_group

EPS_TIE = 1e-9   # numerical noise only: the reference's ties are exact ties


def cos(a: list[float], b: list[float]) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:
        return 0.0
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def ref_matrix(proxies: torch.Tensor, P: int, tau: float, floor: float | None = None) -> np.ndarray:
    """Eq. 8-10 by loops over pairs, in float64; with a floor, j != i with R_ij <= floor is not selected."""
    X = proxies.double().tolist()
    M = len(X)
    A = np.zeros((M, M))
    if P == 0:
        return np.eye(M)
    for i in range(M):
        R = [1.0 if j == i else cos(X[i], X[j]) for j in range(M)]
        threshold = sorted(R, reverse=True)[min(P, M - 1)]              # (P+1)-th largest
        S = [j for j in range(M) if R[j] >= threshold - EPS_TIE and (floor is None or j == i or R[j] > floor)]
        Z = sum(math.exp(R[j] / tau) for j in S)
        for j in S:
            A[i, j] = math.exp(R[j] / tau) / Z
    return A


def close(a, b, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------- Eq. 8-10
@settings(max_examples=80, deadline=None)
@given(M=st.integers(1, 9), d=st.integers(1, 4), P=st.integers(0, 10), tau=st.floats(0.05, 5.0),
       data=st.data())
def test_matrix_matches_loop_reference(M, d, P, tau, data):
    """Small integer proxies: many exact ties (and zero proxies), and distinct cosines far apart."""
    ints = data.draw(arrays(np.int64, (M, d), elements=st.integers(-2, 2)))
    proxies = torch.tensor(ints, dtype=torch.float32)
    close(aggregation_matrix(proxies, P, tau), ref_matrix(proxies, P, tau))


@pytest.mark.parametrize("P,tau", [(1, 0.1), (3, 0.5), (6, 1.0), (20, 0.3)])
def test_matrix_matches_reference_on_random_proxies(P, tau):
    proxies = torch.randn(12, 8, generator=torch.Generator().manual_seed(P))
    close(aggregation_matrix(proxies, P, tau), ref_matrix(proxies, P, tau))


@settings(max_examples=60, deadline=None)
@given(proxies=arrays(np.float32, st.tuples(st.integers(1, 10), st.integers(1, 5)),
                      elements=st.floats(-10, 10, width=32)),
       P=st.integers(0, 12), tau=st.floats(0.01, 10.0))
def test_matrix_is_row_stochastic_and_nonnegative(proxies, P, tau):
    """Rows sum to 1, and each row keeps (at least) its P + 1 most correlated pairs.

    The support is checked entry by entry against what float32 can hold: a selected j has
    a_ij >= exp((R_ij - 1) / tau) / M (R_ii = 1 is the row's largest term and |S_i| <= M), and with a
    tiny tau that bound, hence a_ij, can be below float32's smallest subnormal (2^-149) and round to
    exactly 0: the support then *looks* smaller than P + 1 without anything being wrong.
    """
    A = aggregation_matrix(torch.from_numpy(proxies), P, tau)
    M = proxies.shape[0]
    assert A.shape == (M, M) and torch.all(A >= 0)
    torch.testing.assert_close(A.sum(1), torch.ones(M, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.all(A.diagonal() >= A.max(1).values - 1e-6), "R_ii = 1 is the largest: a_ii is too"
    R = correlation(torch.from_numpy(proxies))                          # Eq. 8 (checked against loops above)
    top = R.topk(min(P + 1, M), dim=1).indices                          # (M, P + 1): selected when P > 0
    for i in range(M):                                                  # (ties kept; P = 0 is the identity)
        for j in {i} | (set(top[i].tolist()) if P > 0 else set()):
            if math.exp((float(R[i, j]) - 1.0) / tau) / M > 2.0 ** -148:  # representable in float32
                assert A[i, j] > 0, (i, j, float(R[i, j]))
    if tau >= 0.05:                                                     # exp(-2 / tau) / M never underflows
        assert torch.all((A > 0).sum(1) >= min(P + 1, M))


def test_p_zero_is_identity():
    proxies = torch.randn(7, 3)
    assert torch.equal(aggregation_matrix(proxies, 0, 0.1), torch.eye(7, dtype=torch.float64))
    same = torch.ones(7, 3)                                            # even when all proxies tie
    assert torch.equal(aggregation_matrix(same, 0, 0.1), torch.eye(7, dtype=torch.float64))


def test_p_at_least_m_minus_one_gives_full_rows():
    proxies = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    for P in (5, 6, 50):
        A = aggregation_matrix(proxies, P, 1.0)
        assert torch.all(A > 0)
        close(A, ref_matrix(proxies, P, 1.0))
    assert (aggregation_matrix(proxies, 4, 1.0) == 0).any(), "P = M - 2 leaves one out per row"


def test_identical_proxies_give_uniform_rows_over_all_ties():
    """Round 1: every client starts from the same gate G, so pair (k, e) ties with (k', e) for every k'."""
    N, E = 3, 4
    G = torch.randn(E, 5, generator=torch.Generator().manual_seed(2))
    proxies = G.repeat(N, 1)                                           # (N*E, d): client-major
    A = aggregation_matrix(proxies, P=1, tau=0.1)                      # P + 1 = 2 < N ties
    expected = np.zeros((N * E, N * E))
    for i in range(N * E):
        for j in range(N * E):
            if i % E == j % E:
                expected[i, j] = 1.0 / N
    close(A, expected)
    close(aggregation_matrix(torch.ones(5, 2), P=2, tau=0.3), np.full((5, 5), 0.2))


def test_small_tau_concentrates_on_the_best():
    proxies = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    A = aggregation_matrix(proxies, P=7, tau=1e-3)
    assert torch.all(A.diagonal() > 0.999), "itself (R_ii = 1) is the best match"
    # pair 8 is a near-copy of pair 0: with full rows, rows 0 and 8 put almost all weight on {0, 8}
    twin = torch.cat([proxies, proxies[:1] + 1e-3 * torch.randn(1, 6, generator=torch.Generator().manual_seed(4))])
    B = aggregation_matrix(twin, P=8, tau=5e-3)
    assert B[0, [0, 8]].sum() > 0.999 and B[8, [0, 8]].sum() > 0.999
    assert B[0, 8] > 0.3 and B[8, 0] > 0.3, "the twin is as good as itself"
    A1 = aggregation_matrix(proxies, P=7, tau=0.5)
    z = torch.nn.functional.normalize(proxies.double(), dim=1)
    R = z @ z.T
    for i in range(8):                                                 # weights ordered as correlations
        order = torch.argsort(R[i], descending=True)
        assert torch.all(A1[i, order][:-1] >= A1[i, order][1:] - 1e-7)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="P=-1"):
        aggregation_matrix(torch.randn(3, 2), -1, 0.1)
    with pytest.raises(ValueError, match="tau=0"):
        aggregation_matrix(torch.randn(3, 2), 1, 0)


# --------------------------------------------------------------------------- Eq. 11, drop_absent, fedavg
def test_aggregate_experts_matches_loop():
    g = torch.Generator().manual_seed(4)
    A = torch.softmax(torch.randn(6, 6, generator=g), 1)
    thetas = torch.randn(6, 3, 2, generator=g)
    out = aggregate_experts(A, thetas)
    for i in range(6):
        want = sum(A[i, j].item() * thetas[j] for j in range(6))
        torch.testing.assert_close(out[i], want, rtol=1e-5, atol=1e-6)
    rows = aggregate_experts(A[[4, 1]], thetas)                        # some rows only
    torch.testing.assert_close(rows, out[[4, 1]])


def test_drop_absent_renormalises():
    w = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.4, 0.4]])
    present = torch.tensor([[True, False, True, True], [True, True, True, False]])
    out = drop_absent(w, present)
    for r in range(2):
        kept = [w[r, j].item() if present[r, j] else 0.0 for j in range(4)]
        close(out[r], [v / sum(kept) for v in kept])


def test_fedavg_matches_loop():
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(4, 3, generator=g) for _ in range(3)]
    n = [10, 30, 60]
    want = sum(nk * x for nk, x in zip(n, xs)) / sum(n)
    torch.testing.assert_close(fedavg(xs, n), want)
    torch.testing.assert_close(fedavg(xs, [1, 1, 1]), sum(xs) / 3)


# --------------------------------------------------------------------------- strategies end to end
E, N = 4, 3
NUM_TRAIN = [10, 20, 30]


def tiny_model(**changes):
    """A tiny CNN (E experts) for 8x8 inputs and its config; seeded."""
    cfg = ExperimentConfig(num_experts=E, top_k=2, d_model=8, expert_hidden=6, P=3, tau=0.5, I=2,
                           backend="torch", model="cnn").replace(**changes)
    torch.manual_seed(0)
    return cfg, models.build(cfg, (1, 8, 8), 10)


def tiny_setup(**changes):
    cfg, model = tiny_model(**changes)
    return cfg, get_state(model), models.param_groups(model)


def random_states(template, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{n: torch.randn(t.shape, generator=g) for n, t in template.items()} for _ in range(N)]


def copy_states(states):
    return [{n: t.clone() for n, t in s.items()} for s in states]


def keys(groups, kind):
    return sorted({r.key for g, refs in groups.items() if g.startswith(kind) for r in refs})


def expected_experts(before, groups, pool, A_rows_of, present, layer=0):
    """Eq. 11 by a loop over the pool of one MoE layer, absent peers dropped and the row renormalised."""
    out = {}
    for k in present:
        out[k] = {}
        for key in keys(groups, f"expert[{layer}]"):
            rows = []
            for e in range(E):
                w = A_rows_of(pool.index(k) * E + e)                     # (M,) over the pool
                acc, total = 0.0, 0.0
                for j, wj in enumerate(w):
                    peer, slot = pool[j // E], j % E
                    if wj == 0 or peer not in present:
                        continue
                    acc = acc + wj * before[peer][key][slot].double()
                    total += wj
                rows.append(acc / total)
            out[k][key] = torch.stack(rows)
    return out


def ledger_rows(transport, rnd=None, channel=None):
    df = transport.ledger.to_frame()
    if rnd is not None:
        df = df[df["round"] == rnd]
    if channel is not None:
        df = df[df["channel"] == channel]
    return df


def check_p2p_plan(transport, rnd, pool, A, present, layer=0):
    """Each participant fetches exactly the distinct remote (peer, slot) of one layer with a_ij > 0, once each."""
    p2p = ledger_rows(transport, rnd, "p2p")
    p2p = p2p[p2p["group"].str.startswith(f"expert[{layer}]")]
    for k in present:
        got = [(int(s), g) for s, g in zip(p2p[p2p["dst"] == k]["src"], p2p[p2p["dst"] == k]["group"])]
        assert len(got) == len(set(got)), "a (peer, slot) fetched twice"
        want = set()
        for e in range(E):
            for j in np.flatnonzero(A[pool.index(k) * E + e] > 0):
                peer, slot = pool[j // E], j % E
                if peer != k and peer in present:
                    want.add((peer, f"expert[{layer}][{slot}]"))
        assert set(got) == want
        assert all(s != k for s, _ in got), "intra-client experts are never fetched"


def test_fedmoe_da_refresh_round_all_present():
    cfg, template, groups = tiny_setup()
    states = random_states(template, seed=1)
    before = copy_states(states)
    strategy, t = FedMoEDA(cfg, groups, template, NUM_TRAIN), InProcessTransport()
    strategy.communicate(Round(1, [0, 1, 2], states, t))

    gate = groups["gate[0]"][0].key
    pool = [0, 1, 2]
    A = ref_matrix(torch.cat([before[k][gate] for k in pool]), cfg.P, cfg.tau)
    want = expected_experts(before, groups, pool, lambda i: A[i], present=pool)
    for k in pool:
        for key, value in want[k].items():
            torch.testing.assert_close(states[k][key].double(), value, rtol=1e-5, atol=1e-5)
        assert torch.equal(states[k][gate], before[k][gate]), "gates stay local"
        for key in keys(groups, "backbone"):                           # backbone: FedAvg by num_train
            avg = sum(n * before[j][key] for n, j in zip(NUM_TRAIN, pool)) / sum(NUM_TRAIN)
            torch.testing.assert_close(states[k][key], avg, rtol=1e-5, atol=1e-6)

    up, down = ledger_rows(t, 1, "server-up"), ledger_rows(t, 1, "server-down")
    assert sorted(up[up["group"] == "gate[0]"]["src"]) == pool
    assert sorted(down[down["group"] == "A[0]"]["dst"]) == pool
    assert not any(g.startswith("expert") for g in list(up["group"]) + list(down["group"])), "experts: p2p only"
    check_p2p_plan(t, 1, pool, A, pool)
    expert_bytes = sum(template[r.key][0].numel() * 4 for r in groups["expert[0][0]"])
    assert set(ledger_rows(t, 1, "p2p")["bytes"]) == {expert_bytes}


def test_fedmoe_da_two_moe_layers_each_with_its_own_A():
    """ViT with two MoE layers: layer l's A is Eq. 8-10 of layer l's gates, and layer l's experts follow
    Eq. 11 with that A; the head and backbone are averaged at the server."""
    cfg, template, groups = tiny_setup(model="vit", moe_layers=2)
    assert {"gate[0]", "gate[1]", "head"} <= set(groups)
    states = random_states(template, seed=11)
    before = copy_states(states)
    strategy, t = FedMoEDA(cfg, groups, template, NUM_TRAIN), InProcessTransport()
    strategy.communicate(Round(1, [0, 1, 2], states, t))
    pool, refs = [0, 1, 2], []
    for layer in (0, 1):
        gate = groups[f"gate[{layer}]"][0].key
        A = ref_matrix(torch.cat([before[k][gate] for k in pool]), cfg.P, cfg.tau)
        refs.append(A)
        close(strategy.A[layer].to_dense(), A)
        want = expected_experts(before, groups, pool, lambda i: A[i], present=pool, layer=layer)
        assert want[0], "the layer has experts"
        for k in pool:
            for key, value in want[k].items():
                torch.testing.assert_close(states[k][key].double(), value, rtol=1e-5, atol=1e-5)
            assert torch.equal(states[k][gate], before[k][gate]), "gates stay local"
        check_p2p_plan(t, 1, pool, A, pool, layer=layer)
    assert not np.allclose(refs[0], refs[1]), "the setup must tell the layers' A apart"
    for key in keys(groups, "backbone") + keys(groups, "head"):
        avg = sum(n * before[j][key] for n, j in zip(NUM_TRAIN, pool)) / sum(NUM_TRAIN)
        for k in pool:
            torch.testing.assert_close(states[k][key], avg, rtol=1e-5, atol=1e-6)
    down = ledger_rows(t, 1, "server-down")
    assert sorted(down[down["group"].str.startswith("A[")]["group"]) == ["A[0]"] * 3 + ["A[1]"] * 3


@pytest.mark.parametrize("model", ["cnn", "mlp", "vit"])
def test_param_groups_hold_every_element_exactly_once(model):
    """Count, element by element (a slot of a stacked expert tensor is one element row), how many
    groups hold it: exactly one for every parameter."""
    cfg = ExperimentConfig(num_experts=3, top_k=2, d_model=8, expert_hidden=6, moe_layers=2, backend="torch",
                           model=model)
    net = models.build(cfg, (1, 8, 8), 10)
    groups = models.param_groups(net)
    layers = 2 if model == "vit" else 1
    want = {"backbone"} | {f"gate[{i}]" for i in range(layers)} | \
           {f"expert[{i}][{e}]" for i in range(layers) for e in range(3)} | ({"head"} if model == "vit" else set())
    assert set(groups) == want
    count = {n: torch.zeros(p.shape, dtype=torch.int64) for n, p in net.named_parameters()}
    for g, group_refs in groups.items():
        name = parse_group(g)
        for r in group_refs:
            assert r.slot == name.slot, (g, r)              # expert[l][e] holds slot e of its tensors only
            if r.slot is None:
                count[r.key] += 1
            else:
                count[r.key][r.slot] += 1
    for n, c in count.items():
        assert torch.all(c == 1), f"{n}: held {sorted(set(c.flatten().tolist()))} times"
    for i in range(layers):
        (gate,) = groups[f"gate[{i}]"]
        assert dict(net.named_parameters())[gate.key].shape == (3, 8), "gate: (E, d)"


def test_fedmoe_da_reuses_A_and_drops_absent_peer():
    """Refresh at round 1 (all three); round 2 is not a refresh (I = 2): client 1 is absent,
    no gate is uploaded, no A is downloaded, rows drop client 1 and renormalise; gates changed in
    between do not matter (A is reused). Round 3 refreshes again."""
    cfg, template, groups = tiny_setup(I=2)
    gate = groups["gate[0]"][0].key
    states = random_states(template, seed=2)
    round1_gates = torch.cat([s[gate] for s in states])
    strategy, t = FedMoEDA(cfg, groups, template, NUM_TRAIN), InProcessTransport()
    strategy.communicate(Round(1, [0, 1, 2], states, t))

    states = random_states(template, seed=3)                           # new experts and gates
    before = copy_states(states)
    strategy.communicate(Round(2, [0, 2], states, t))
    A1 = ref_matrix(round1_gates, cfg.P, cfg.tau)
    want = expected_experts(before, groups, [0, 1, 2], lambda i: A1[i], present=[0, 2])
    for k in (0, 2):
        for key, value in want[k].items():
            torch.testing.assert_close(states[k][key].double(), value, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(states[1][n], before[1][n]) for n in states[1]), "an absent client is untouched"
    r2 = ledger_rows(t, 2)
    assert not (r2["group"] == "gate[0]").any() and not (r2["group"] == "A[0]").any()
    assert set(r2["src"]) | set(r2["dst"]) <= {0, 2, SERVER}
    check_p2p_plan(t, 2, [0, 1, 2], A1, [0, 2])

    strategy.communicate(Round(3, [0, 1, 2], states, t))                      # 1 + I: refresh
    r3 = ledger_rows(t, 3)
    assert sorted(r3[r3["group"] == "gate[0]"]["src"]) == [0, 1, 2]
    assert sorted(r3[r3["group"] == "A[0]"]["dst"]) == [0, 1, 2]


def test_fedmoe_da_refresh_with_stale_gate_of_absent_client():
    """I = 1: at round 2 client 1 is absent; the server still holds its round-1 gate, so it is in the
    pool, and the present clients' rows drop it and renormalise."""
    cfg, template, groups = tiny_setup(I=1)
    gate = groups["gate[0]"][0].key
    states = random_states(template, seed=4)
    strategy, t = FedMoEDA(cfg, groups, template, NUM_TRAIN), InProcessTransport()
    strategy.communicate(Round(1, [0, 1, 2], states, t))
    gate1 = states[1][gate].clone()

    states = random_states(template, seed=5)
    before = copy_states(states)
    strategy.communicate(Round(2, [0, 2], states, t))
    A2 = ref_matrix(torch.cat([before[0][gate], gate1, before[2][gate]]), cfg.P, cfg.tau)
    assert (A2[:E, E:2 * E] > 0).any() or (A2[2 * E:, E:2 * E] > 0).any(), "the setup must use client 1"
    want = expected_experts(before, groups, [0, 1, 2], lambda i: A2[i], present=[0, 2])
    for k in (0, 2):
        for key, value in want[k].items():
            torch.testing.assert_close(states[k][key].double(), value, rtol=1e-5, atol=1e-5)
    r2 = ledger_rows(t, 2)
    assert sorted(r2[r2["group"] == "A[0]"]["dst"]) == [0, 2]
    check_p2p_plan(t, 2, [0, 1, 2], A2, [0, 2])


def test_fedmoe_da_late_joiner_keeps_experts_until_refresh():
    cfg, template, groups = tiny_setup(I=2)
    states = random_states(template, seed=6)
    strategy, t = FedMoEDA(cfg, groups, template, NUM_TRAIN), InProcessTransport()
    strategy.communicate(Round(1, [0, 1], states, t))
    before = copy_states(states)
    strategy.communicate(Round(2, [0, 1, 2], states, t))
    for key in keys(groups, "expert[0]"):
        assert torch.equal(states[2][key], before[2][key])
    r2 = ledger_rows(t, 2)
    assert not (r2["group"] == "A[0]").any()
    assert not ((r2["channel"] == "p2p") & ((r2["src"] == 2) | (r2["dst"] == 2))).any()


def test_fedmoe_da_p_zero_keeps_experts_and_sends_none():
    cfg, template, groups = tiny_setup(P=0)
    states = random_states(template, seed=7)
    before = copy_states(states)
    t = InProcessTransport()
    FedMoEDA(cfg, groups, template, NUM_TRAIN).communicate(Round(1, [0, 1, 2], states, t))
    for k in range(N):
        for key in keys(groups, "expert[0]"):
            torch.testing.assert_close(states[k][key], before[k][key])
    assert ledger_rows(t, 1, "p2p").empty


def test_fedmoe_da_local_backbone_never_leaves():
    cfg, template, groups = tiny_setup(fedmoe_backbone="local")
    states = random_states(template, seed=8)
    before = copy_states(states)
    t = InProcessTransport()
    FedMoEDA(cfg, groups, template, NUM_TRAIN).communicate(Round(1, [0, 1, 2], states, t))
    assert not (ledger_rows(t)["group"] == "backbone").any()
    for k in range(N):
        assert all(torch.equal(states[k][key], before[k][key]) for key in keys(groups, "backbone"))


@pytest.mark.parametrize("participants", [[0, 1, 2], [0, 2]])
def test_fedavg_strategy_matches_loop(participants):
    cfg, template, groups = tiny_setup(strategy="fedavg")
    states = random_states(template, seed=9)
    before = copy_states(states)
    strategy, t = FedAvg(cfg, groups, template, NUM_TRAIN), InProcessTransport()
    strategy.communicate(Round(1, participants, states, t))
    total = sum(NUM_TRAIN[k] for k in participants)
    for name in template:
        avg = sum(NUM_TRAIN[k] * before[k][name] for k in participants) / total
        for k in range(N):
            expected = avg if k in participants else before[k][name]
            torch.testing.assert_close(states[k][name], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(strategy.global_state[name], avg, rtol=1e-5, atol=1e-6)
    model_bytes = sum(v.numel() * 4 for v in template.values())
    up = ledger_rows(t, 1, "server-up")
    assert up.groupby("src")["bytes"].sum().to_dict() == {k: model_bytes for k in participants}
    assert all(re.fullmatch(r"backbone|gate\[0\]|expert\[0\]\[\d\]", g) for g in up["group"])


def test_local_strategy_sends_nothing():
    cfg, template, groups = tiny_setup(strategy="local")
    states = random_states(template, seed=10)
    before = copy_states(states)
    t = InProcessTransport()
    Local(cfg, groups, template, NUM_TRAIN).communicate(Round(1, [0, 1, 2], states, t))
    assert ledger_rows(t).empty
    assert all(torch.equal(s[n], b[n]) for s, b in zip(states, before) for n in s)


def test_fedavg_and_eq11_keep_the_dtype():
    """float64 in, float64 out, computed in float64; float32 stays float32."""
    g = torch.Generator().manual_seed(6)
    xs = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    n = [10, 30, 60]
    out = fedavg(xs, n)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, sum(nk * x for nk, x in zip(n, xs)) / sum(n), rtol=0, atol=1e-14)
    assert fedavg([x.float() for x in xs], n).dtype == torch.float32
    A = torch.softmax(torch.randn(5, 5, generator=g, dtype=torch.float64), 1)
    thetas = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    out = aggregate_experts(A, thetas)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.einsum("ij,jab->iab", A, thetas), rtol=0, atol=1e-14)
    assert aggregate_experts(A, thetas.float()).dtype == torch.float32
