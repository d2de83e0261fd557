"""Peers that lie and clients that drop, each against a simple reference.

* the screens (``robust.expert_screen``, ``robust.upload_outliers``) on hand-built tensors;
* the robust aggregates against numpy / loops over coordinates;
* a liar sending N(0, 1e3) experts (tamper hook) is rejected by the P2P screen, and Eq. 11 then equals
  the loop reference with the liar dropped like an absent peer;
* a liar's noise backbone is rejected by the upload screen, and FedAvg averages the others;
* dropout: the ledger and rejections show who dropped, FedAvg averages who answered, FedMoE-DA's
  rows renormalise over the peers that answered, a dropped client gets the aggregate next time;
* honest smoke runs with the screens on reject nothing and are bit-identical to runs without them.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fedmoe_da import models, simulate
from fedmoe_da.config import ExperimentConfig
from fedmoe_da.fl import InProcessTransport
from fedmoe_da.fl.aggregation import aggregation_matrix
from fedmoe_da.fl.registry import FedAvg, FedMoEDA
from fedmoe_da.fl.robust import expert_screen, upload_outliers
from fedmoe_da.fl.server_aggregation import coordinate_median, server_aggregate, trimmed_mean
from fedmoe_da.fl.state import get_state
from fedmoe_da.fl.strategy import Round
from fedmoe_da.fl.transport import SERVER

E, N = 4, 5
NUM_TRAIN = [10, 20, 30, 40, 50]
LIAR = 0


def smoke(**changes) -> ExperimentConfig:
    return ExperimentConfig(progress=False, backend="torch", seed=0).smoke().replace(**changes)


def setup(**changes):
    cfg = ExperimentConfig(num_experts=E, top_k=2, d_model=8, expert_hidden=6, P=3, tau=0.5, I=2,
                           backend="torch", model="cnn", num_clients=N).replace(**changes)
    torch.manual_seed(0)
    model = models.build(cfg, (1, 8, 8), 10)
    return cfg, get_state(model), models.param_groups(model)


def honest_states(template, seed: int, spread: float = 0.05) -> list[dict]:
    """Clients after one round of honest training: one common model plus a small client-specific change."""
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(t.shape, generator=g) for n, t in template.items()}
    return [{n: t + spread * torch.randn(t.shape, generator=g) for n, t in base.items()} for _ in range(N)]


def copy_states(states):
    return [{n: t.clone() for n, t in s.items()} for s in states]


def keys(groups, prefix):
    return sorted({r.key for g, refs in groups.items() if g.startswith(prefix) for r in refs})


def noise_from(liars, kind: str, scale: float = 1e3):
    """A tamper hook: every ``kind`` payload (``expert`` or ``backbone``) a liar sends becomes N(0, scale^2) noise."""
    g = torch.Generator().manual_seed(123)

    def tamper(src, dst, group, payload):
        if src in liars and group.startswith(kind):
            return {n: scale * torch.randn(t.shape, generator=g) for n, t in payload.items()}
        return payload
    return tamper


def eq11_reference(before, groups, pool, A, k, usable, layer=0):
    """Client k's experts after Eq. 11 by a loop over the pool, peers not in ``usable`` dropped and the row
    renormalised (its own expert always counts)."""
    out = {}
    for key in keys(groups, f"expert[{layer}]"):
        rows = []
        for e in range(E):
            w = A[pool.index(k) * E + e]
            acc, total = 0.0, 0.0
            for j, wj in enumerate(w):
                peer, slot = pool[j // E], j % E
                if wj == 0 or (peer != k and peer not in usable):
                    continue
                acc = acc + float(wj) * before[peer][key][slot].double()
                total += float(wj)
            rows.append(acc / total)
        out[key] = torch.stack(rows)
    return out


# --------------------------------------------------------------------------- the screens, by hand
def test_expert_screen_by_hand():
    own = {"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}                  # ||own|| = 5
    at_bound = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([12.0])}             # ||recv - own|| = 10
    assert expert_screen(at_bound, own, c=2.0) is None, "the bound itself passes (strict >)"
    assert expert_screen(at_bound, own, c=1.999) is not None
    over = {"w": torch.tensor([3.0, 6.01]), "b": torch.tensor([12.0])}
    reason = expert_screen(over, own, c=2.0)
    assert reason.startswith("p2p screen") and "> 2 x" in reason
    assert expert_screen({"w": 100 * own["w"], "b": 100 * own["b"]}, own, c=2.0) is not None, "x100 is rejected"
    zero = {"w": torch.zeros(2), "b": torch.zeros(1)}
    assert expert_screen(zero, zero, c=1.0) is None
    assert expert_screen({"w": torch.tensor([1e-6, 0.0]), "b": torch.zeros(1)}, zero, c=1.0) is not None, "eps floor"


def test_upload_outliers_by_hand():
    ups = {0: {"x": torch.tensor([2.0, 2.0])}, 1: {"x": torch.tensor([2.0, 3.0])},
           2: {"x": torch.tensor([3.0, 2.0])}, 3: {"x": torch.tensor([40.0, -40.0])}}
    # coordinate-wise median: [(2 + 3) / 2, (2 + 2) / 2] = [2.5, 2.0], norm sqrt(10.25) = 3.2016
    # distances: 0.5590, 1.1180, 0.5590, sqrt(37.5^2 + 42^2) = 56.305 -> ratios 0.175, 0.349, 0.175, 17.587
    assert upload_outliers(ups, c=2.0).keys() == {3}
    assert upload_outliers(ups, c=2.0)[3].startswith("upload screen")
    assert upload_outliers(ups, c=17.58).keys() == {3} and upload_outliers(ups, c=17.59) == {}
    assert upload_outliers(ups, c=0.3).keys() == {1, 3}
    assert upload_outliers({k: ups[k] for k in (0, 3)}, c=0.01) == {}, "fewer than 3 uploads: none rejected"
    # two tensors per payload, one norm over both: median 1 everywhere, norm sqrt(3); client 3 is 8 sqrt(3) away
    two = {k: {"a": torch.tensor([v]), "b": torch.tensor([v, v])} for k, v in enumerate([1.0, 1.0, 1.0, 9.0])}
    assert upload_outliers(two, c=7.99).keys() == {3} and upload_outliers(two, c=8.01) == {}


# --------------------------------------------------------------------------- robust aggregates, by loops
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_coordinate_median_and_trimmed_mean_match_loops(n):
    g = torch.Generator().manual_seed(n)
    tensors = [torch.randn(3, 4, generator=g) for _ in range(n)]
    tensors[0][0, 0] = 1e6                                                      # one huge value
    np.testing.assert_allclose(coordinate_median(tensors).numpy(), np.median(np.stack(tensors), axis=0), rtol=1e-6)
    for fraction in (0.0, 0.1, 0.25, 0.49):
        cut = math.floor(fraction * n)
        want = np.zeros((3, 4))
        for i in range(3):
            for j in range(4):
                values = sorted(float(t[i, j]) for t in tensors)
                kept = values[cut:n - cut]
                want[i, j] = sum(kept) / len(kept)
        np.testing.assert_allclose(trimmed_mean(tensors, fraction).numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        trimmed_mean(tensors, 0.5)


def test_server_aggregate_mean_is_fedavg():
    tensors = [torch.full((2,), float(v)) for v in (1, 2, 6)]
    torch.testing.assert_close(server_aggregate("mean", tensors, [1, 1, 2], 0.1), torch.full((2,), 3.75))
    torch.testing.assert_close(server_aggregate("median", tensors, [1, 1, 2], 0.1), torch.full((2,), 2.0))
    torch.testing.assert_close(server_aggregate("trimmed_mean", tensors, [1, 1, 2], 0.34), torch.full((2,), 2.0))
    with pytest.raises(ValueError):
        server_aggregate("mode", tensors, [1, 1, 2], 0.1)


@pytest.mark.parametrize("kind", ["median", "trimmed_mean"])
def test_fedavg_with_a_robust_aggregate(kind):
    cfg, template, groups = setup(strategy="fedavg", server_aggregate=kind, trim_fraction=0.2)
    states = honest_states(template, seed=1)
    states[LIAR] = {n: 1e3 * t for n, t in states[LIAR].items()}
    before = copy_states(states)
    strategy = FedAvg(cfg, groups, template, NUM_TRAIN)
    strategy.communicate(Round(1, list(range(N)), states, InProcessTransport()))
    for name in template:
        stacked = np.stack([b[name].numpy() for b in before])
        want = np.median(stacked, axis=0) if kind == "median" else np.sort(stacked, axis=0)[1:N - 1].mean(axis=0)
        np.testing.assert_allclose(strategy.global_state[name].numpy(), want, rtol=1e-5, atol=1e-6)
        assert float(strategy.global_state[name].abs().max()) < 100, "the liar's x1000 is out"


# --------------------------------------------------------------------------- a liar's experts, P2P
def test_p2p_screen_drops_a_liars_noise_experts_like_an_absent_peer():
    cfg, template, groups = setup(p2p_screen=2.0)
    states = honest_states(template, seed=2)
    before = copy_states(states)
    t = InProcessTransport(tamper=noise_from({LIAR}, "expert"))
    strategy = FedMoEDA(cfg, groups, template, NUM_TRAIN)
    strategy.communicate(Round(1, list(range(N)), states, t))

    gate = groups["gate[0]"][0].key
    pool = list(range(N))
    A = aggregation_matrix(torch.cat([before[k][gate] for k in pool]), cfg.P, cfg.tau).numpy()
    ledger, rej = t.ledger.to_frame(), t.ledger.rejections()
    from_liar = ledger[(ledger["channel"] == "p2p") & (ledger["src"] == LIAR)]
    assert len(from_liar) > 0, "the setup must have someone fetch from the liar"
    assert not from_liar["accepted"].any()
    assert ledger[ledger["src"] != LIAR]["accepted"].all(), "honest payloads all pass"
    assert list(zip(rej["round"], rej["src"], rej["dst"], rej["channel"], rej["group"])) == \
        list(zip(from_liar["round"], from_liar["src"], from_liar["dst"], from_liar["channel"], from_liar["group"]))
    assert rej["reason"].str.startswith("p2p screen").all()
    for k in pool:
        usable = set(pool) - {LIAR} if k != LIAR else set(pool)
        for key, value in eq11_reference(before, groups, pool, A, k, usable).items():
            torch.testing.assert_close(states[k][key].double(), value, rtol=1e-5, atol=1e-5)


def test_without_the_screen_the_liars_experts_get_in():
    cfg, template, groups = setup()
    states = honest_states(template, seed=2)
    t = InProcessTransport(tamper=noise_from({LIAR}, "expert"))
    FedMoEDA(cfg, groups, template, NUM_TRAIN).communicate(Round(1, list(range(N)), states, t))
    assert t.ledger.rejections().empty
    assert max(float(states[k][key].abs().max()) for k in range(1, N) for key in keys(groups, "expert")) > 10


def test_p2p_screen_in_a_simulation_records_every_rejection():
    result = simulate(smoke(strategy="fedmoe_da", p2p_screen=2.0, rounds=3),
                      InProcessTransport(tamper=noise_from({1}, "expert")))
    ledger, rej = result.ledger, result.rejections
    bad = ledger[~ledger["accepted"]]
    assert len(bad) > 0 and set(bad["src"]) == {1} and set(bad["channel"]) == {"p2p"}
    assert list(zip(bad["round"], bad["src"], bad["dst"], bad["group"])) == \
        list(zip(rej["round"], rej["src"], rej["dst"], rej["group"]))
    assert result.summary["rejected_transfers"] == len(bad)
    assert result.history["personalised_accuracy"].map(math.isfinite).all()


# --------------------------------------------------------------------------- a liar's backbone, upload
def test_upload_screen_rejects_a_liars_noise_backbone():
    cfg, template, groups = setup(strategy="fedavg", upload_screen=2.0)
    states = honest_states(template, seed=3)
    before = copy_states(states)
    t = InProcessTransport(tamper=noise_from({LIAR}, "backbone"))
    strategy = FedAvg(cfg, groups, template, NUM_TRAIN)
    strategy.communicate(Round(1, list(range(N)), states, t))
    ledger, rej = t.ledger.to_frame(), t.ledger.rejections()
    assert list(zip(rej["src"], rej["dst"], rej["channel"], rej["group"])) == [(LIAR, SERVER, "server-up", "backbone")]
    assert rej["reason"].iloc[0].startswith("upload screen")
    bad = ledger[~ledger["accepted"]]
    assert list(zip(bad["src"], bad["group"])) == [(LIAR, "backbone")]
    honest = [k for k in range(N) if k != LIAR]
    for key in template:
        who = honest if key in keys(groups, "backbone") else list(range(N))       # the liar's other groups count
        avg = sum(NUM_TRAIN[k] * before[k][key] for k in who) / sum(NUM_TRAIN[k] for k in who)
        torch.testing.assert_close(strategy.global_state[key], avg, rtol=1e-5, atol=1e-6)


def test_upload_screen_in_a_simulation():
    result = simulate(smoke(strategy="fedavg", upload_screen=2.0, rounds=3),
                      InProcessTransport(tamper=noise_from({2}, "backbone")))
    rej = result.rejections
    assert list(zip(rej["round"], rej["src"], rej["group"])) == [(r, 2, "backbone") for r in (1, 2, 3)]
    assert result.history["global_accuracy"].map(math.isfinite).all()


# --------------------------------------------------------------------------- honest runs
@pytest.mark.parametrize("strategy", ["fedavg", "fedmoe_da"])
def test_honest_runs_with_the_screens_on_reject_nothing_and_change_nothing(strategy):
    plain = simulate(smoke(strategy=strategy, rounds=3))
    screened = simulate(smoke(strategy=strategy, rounds=3, p2p_screen=2.0, upload_screen=2.0))
    assert screened.rejections.empty and screened.ledger["accepted"].all()
    pd.testing.assert_frame_equal(plain.history, screened.history)
    pd.testing.assert_frame_equal(plain.ledger, screened.ledger)


# --------------------------------------------------------------------------- dropout
def dropped(transport, rnd=None) -> set[int]:
    rej = transport.ledger.rejections()
    rej = rej[rej["channel"] == "dropout"]
    return set(rej["src"] if rnd is None else rej[rej["round"] == rnd]["src"])


def seed_with_some_dropping(strategy_cls, cfg, groups, template, rnd, p=0.5) -> ExperimentConfig:
    """A config seed for which some but not all of the N clients drop in round ``rnd``."""
    for seed in range(100):
        c = cfg.replace(dropout=p, seed=seed)
        t = InProcessTransport()
        answered = strategy_cls(c, groups, template, NUM_TRAIN).answering(Round(rnd, list(range(N)), [], t))
        if 0 < len(answered) < N:
            assert set(answered) | dropped(t) == set(range(N)) and not set(answered) & dropped(t)
            return c
    raise AssertionError("no seed drops some but not all")


def test_fedavg_averages_only_who_answered_and_the_dropped_catch_up():
    cfg, template, groups = setup(strategy="fedavg")
    cfg = seed_with_some_dropping(FedAvg, cfg, groups, template, rnd=1)
    states = honest_states(template, seed=4)
    before = copy_states(states)
    strategy, t = FedAvg(cfg, groups, template, NUM_TRAIN), InProcessTransport()
    strategy.communicate(Round(1, list(range(N)), states, t))
    gone = dropped(t, 1)
    answered = [k for k in range(N) if k not in gone]
    for key in template:
        avg = sum(NUM_TRAIN[k] * before[k][key] for k in answered) / sum(NUM_TRAIN[k] for k in answered)
        torch.testing.assert_close(strategy.global_state[key], avg, rtol=1e-5, atol=1e-6)
        for k in gone:
            assert torch.equal(states[k][key], before[k][key]), "a dropped client keeps its own trained state"
    ledger = t.ledger.to_frame()
    assert not (ledger["src"].isin(gone) | ledger["dst"].isin(gone)).any(), "no byte to or from who dropped"
    rej = t.ledger.rejections()
    assert (rej["channel"] == "dropout").all() and list(rej["src"]) == list(rej["dst"]) == sorted(gone)
    assert rej["reason"].str.startswith("dropped").all()
    catch_up = InProcessTransport()
    strategy.begin_round(Round(2, sorted(gone), states, catch_up))
    down = catch_up.ledger.to_frame()
    assert set(down["dst"]) == gone and set(down["channel"]) == {"server-down"}
    for k in gone:
        for key in template:
            torch.testing.assert_close(states[k][key], strategy.global_state[key])


def test_fedmoe_da_rows_renormalise_over_the_peers_that_answered():
    """Round 1 (refresh) everyone answers; round 2 reuses A (I = 2) and some drop after training: the
    answering clients' rows drop them and renormalise, the dropped ones keep their trained experts."""
    cfg, template, groups = setup(I=2)
    cfg2 = seed_with_some_dropping(FedMoEDA, cfg, groups, template, rnd=2)
    strategy, t = FedMoEDA(cfg, groups, template, NUM_TRAIN), InProcessTransport()
    states = honest_states(template, seed=5, spread=1.0)
    gate = groups["gate[0]"][0].key
    pool = list(range(N))
    A = aggregation_matrix(torch.cat([s[gate] for s in states]), cfg.P, cfg.tau).numpy()
    strategy.communicate(Round(1, pool, states, t))

    strategy.config = cfg2                                                     # dropout from round 2 on
    states = honest_states(template, seed=6, spread=1.0)
    before = copy_states(states)
    strategy.communicate(Round(2, pool, states, t))
    gone = dropped(t, 2)
    answered = set(pool) - gone
    assert any(A[pool.index(k) * E:(pool.index(k) + 1) * E, g * E:(g + 1) * E].any() for k in answered for g in gone), \
        "the setup must have an answering client use a dropped one"
    for k in pool:
        want = eq11_reference(before, groups, pool, A, k, answered) if k in answered else \
            {key: before[k][key] for key in keys(groups, "expert[0]")}
        for key, value in want.items():
            torch.testing.assert_close(states[k][key].double(), value.double(), rtol=1e-5, atol=1e-5)
    r2 = t.ledger.to_frame()
    r2 = r2[r2["round"] == 2]
    assert not (r2["src"].isin(gone) | r2["dst"].isin(gone)).any()


