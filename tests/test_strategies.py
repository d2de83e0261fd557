"""The baselines (FedProx, Ditto, FedPer, FedRep), partial participation, diverged clients and the run folder.

Oracles, each obviously correct on its own:

* the proximal term (mu / 2) ||w - c||^2 has gradient mu (w - c): one plain SGD
  step (no momentum) with the term minus one without it is -lr mu (w - c);
* FedAvg of a group is a loop over the participants weighted by training-set size;
* a strategy's server groups follow the table of docs/ARCHITECTURE.md §2, written out here;
* which participants missed the latest aggregate is a loop over the rounds;
* the run folder's tables are re-derived from the data and the returned objects.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fedmoe_da import data as data_mod
from fedmoe_da import load_run, models
from fedmoe_da.config import ExperimentConfig
from fedmoe_da.fl import InProcessTransport, simulate
from fedmoe_da.fl import simulation as sim
from fedmoe_da.fl.client import Trainer
from fedmoe_da.fl.registry import Ditto, FedPer, FedProx, FedRep, make_strategy
from fedmoe_da.fl.run_folder import RunFolder
from fedmoe_da.fl.state import get_state
from fedmoe_da.fl.strategy import Round
from fedmoe_da.fl.transport import SERVER

E, N = 4, 3
NUM_TRAIN = [10, 20, 30]
SERVER_STRATEGIES = ["fedavg", "fedprox", "fedper", "fedrep", "ditto", "fedmoe_da"]
# docs/ARCHITECTURE.md §2: the group kinds each strategy aggregates at the server (fedmoe_da: fedmoe_backbone="server")
SERVER_KINDS = {"fedavg": {"backbone", "head", "gate", "expert"}, "fedprox": {"backbone", "head", "gate", "expert"},
                "ditto": {"backbone", "head", "gate", "expert"}, "fedper": {"backbone"}, "fedrep": {"backbone"},
                "fedmoe_da": {"backbone", "head"}}


def smoke(**changes) -> ExperimentConfig:
    return ExperimentConfig(progress=False, backend="torch", seed=0).smoke().replace(**changes)


def tiny(**changes):
    """A tiny model trained by one plain SGD step per epoch (batch >= every client's data)."""
    cfg = ExperimentConfig(num_experts=E, top_k=2, d_model=8, expert_hidden=6, P=3, tau=0.5, I=2, backend="torch",
                           model="cnn", optimizer="sgd", momentum=0.0, lr=0.1, local_epochs=1, batch_size=64,
                           progress=False).replace(**changes)
    torch.manual_seed(0)
    model = models.build(cfg, (1, 8, 8), 10)
    return cfg, model, get_state(model), models.param_groups(model)


def kind(group: str) -> str:
    return group.split("[")[0]


def group_keys(groups, kinds) -> set[str]:
    return {r.key for g, refs in groups.items() if kind(g) in kinds for r in refs}


def perturbed(template, seed: int, scale: float = 0.1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {n: t + scale * torch.randn(t.shape, generator=g) for n, t in template.items()}


def random_states(template, seed: int, n: int = N) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(t.shape, generator=g) for k, t in template.items()} for _ in range(n)]


def copy_state(s: dict) -> dict:
    return {n: t.clone() for n, t in s.items()}


def client_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def loop_fedavg(tensors: dict[int, torch.Tensor], num_train) -> torch.Tensor:
    total = sum(num_train[k] for k in tensors)
    return sum(num_train[k] * t.double() for k, t in tensors.items()) / total


def close(a, b, atol=1e-6, rtol=1e-5):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- FedProx and Ditto
def test_proximal_term_adds_mu_times_distance_to_the_sgd_step():
    """d/dw (mu/2)||w - c||^2 = mu (w - c): one SGD step with the term minus one without it = -lr mu (w - c)."""
    cfg, model, template, _ = tiny()
    trainer, (x, y) = Trainer(model, cfg), client_data(16, 0)
    w, c, mu = perturbed(template, 1), perturbed(template, 2), 0.3
    plain, loss_plain = trainer.train(w, x, y, seed=5)
    prox, loss_prox = trainer.train(w, x, y, seed=5, prox_center=c, prox_mu=mu)
    for n in w:
        close(prox[n] - plain[n], -cfg.lr * mu * (w[n] - c[n]))
    distance = sum(float(((w[n] - c[n]).double() ** 2).sum()) for n in w)
    assert loss_prox - loss_plain == pytest.approx(0.5 * mu * distance, rel=1e-4)
    same, _ = trainer.train(w, x, y, seed=5, prox_center=c, prox_mu=0.0)
    assert all(torch.equal(same[n], plain[n]) for n in w), "mu = 0 is plain training"


