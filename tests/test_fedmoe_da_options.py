"""FedMoE-DA's configurable choices (docs/ARCHITECTURE.md §7) against loop references.

* ``min_correlation``: Eq. 9, then j != i with R_ij <= floor dropped;
* ``centre_by_slot``: each proxy minus the mean of its slot over the pool's clients;
* ``domain_proxies``: R = 1 same domain and slot, 0.5 one of the two, 0 neither;
* ``proxy`` = gate_delta / gate_centred / domain, ``sync="refresh"``, ``gate_init="per_client"``;
* ``matrix_diagnostics``: each number by a loop over rows and entries of a hand-built A.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_aggregation import close, ref_matrix, tiny_model  # the loop references of Eq. 8-10

from fedmoe_da import models
from fedmoe_da.fl import InProcessTransport, sparse_aggregation_matrix
from fedmoe_da.fl.aggregation import correlation
from fedmoe_da.fl.diagnostics import matrix_diagnostics
from fedmoe_da.fl.proxies import centre_by_slot, domain_proxies
from fedmoe_da.fl.registry import FedMoEDA
from fedmoe_da.fl.simulation import initial_states
from fedmoe_da.fl.state import get_state
from fedmoe_da.fl.strategy import Round
from fedmoe_da.fl.transport import SERVER


def aggregation_matrix(proxies, P, tau, min_correlation=None):
    """A as a run computes it (the guard is not in the paper, so not in the dense reference), dense."""
    return sparse_aggregation_matrix(proxies, P, tau, min_correlation).to_dense()

E, N = 4, 3   # as in test_aggregation's tiny_model
NUM_TRAIN = [10, 20, 30]


def tiny_setup(**changes):
    cfg, model = tiny_model(**changes)
    return cfg, model, get_state(model), models.param_groups(model)


def random_states(template, seed: int, n: int = N) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(t.shape, generator=g) for k, t in template.items()} for _ in range(n)]


def copy_states(states):
    return [{n: t.clone() for n, t in s.items()} for s in states]


def expert_keys(groups):
    return sorted({r.key for g, refs in groups.items() if g.startswith("expert") for r in refs})


class Spy:
    """Remembers every payload that crosses a link."""

    def __init__(self):
        self.sent = []

    def __call__(self, src, dst, group, payload):
        self.sent.append((src, dst, group, {n: t.clone() for n, t in payload.items()}))
        return payload


# --------------------------------------------------------------------------- min_correlation
@settings(max_examples=60, deadline=None)
@given(M=st.integers(1, 9), d=st.integers(1, 4), P=st.integers(0, 10), tau=st.floats(0.05, 5.0),
       floor=st.sampled_from([-0.4321, 0.123456, 0.654321]), data=st.data())
def test_min_correlation_matches_loop_reference(M, d, P, tau, floor, data):
    """Floors far from every cosine of small integer vectors (a floor at a cosine: see the rounding test below)."""
    ints = data.draw(arrays(np.int64, (M, d), elements=st.integers(-2, 2)))
    proxies = torch.tensor(ints, dtype=torch.float32)
    close(aggregation_matrix(proxies, P, tau, floor), ref_matrix(proxies, P, tau, floor))


def test_min_correlation_stops_orthogonal_proxies_from_pulling_in_the_whole_pool():
    """Orthogonal proxies: every off-diagonal R is 0, a tie at the threshold shared by the whole pool."""
    proxies = torch.eye(6)
    plain = aggregation_matrix(proxies, P=2, tau=0.5)
    assert torch.all(plain > 0), "Eq. 9 as published: every row is the whole pool"
    assert torch.equal(aggregation_matrix(proxies, P=2, tau=0.5, min_correlation=0.0), torch.eye(6))
    # two correlated pairs among orthogonal ones: each keeps itself and its partner only
    pairs = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0.1, 0.9]])
    A = aggregation_matrix(pairs, P=3, tau=0.5, min_correlation=0.2)
    close(A, ref_matrix(pairs, 3, 0.5, 0.2))
    assert [sorted(np.flatnonzero(r.numpy() > 0).tolist()) for r in A] == [[0, 1], [0, 1], [2], [3, 4], [3, 4]]


def test_min_correlation_drops_orthogonal_pairs_despite_rounding():
    """[0, 1, -1] is orthogonal to [-1, -1, -1]; with min_correlation = 0 row 0 keeps only itself.
    The batched float64 matmul in ``correlation`` gives R_01 = 1.8e-17 here (not 0), which passes ``R > 0``."""
    proxies = torch.tensor([[0, 1, -1], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]], dtype=torch.float32)
    if float(correlation(proxies)[0, 1]) <= 0:
        pytest.skip("this BLAS computes the orthogonal cosine without positive rounding noise")
    A = aggregation_matrix(proxies, P=1, tau=1.0, min_correlation=0.0)
    close(A, ref_matrix(proxies, 1, 1.0, 0.0))                      # row 0: [1, 0, 0, 0]


def test_strategy_passes_min_correlation():
    cfg, _, template, groups = tiny_setup(min_correlation=0.1, P=6)
    states = random_states(template, seed=1)
    gate = groups["gate[0]"][0].key
    proxies = torch.cat([s[gate] for s in states])
    strategy = FedMoEDA(cfg, groups, template, NUM_TRAIN)
    strategy.communicate(Round(1, [0, 1, 2], states, InProcessTransport()))
    close(strategy.A[0].to_dense(), ref_matrix(proxies, 6, cfg.tau, 0.1))
    assert not np.allclose(ref_matrix(proxies, 6, cfg.tau, 0.1), ref_matrix(proxies, 6, cfg.tau)), "the floor bites"


# --------------------------------------------------------------------------- proxies
def test_centre_by_slot_matches_loop():
    g = torch.Generator().manual_seed(0)
    n_clients, d = 5, 3
    proxies = torch.randn(n_clients * E, d, generator=g)
    out = centre_by_slot(proxies, E)
    for i in range(n_clients * E):
        slot = i % E
        mean = sum(proxies[k * E + slot].double() for k in range(n_clients)) / n_clients
        torch.testing.assert_close(out[i].double(), proxies[i].double() - mean, atol=1e-6, rtol=1e-5)
    shared = torch.randn(E, d, generator=g).repeat(n_clients, 1)       # what every client shares vanishes
    assert torch.allclose(centre_by_slot(shared, E), torch.zeros_like(shared), atol=1e-6)


def test_domain_proxies_correlations():
    home = [0, 2, 0, 1]
    R = correlation(domain_proxies(home, E, num_domains=3))
    for i in range(len(home) * E):
        for j in range(len(home) * E):
            same_domain, same_slot = home[i // E] == home[j // E], i % E == j % E
            want = 1.0 if same_domain and same_slot else 0.5 if same_domain or same_slot else 0.0
            assert R[i, j].item() == pytest.approx(want, abs=1e-9), (i, j)


def test_gate_delta_uploads_each_clients_change_since_its_own_initial_gate():
    cfg, model, template, groups = tiny_setup(proxy="gate_delta", gate_init="per_client")
    gate = groups["gate[0]"][0].key
    initial = initial_states(model, cfg, N)
    strategy = FedMoEDA(cfg, groups, template, NUM_TRAIN)
    strategy.start(initial)
    states = random_states(template, seed=2)
    spy = Spy()
    strategy.communicate(Round(1, [0, 1, 2], states, InProcessTransport(tamper=spy)))
    ups = {src: p for src, dst, g, p in spy.sent if g == "gate[0]" and dst == SERVER}
    assert sorted(ups) == [0, 1, 2]
    deltas = []
    for k in range(N):
        (sent,) = ups[k].values()
        assert torch.equal(sent, states[k][gate] - initial[k][gate])
        assert not torch.allclose(sent, states[k][gate] - template[gate]), "its own init, not the template's"
        deltas.append(sent)
    close(strategy.A[0].to_dense(), ref_matrix(torch.cat(deltas), cfg.P, cfg.tau))


def test_gate_centred_proxy():
    cfg, _, template, groups = tiny_setup(proxy="gate_centred")
    gate = groups["gate[0]"][0].key
    states = random_states(template, seed=3)
    strategy = FedMoEDA(cfg, groups, template, NUM_TRAIN)
    strategy.communicate(Round(1, [0, 1, 2], states, InProcessTransport()))
    centred = []
    for k in range(N):
        for e in range(E):
            mean = sum(states[j][gate][e].double() for j in range(N)) / N
            centred.append(states[k][gate][e].double() - mean)
    close(strategy.A[0].to_dense(), ref_matrix(torch.stack(centred), cfg.P, cfg.tau))


@pytest.mark.parametrize("P", [1, 2])
def test_domain_proxy_selects_same_domain_same_slot(P):
    """Domain 0 has clients 0, 2, 4, domain 1 has 1, 3: with P <= (clients of the domain) - 1 a row
    selects exactly the same slot of its own domain's clients, with equal weights."""
    home = [0, 1, 0, 1, 0]
    cfg, _, template, groups = tiny_setup(proxy="domain", P=P)
    states = random_states(template, seed=4, n=5)
    strategy = FedMoEDA(cfg, groups, template, [10] * 5, home_domains=home)
    strategy.communicate(Round(1, list(range(5)), states, InProcessTransport()))
    A = strategy.A[0].to_dense().numpy()
    for i in range(5 * E):
        k, e = divmod(i, E)
        same = [j for j in range(5 * E) if home[j // E] == home[k] and j % E == e]
        if P <= home.count(home[k]) - 1:
            assert np.flatnonzero(A[i] > 0).tolist() == same, (P, i)
            close(A[i][same], np.full(len(same), 1 / len(same)))
        else:                                   # P too large for domain 1: ties at R = 0.5 come in
            assert set(same) < set(np.flatnonzero(A[i] > 0).tolist())


# --------------------------------------------------------------------------- sync and gate_init
@pytest.mark.parametrize("sync", ["every_round", "refresh"])
def test_sync_refresh_moves_experts_only_at_refresh_rounds(sync):
    cfg, _, template, groups = tiny_setup(sync=sync, I=2)
    strategy, t = FedMoEDA(cfg, groups, template, NUM_TRAIN), InProcessTransport()
    keys = expert_keys(groups)
    for rnd in (1, 2, 3):                       # refreshes: 1 and 3
        states = random_states(template, seed=10 + rnd)
        before = copy_states(states)
        strategy.communicate(Round(rnd, [0, 1, 2], states, t))
        ledger = t.ledger.to_frame()
        p2p = ledger[(ledger["round"] == rnd) & (ledger["channel"] == "p2p")]
        moved = any(not torch.equal(states[k][n], before[k][n]) for k in range(N) for n in keys)
        syncs = sync == "every_round" or rnd != 2
        assert moved == syncs and (not p2p.empty) == syncs, (sync, rnd)
        bb = groups["backbone"][0].key                                  # the backbone is averaged regardless
        assert not torch.equal(states[0][bb], before[0][bb])


@pytest.mark.parametrize("model", ["cnn", "vit"])
def test_gate_init_per_client(model):
    cfg, net, template, groups = tiny_setup(model=model, moe_layers=2)
    gates = {groups[g][0].key for g in groups if g.startswith("gate")}
    assert len(gates) == (2 if model == "vit" else 1)
    shared = initial_states(net, cfg, N)
    assert all(torch.equal(s[n], template[n]) for s in shared for n in template)
    per = initial_states(net, cfg.replace(gate_init="per_client"), N)
    for n in template:
        if n in gates:
            for a in range(N):
                bound = 1 / math.sqrt(template[n].shape[1])
                assert per[a][n].abs().max() <= bound and per[a][n].shape == template[n].shape
                for b in range(a):
                    assert not torch.allclose(per[a][n], per[b][n])
        else:
            assert all(torch.equal(s[n], template[n]) for s in per)
    again = initial_states(net, cfg.replace(gate_init="per_client"), N)
    assert all(torch.equal(a[n], b[n]) for a, b in zip(per, again) for n in template), "seeded"


# --------------------------------------------------------------------------- matrix_diagnostics
def ref_diagnostics(A: np.ndarray, pool: list[int], E: int, home: list[int] | None) -> dict:
    """Each number by loops over rows i and entries j (pool ordered client-major)."""
    M = len(pool) * E
    client = [pool[i // E] for i in range(M)]
    slot = [i % E for i in range(M)]
    same_slot, intra, purity, chance = [], [], [], []
    for i in range(M):
        off = sum(A[i, j] for j in range(M) if j != i)
        if off > 0:
            same_slot.append(sum(A[i, j] for j in range(M) if client[j] != client[i] and slot[j] == slot[i]) / off)
            intra.append(sum(A[i, j] for j in range(M) if j != i and client[j] == client[i]) / off)
        if home is not None and len(pool) > 1:
            others = [j for j in range(M) if client[j] != client[i]]
            inter = sum(A[i, j] for j in others)
            if inter > 0:                       # both over the rows that have inter-client weight
                purity.append(sum(A[i, j] for j in others if home[client[j]] == home[client[i]]) / inter)
                chance.append(sum(1 for j in others if home[client[j]] == home[client[i]]) / len(others))
    mean = lambda v: float(np.mean(v)) if v else math.nan                      # noqa: E731
    return {"self_weight": float(np.mean([A[i, i] for i in range(M)])), "same_slot_share": mean(same_slot),
            "intra_client_share": mean(intra), "nnz_per_row": float(np.mean([(A[i] > 0).sum() for i in range(M)])),
            "domain_purity": mean(purity), "purity_chance": mean(chance)}


def check_diagnostics(A, pool, E, home):
    got = matrix_diagnostics(torch.tensor(A, dtype=torch.float32), pool, E, home)
    want = ref_diagnostics(np.asarray(A, dtype=np.float64), pool, E, home)
    assert set(got) == set(want)
    for name in want:
        if math.isnan(want[name]):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(want[name], abs=1e-6), name
    return got


def test_diagnostics_pure_pool():
    """Pool [0, 1, 2, 3], homes 0 0 1 1, E = 2: each row 0.5 itself, 0.3 the same slot of its same-home
    peer, 0.2 its client's other slot. Purity 1, chance 1/3."""
    pool, home, E2 = [0, 1, 2, 3], [0, 0, 1, 1], 2
    partner = {0: 1, 1: 0, 2: 3, 3: 2}
    A = np.zeros((8, 8))
    for i in range(8):
        k, e = divmod(i, E2)
        A[i, i], A[i, partner[k] * E2 + e], A[i, k * E2 + 1 - e] = 0.5, 0.3, 0.2
    got = check_diagnostics(A, pool, E2, home)
    assert got["domain_purity"] == pytest.approx(1.0)
    assert got["purity_chance"] == pytest.approx(1 / 3)
    assert (got["self_weight"], got["nnz_per_row"]) == (pytest.approx(0.5), pytest.approx(3.0))
    assert (got["same_slot_share"], got["intra_client_share"]) == (pytest.approx(0.6), pytest.approx(0.4))


def test_diagnostics_domain_blind_pool_is_at_chance():
    """Uniform rows spread the inter-client weight evenly over the other clients: purity = chance.
    Pool ids are not 0..N-1 and home_domains is indexed by client id."""
    pool, E2 = [1, 3, 4, 6], 3
    home = [9, 0, 9, 0, 1, 0, 1]                                        # clients 1, 3, 5 home 0; 4, 6 home 1
    A = np.full((12, 12), 1 / 12)
    got = check_diagnostics(A, pool, E2, home)
    assert got["domain_purity"] == pytest.approx(got["purity_chance"]) == pytest.approx(1 / 3)
    assert got["nnz_per_row"] == 12


@pytest.mark.parametrize("seed", range(5))
def test_diagnostics_match_loop_on_random_sparse_rows(seed):
    rng = np.random.default_rng(seed)
    pool, E3 = [0, 2, 5], 3
    home = [0, 1, 0, 1, 0, 1]
    M = len(pool) * E3
    A = rng.random((M, M)) * (rng.random((M, M)) < 0.4)
    np.fill_diagonal(A, rng.random(M) + 0.1)
    for i in range(M):                          # every row has some inter-client weight (see the chance test below)
        A[i, (i + E3) % M] += 0.05
    A /= A.sum(1, keepdims=True)
    check_diagnostics(A, pool, E3, home)
    nan = matrix_diagnostics(torch.tensor(A, dtype=torch.float32), pool, E3, None)
    assert math.isnan(nan["domain_purity"]) and math.isnan(nan["purity_chance"])
    one = matrix_diagnostics(torch.eye(E3), [2], E3, home)
    assert math.isnan(one["domain_purity"]) and one["self_weight"] == 1.0


# Rows of clients 0 and 1 (home 0) spread their inter-client weight evenly over the other clients;
# client 2's row (home 1) keeps everything: a domain-blind A on every row that has inter-client weight.
BLIND_WHERE_ANY = np.array([[0.4, 0.3, 0.3], [0.3, 0.4, 0.3], [0.0, 0.0, 1.0]])


def test_diagnostics_purity_leaves_out_rows_without_inter_client_weight():
    got = matrix_diagnostics(torch.tensor(BLIND_WHERE_ANY, dtype=torch.float32), [0, 1, 2], 1, [0, 0, 1])
    assert got["domain_purity"] == pytest.approx(0.5), "rows 0 and 1 only (row 2 would pull it to 1/3)"
    assert got["same_slot_share"] == pytest.approx(1.0) and got["self_weight"] == pytest.approx(0.6)


def test_diagnostics_chance_is_over_the_rows_purity_is_over():
    got = matrix_diagnostics(torch.tensor(BLIND_WHERE_ANY, dtype=torch.float32), [0, 1, 2], 1, [0, 0, 1])
    # 0.5 (both over the rows with inter-client weight)
    assert got["purity_chance"] == pytest.approx(got["domain_purity"])
    check_diagnostics(BLIND_WHERE_ANY, [0, 1, 2], 1, [0, 0, 1])