def test_dropout_in_a_simulation_is_seeded_and_shows_in_the_ledger():
    cfg = smoke(strategy="fedmoe_da", dropout=0.4, rounds=4, I=2)
    a, b = simulate(cfg), simulate(cfg)
    pd.testing.assert_frame_equal(a.rejections, b.rejections)
    pd.testing.assert_frame_equal(a.history, b.history)
    rej = a.rejections
    assert len(rej) > 0 and (rej["channel"] == "dropout").all()
    for rnd, part in rej.groupby("round"):
        gone = set(part["src"])
        sent = a.ledger[a.ledger["round"] == rnd].reset_index(drop=True)
        first_up = int((sent["channel"] == "server-up").idxmax())              # begin_round's catch-up comes before
        assert set(sent.iloc[:first_up]["channel"]) <= {"server-down"}
        after = sent.iloc[first_up:]
        assert not (after["src"].isin(gone) | after["dst"].isin(gone)).any(), rnd
    assert a.history["personalised_accuracy"].map(math.isfinite).all()
    nobody = simulate(smoke(strategy="fedavg", dropout=1.0))
    assert nobody.ledger.empty and len(nobody.rejections) == nobody.config.rounds * nobody.config.num_clients
    other_seed = simulate(cfg.replace(seed=1)).rejections
    assert not other_seed[["round", "src"]].equals(rej[["round", "src"]])