def test_fedprox_pulls_towards_the_model_the_round_started_from():
    """Two SGD epochs (one step each) from w0 with centre w0: the term is 0 at step 1, so
    w2(FedProx) - w2(plain) = -lr mu (w1 - w0), w1 being the plain model after step 1."""
    cfg, model, template, groups = tiny(local_epochs=2, mu=0.5)
    trainer, (x, y) = Trainer(model, cfg), client_data(16, 1)
    w0 = perturbed(template, 3)
    w2, _ = FedProx(cfg, groups, template, NUM_TRAIN).train(0, trainer, w0, x, y, 7)
    plain2, _ = trainer.train(w0, x, y, 7)
    w1, _ = trainer.train(w0, x, y, 7, phases=[(1, set(w0))])
    expected = {n: -cfg.lr * cfg.mu * (w1[n] - w0[n]) for n in w0}
    assert max(float(v.abs().max()) for v in expected.values()) > 1e-4, "the setup must move the model"
    for n in w0:
        close(w2[n] - plain2[n], expected[n])


def test_ditto_personal_and_global_models():
    """Personal update: + lambda (v - w_global) in the gradient; the upload is the global copy's update
    (server aggregate = FedAvg of global copies trained here separately); personal states are never overwritten."""
    cfg, model, template, groups = tiny(ditto_lambda=0.4)
    trainer = Trainer(model, cfg)
    strategy, t = Ditto(cfg, groups, template, NUM_TRAIN), InProcessTransport()
    data = [client_data(NUM_TRAIN[k], 10 + k) for k in range(N)]
    states = [perturbed(template, 20 + k) for k in range(N)]
    for rnd, participants in enumerate([[0, 1, 2], [0, 2], [1, 2]], start=1):
        global0 = copy_state(strategy.server_state)
        start = [copy_state(s) for s in states]
        strategy.begin_round(Round(rnd, participants, states, t))
        assert all(torch.equal(states[k][n], start[k][n]) for k in range(N) for n in template), \
            "begin_round does not overwrite personal models"
        personal = {}
        for k in participants:
            seed = 100 * rnd + k
            states[k], _ = strategy.train(k, trainer, states[k], *data[k], seed)
            personal[k] = copy_state(states[k])
            plain, _ = trainer.train(start[k], *data[k], seed)                  # one SGD step, no term
            for n in template:
                close(personal[k][n] - plain[n], -cfg.lr * cfg.ditto_lambda * (start[k][n] - global0[n]))
        strategy.communicate(Round(rnd, participants, states, t))
        copies = {k: trainer.train(copy_state(global0), *data[k], 100 * rnd + k)[0] for k in participants}
        for n in template:
            close(strategy.server_state[n], loop_fedavg({k: copies[k][n] for k in participants}, NUM_TRAIN))
            for k in range(N):
                want = personal[k][n] if k in participants else start[k][n]
                assert torch.equal(states[k][n], want), "downloads never overwrite the personal model"
        assert strategy.global_state is strategy.server_state


# --------------------------------------------------------------------------- FedPer and FedRep
@pytest.mark.parametrize("cls", [FedPer, FedRep])
@pytest.mark.parametrize("model", ["cnn", "vit"])
@pytest.mark.parametrize("participants", [[0, 1, 2], [0, 2]])
def test_personal_head_strategies_average_only_the_backbone(cls, model, participants):
    cfg, _, template, groups = tiny(model=model, moe_layers=2)
    states = random_states(template, seed=1)
    before = [copy_state(s) for s in states]
    t = InProcessTransport()
    cls(cfg, groups, template, NUM_TRAIN).communicate(Round(1, participants, states, t))
    backbone = group_keys(groups, {"backbone"})
    assert backbone and set(template) - backbone, "both a backbone and a personal head"
    for n in template:
        avg = loop_fedavg({k: before[k][n] for k in participants}, NUM_TRAIN)
        for k in range(N):
            if n in backbone and k in participants:
                close(states[k][n], avg)
            else:
                assert torch.equal(states[k][n], before[k][n]), (n, k)
    ledger = t.ledger.to_frame()
    assert set(ledger["group"]) == {"backbone"}, "gate, experts and head never leave the client"
    assert sorted(ledger[ledger["channel"] == "server-up"]["src"]) == participants
    assert sorted(ledger[ledger["channel"] == "server-down"]["dst"]) == participants


def _phases_of_fedrep(monkeypatch, **changes):
    """Run FedRep.train once; return (trained names, state at the phase's start, state at its end) per phase."""
    cfg, model, template, groups = tiny(optimizer="adam", lr=0.01, batch_size=8, **changes)
    trainer = Trainer(model, cfg)
    name_of = {id(p): n for n, p in model.named_parameters()}
    starts = []
    make = Trainer._optimizer

    def spy(self, params):
        params = list(params)
        starts.append(({name_of[id(p)] for p in params}, get_state(self.model)))
        return make(self, params)

    monkeypatch.setattr(Trainer, "_optimizer", spy)
    x, y = client_data(20, 2)
    final, _ = FedRep(cfg, groups, template, NUM_TRAIN).train(0, trainer, perturbed(template, 4), x, y, 9)
    ends = [s for _, s in starts[1:]] + [final]
    return groups, [(names, s, e) for (names, s), e in zip(starts, ends)]


@pytest.mark.parametrize("model,head_epochs", [("cnn", 1), ("cnn", 2), ("cnn", 0), ("vit", 1)])
def test_fedrep_trains_the_head_then_the_body(monkeypatch, model, head_epochs):
    groups, phases = _phases_of_fedrep(monkeypatch, model=model, moe_layers=1, head_epochs=head_epochs)
    body = group_keys(groups, {"backbone"})
    head = group_keys(groups, {"gate", "expert", "head"})
    want = ([head] if head_epochs > 0 else []) + [body]
    assert [names for names, _, _ in phases] == want, "head phase first (skipped when head_epochs = 0), then body"
    for names, start, end in phases:
        changed = {n for n in start if not torch.equal(start[n], end[n])}
        assert changed <= names, f"frozen parameters changed: {sorted(changed - names)}"
        assert changed, "the trained parameters move"
    gate = groups["gate[0]"][0].key
    if head_epochs:
        assert gate in {n for n in phases[0][1] if not torch.equal(phases[0][1][n], phases[0][2][n])}


# --------------------------------------------------------------------------- partial participation
def tiny_strategy(name: str):
    cfg, _, template, groups = tiny(strategy=name)
    return make_strategy(cfg, groups, template, NUM_TRAIN + [15]), template, groups


@pytest.mark.parametrize("name", SERVER_STRATEGIES)
def test_missed_aggregate_is_sent_in_begin_round(name):
    """Reference: the latest aggregate is the previous round's (every round aggregates); a participant
    that was not in it gets every server group, server-down, in begin_round, and only those clients."""
    strategy, template, groups = tiny_strategy(name)
    server_groups = sorted(g for g in groups if kind(g) in SERVER_KINDS[name])
    server_keys = group_keys(groups, SERVER_KINDS[name])
    assert server_keys and sorted(strategy.server_groups()) == server_groups
    states = random_states(template, seed=3, n=N + 1)
    strategy.start(states)
    t = InProcessTransport()
    latest, held = 0, [0] * (N + 1)
    for rnd, participants in enumerate([[0, 1], [1, 2], [2], [0, 1, 2, 3], [3]], start=1):
        missed = [k for k in participants if held[k] != latest]
        before = [copy_state(s) for s in states]
        n0 = len(t.ledger)
        strategy.begin_round(Round(rnd, participants, states, t))
        rows = t.ledger.to_frame().iloc[n0:]
        assert set(rows["channel"]) <= {"server-down"} and set(rows["src"]) <= {SERVER}
        assert sorted(set(rows["dst"])) == missed
        for k in missed:
            assert sorted(rows[rows["dst"] == k]["group"]) == server_groups
        for k in range(N + 1):
            for n in template:
                if k in missed and n in server_keys and name != "ditto":   # Ditto keeps it beside the personal model
                    assert torch.equal(states[k][n], strategy.server_state[n]), (rnd, k, n)
                else:
                    assert torch.equal(states[k][n], before[k][n]), (rnd, k, n)
        for k in participants:                                               # "local training"
            states[k] = {n: v + 0.01 * (k + 1) * rnd for n, v in states[k].items()}
        strategy.communicate(Round(rnd, participants, states, t))
        latest += 1
        for k in participants:
            held[k] = latest


@pytest.mark.parametrize("name", SERVER_STRATEGIES)
def test_participants_start_training_from_the_latest_aggregate(monkeypatch, name):
    """In simulate, with half the clients per round: every local update starts from the server's latest
    aggregate (Ditto: its global copy starts from it, its personal model is pulled towards it)."""
    captured, checked = {}, []
    make, train = sim.make_strategy, sim.StackedTrainer.train_jobs

    def make_and_keep(*args, **kwargs):
        captured["s"] = make(*args, **kwargs)
        return captured["s"]

    def train_and_check(self, jobs):
        server = captured["s"].server_state
        for job in jobs:
            start = job.prox_center if name == "ditto" and job.prox_center is not None else job.state
            checked.append(max(float((start[n] - v).abs().max()) for n, v in server.items()))
        return train(self, jobs)

    monkeypatch.setattr(sim, "make_strategy", make_and_keep)
    monkeypatch.setattr(sim.StackedTrainer, "train_jobs", train_and_check)
    result = simulate(smoke(strategy=name, participation=0.5, rounds=4, I=2, d_model=8, expert_hidden=8))
    assert checked and max(checked) == 0.0, checked
    part = result.history[result.history["participated"]].groupby("round")["client"].apply(set)
    assert any(part[r] - part[r - 1] for r in range(2, 5)), "the run must have a client that missed a round"


# --------------------------------------------------------------------------- diverged local training
@pytest.mark.parametrize("name", ["fedavg", "fedmoe_da", "ditto", "fedrep", "local"])
def test_diverged_client_keeps_its_state_and_the_run_goes_on(monkeypatch, name):
    """Round 1's first local update is NaN: that client keeps its state, one 'local' rejection is recorded
    and counted, every other update is kept, and the run goes on to the end."""
    now, pairs, diverged, seen = {}, [], [], {}
    make = sim.make_strategy

    def make_and_wrap(*args, **kwargs):
        s = make(*args, **kwargs)
        begin, finish, communicate = s.begin_round, s.finish, s.communicate

        def begin_round(r):
            begin(r)
            rnd, participants, states, _ = r
            now["round"] = rnd
            now["start"] = [copy_state(x) for x in states]
            pairs.extend((rnd, k) for k in participants)

        def bad_finish(k, results):
            new, loss = finish(k, results)
            if now["round"] == 1 and not diverged:
                diverged.append(k)
                return {n: torch.full_like(v, math.nan) for n, v in new.items()}, loss
            return new, loss

        def check_communicate(r):
            for k in r.participants:
                same = all(torch.equal(r.states[k][n], now["start"][k][n]) for n in r.states[k])
                seen[(r.rnd, k)] = same
            communicate(r)

        s.begin_round, s.finish, s.communicate = begin_round, bad_finish, check_communicate
        return s

    monkeypatch.setattr(sim, "make_strategy", make_and_wrap)
    cfg = smoke(strategy=name, participation=0.75, rounds=3, d_model=8, expert_hidden=8)
    result = simulate(cfg)
    (k,) = diverged
    assert seen[(1, k)], "the diverged client keeps the state it started the round with"
    assert not any(same for key, same in seen.items() if key != (1, k)), "every other update is kept"
    local = result.rejections[result.rejections["channel"] == "local"]
    assert list(zip(local["round"], local["src"], local["dst"])) == [(1, k, k)]
    assert result.summary["discarded_updates"] == 1
    assert result.summary["local_updates"] == len(pairs) == 3 * round(0.75 * cfg.num_clients)
    h = result.history.set_index(["round", "client"])
    assert math.isnan(h.loc[(1, k), "train_loss"])
    assert sorted(h.index.get_level_values("round").unique()) == [1, 2, 3]
    tested = result.history[result.history["n_test"] > 0]
    assert tested["personalised_accuracy"].map(math.isfinite).all()


def test_really_diverging_training_is_discarded_every_time():
    """SGD with lr = 1e30 blows every update up: all are discarded, the models stay as initialised."""
    result = simulate(smoke(strategy="fedavg", optimizer="sgd", momentum=0.0, lr=1e30, rounds=2))
    n = result.config.num_clients
    rej = result.rejections
    assert list(zip(rej["round"], rej["src"], rej["dst"])) == [(r, k, k) for r in (1, 2) for k in range(n)]
    assert set(rej["channel"]) == {"local"}
    assert result.summary["discarded_updates"] == result.summary["local_updates"] == 2 * n
    acc = result.history.pivot(index="client", columns="round", values="personalised_accuracy")
    pd.testing.assert_series_equal(acc[1], acc[2], check_names=False)
    assert result.history["train_loss"].isna().all()


# --------------------------------------------------------------------------- the run folder
def test_run_folder_holds_every_table(tmp_path):
    out = tmp_path / "run"
    cfg = smoke(strategy="fedmoe_da", model="vit", moe_layers=2, d_model=8, expert_hidden=8, rounds=3, I=2,
                out=str(out))
    result = simulate(cfg)
    for name in ("config.json", "clients.csv", "history.csv", "ledger.csv", "rejections.csv", "aggregation.csv",
                 "matrices/round1.npz", "matrices/round3.npz", "summary.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["config"] == cfg.to_dict()

    # clients.csv: one row per client, home domain = argmax of its training domain counts
    dataset = data_mod.build(cfg)
    clients = data_mod.partition(dataset, cfg)
    table = pd.read_csv(out / "clients.csv")
    assert list(table["client"]) == list(range(cfg.num_clients))
    for c in clients:
        counts = [int((c.d_train == d).sum()) for d in range(len(dataset.domains))]
        row = table.iloc[c.client]
        assert row["home_domain"] == int(np.argmax(counts))
        assert (row["n_train"], row["n_test"]) == (len(c.y_train), len(c.y_test))
        assert [row[f"domain:{d}"] for d in dataset.domains] == counts

    # the appended tables are what simulate returned
    for name, frame in (("history.csv", result.history), ("ledger.csv", result.ledger),
                        ("aggregation.csv", result.aggregation)):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), frame, check_dtype=False)
    assert list(pd.read_csv(out / "rejections.csv").columns) == ["round", "src", "dst", "channel", "group", "reason"]
    assert json.loads((out / "summary.json").read_text()) == result.summary

    # aggregation.csv and matrices/: one row / one A per refresh (rounds 1 and 3) and layer
    refreshes = [(r, layer) for r in (1, 3) for layer in (0, 1)]
    assert list(zip(result.aggregation["round"], result.aggregation["layer"])) == refreshes
    saved = dict(RunFolder(out).matrices())
    kinds = ("A[{l}]", "gate[{l}]", "pool[{l}]")   # A, the uploaded gates it came from, the pool's clients
    assert sorted(saved) == sorted(f"round{r}/" + k.format(l=layer) for r, layer in refreshes for k in kinds) \
        == sorted(result.matrices)
    M = cfg.num_clients * cfg.num_experts
    for key, A in saved.items():
        np.testing.assert_array_equal(A, result.matrices[key])
        if "/A[" in key:
            assert A.shape == (M, M) and (A >= 0).all()
            np.testing.assert_allclose(A.sum(1), 1.0, atol=1e-5)
        elif "/pool[" in key:
            assert A.tolist() == list(range(cfg.num_clients))
        else:
            assert A.shape == (M, cfg.d_model)

    back = load_run(out)
    assert back.config.to_dict() == cfg.to_dict() and back.summary == result.summary
    for a, b in ((back.history, result.history), (back.ledger, result.ledger), (back.clients, result.clients),
                 (back.aggregation, result.aggregation)):
        pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert back.rejections.empty == result.rejections.empty
    assert sorted(back.matrices) == sorted(result.matrices)
    for key in back.matrices:
        np.testing.assert_array_equal(back.matrices[key], result.matrices[key])


def test_validation_split_is_carved_from_each_clients_own_training_data():
    cfg = smoke(eval_split="validation")
    dataset = data_mod.build(cfg)
    index = {x.numpy().tobytes(): i for i, x in enumerate(dataset.x_train)}
    assert len(index) == len(dataset.x_train), "pixel equality identifies a training sample"
    test_images = {x.numpy().tobytes() for x in dataset.x_test}
    as_test = data_mod.partition(dataset, cfg.replace(eval_split="test"))  # same seed: same training parts
    for c, full in zip(data_mod.partition(dataset, cfg), as_test):
        val = [index[x.numpy().tobytes()] for x in c.x_test]            # KeyError: not a training sample
        train = [index[x.numpy().tobytes()] for x in c.x_train]
        own = [index[x.numpy().tobytes()] for x in full.x_train]
        assert not set(val) & set(train), "held out from what the client trains on"
        assert sorted(val + train) == sorted(own), "carved from the client's own training data"
        assert len(val) == round(cfg.val_fraction * len(own)) > 0
        assert not any(x.numpy().tobytes() in test_images for x in c.x_test)
        assert torch.equal(c.y_test, dataset.y_train[val]) and torch.equal(c.d_test, dataset.d_train[val])


def test_validation_runs_never_touch_the_test_set(monkeypatch):
    cfg = smoke(eval_split="validation", strategy="fedavg")
    clean = simulate(cfg)
    build = sim.data_mod.build

    def poisoned(config):
        ds = build(config)
        return data_mod.MultiDomainDataset(ds.name, ds.x_train, ds.y_train, ds.d_train,
                                           torch.full_like(ds.x_test, math.nan), (ds.y_test + 1) % 10,
                                           ds.d_test, ds.classes, ds.domains)

    monkeypatch.setattr(sim.data_mod, "build", poisoned)
    pd.testing.assert_frame_equal(simulate(cfg).history, clean.history)
    assert clean.history["personalised_accuracy"].map(math.isfinite).all()
