"""The stacked engine against its oracle, the loop engine (``fl/client.py``): same config, both engines.

Everything runs in float64 (``dtype="float64"``): the two engines sum in different orders (a grouped convolution
against one per client, batched matmuls, a fused Adam against torch.optim's loop), and which vector kernels a CPU
takes changes those orders too. In float32 the differences are ~1e-7 per operation, and Adam, which divides a
gradient by its own running magnitude, amplifies them on near-zero gradients: two local epochs left 3e-4 between
the engines on a CPU without AVX-512, 1e-4 on one with it. In float64 they are ~1e-16 per operation and stay below
1e-12 after training on any CPU (checked with ``ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41``, the scalar
paths, and with AVX2), so the tolerances below (1e-9) hold with a wide margin wherever the suite runs.

Local training is compared two ways:
* whole runs, every strategy, partial participation, clients with unequal data, SGD with momentum;
* single local trainings with Adam, FedProx's proximal term, FedRep's phases and weight decay.
Evaluation must agree to rounding (loss) and exactly (accuracy, routed counts), empty test sets included.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmoe_da import data as data_mod
from fedmoe_da import models
from fedmoe_da.config import STRATEGIES, ExperimentConfig
from fedmoe_da.fl import engine as engine_mod
from fedmoe_da.fl import simulate
from fedmoe_da.fl.client import Job, Trainer
from fedmoe_da.fl.engine import StackedTrainer
from fedmoe_da.fl.state import get_state

pytestmark = pytest.mark.equivalence   # also run on a CPU without AVX-512's kernels (Makefile: test)

TOL = 1e-9   # float64: see the module docstring
NUMERIC = ["train_loss", "test_loss", "personalised_accuracy", "global_accuracy"]


def small(**changes) -> ExperimentConfig:
    base = ExperimentConfig(num_clients=5, participation=0.6, rounds=2, max_samples=500, d_model=16,
                            expert_hidden=16, num_experts=4, local_epochs=2, min_samples=4, progress=False,
                            dtype="float64")
    return base.replace(**changes).validate()


def states_of(run_dir) -> list[dict]:
    return torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)["states"]


@pytest.mark.parametrize("model", ["cnn", "mlp"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_whole_runs_equal_the_loop_engine(tmp_path, strategy, model):
    cfg = small(strategy=strategy, model=model, optimizer="sgd", lr=0.05, momentum=0.9)
    runs = {e: simulate(cfg.replace(engine=e, out=str(tmp_path / e))) for e in ("loop", "stacked")}
    loop, stacked = runs["loop"], runs["stacked"]
    assert loop.history["n_train"].nunique() > 1, "the clients should hold unequal data"
    assert not loop.history["participated"].all(), "some clients should sit rounds out"
    for col in NUMERIC:
        np.testing.assert_allclose(stacked.history[col], loop.history[col], atol=TOL, rtol=0, err_msg=col)
    routed = [c for c in loop.history if c.startswith("routed_")]
    assert (stacked.history[routed].to_numpy() == loop.history[routed].to_numpy()).all()
    assert stacked.ledger.equals(loop.ledger)
    for a, b in zip(states_of(tmp_path / "loop"), states_of(tmp_path / "stacked")):
        for n in a:
            torch.testing.assert_close(b[n], a[n], atol=TOL, rtol=0, msg=n)


def setup(model: str = "cnn", **changes):
    cfg = small(model=model, **changes)
    dataset = data_mod.build(cfg)
    clients = data_mod.partition(dataset, cfg)
    torch.manual_seed(0)
    net = models.build(cfg, dataset.input_shape, dataset.num_classes)
    return cfg, clients, net, get_state(net)


def perturbed(state: dict, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {n: t + 0.05 * torch.randn(t.shape, generator=gen) for n, t in state.items()}


def compare_jobs(cfg, net, jobs, atol=TOL):
    ref = Trainer(net, cfg).train_jobs(jobs)
    got = StackedTrainer(net, cfg).train_jobs(jobs)
    for (sa, la), (sb, lb) in zip(ref, got):
        assert lb == pytest.approx(la, rel=TOL)
        for n in sa:
            torch.testing.assert_close(sb[n], sa[n], atol=atol, rtol=0, msg=n)
    return ref, got


def test_adam_jobs_with_prox_phases_and_weight_decay():
    cfg, clients, net, state = setup(weight_decay=0.01, num_clients=6)
    body = {n for n in state if n.startswith("features")}
    jobs = [Job(perturbed(state, k), c.x_train, c.y_train, 10 + k) for k, c in enumerate(clients)]
    jobs += [Job(perturbed(state, 50 + k), c.x_train, c.y_train, 60 + k, prox_center=state, prox_mu=0.5)
             for k, c in enumerate(clients[:3])]
    jobs += [Job(perturbed(state, 90 + k), c.x_train, c.y_train, 95 + k, phases=[(1, set(state) - body), (1, body)])
             for k, c in enumerate(clients[:2])]
    assert len({len(j.y) for j in jobs}) > 2
    ref, got = compare_jobs(cfg, net, jobs)
    for (s, _), job in zip(got, jobs):
        assert any(not torch.equal(s[n], job.state[n]) for n in s), "every job must have trained"


def test_frozen_parameters_of_a_phase_do_not_move():
    cfg, clients, net, state = setup()
    head = {n for n in state if not n.startswith("features")}
    (new, _), = StackedTrainer(net, cfg).train_jobs([Job(state, clients[0].x_train, clients[0].y_train, 1,
                                                         phases=[(2, head)])])
    assert all(torch.equal(new[n], state[n]) for n in state if n not in head)
    assert any(not torch.equal(new[n], state[n]) for n in head)


def test_chunks_give_the_same_results(monkeypatch):
    cfg, clients, net, state = setup(num_clients=5)
    jobs = [Job(perturbed(state, k), c.x_train, c.y_train, k) for k, c in enumerate(clients)]
    whole = StackedTrainer(net, cfg).train_jobs(jobs)
    monkeypatch.setattr(engine_mod, "CHUNK", 2)
    chunked = StackedTrainer(net, cfg).train_jobs(jobs)
    for (sa, la), (sb, lb) in zip(whole, chunked):
        assert la == pytest.approx(lb, rel=TOL)
        assert all(torch.allclose(sa[n], sb[n], atol=TOL, rtol=0) for n in sa)


def test_a_diverging_client_does_not_touch_the_others():
    cfg, clients, net, state = setup()
    jobs = [Job(perturbed(state, k), c.x_train, c.y_train, k) for k, c in enumerate(clients)]
    bad = clients[1].x_train.clone()
    bad[0] = math.inf
    jobs[1] = Job(jobs[1].state, bad, clients[1].y_train, 1)
    ref, got = Trainer(net, cfg).train_jobs(jobs), StackedTrainer(net, cfg).train_jobs(jobs)
    assert not all(torch.isfinite(t).all() for t in got[1][0].values()) or not math.isfinite(got[1][1])
    for k in (0, 2, 3):
        for n in ref[k][0]:
            torch.testing.assert_close(got[k][0][n], ref[k][0][n], atol=TOL, rtol=0)


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_evaluation_equals_the_loop(model):
    cfg, clients, net, state = setup(model)
    items = [(perturbed(state, k), c.x_test, c.y_test) for k, c in enumerate(clients)]
    items.append((state, clients[0].x_test[:0], clients[0].y_test[:0]))         # an empty test set
    items.append((state, clients[0].x_test[:3], clients[0].y_test[:3]))         # a tiny one
    ref = Trainer(net, cfg).evaluate_many(items)
    got = StackedTrainer(net, cfg).evaluate_many(items)
    for a, b in zip(ref, got):
        if math.isnan(a.loss):
            assert math.isnan(b.loss) and math.isnan(b.accuracy) and b.routed == a.routed
            continue
        assert b.loss == pytest.approx(a.loss, rel=TOL)
        assert b.accuracy == a.accuracy and b.routed == a.routed


def test_models_that_do_not_stack_run_the_loop():
    cfg, clients, net, state = setup("vit", patch_size=7, moe_layers=1)
    trainer = StackedTrainer(net, cfg)
    assert trainer.why_not is not None
    job = Job(state, clients[0].x_train, clients[0].y_train, 3)
    (a, la), = trainer.train_jobs([job])
    (b, lb), = Trainer(net, cfg).train_jobs([job])
    assert la == lb and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("size,out", [((7, 7), 4), ((8, 5), (3, 2)), ((6, 9), (None, 4)), ((4, 4), 1)])
def test_pooling_matrix_equals_adaptive_avg_pool(size, out):
    from fedmoe_da.models.stacked import _adaptive_avg_pool

    x = torch.randn(3, 5, *size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_adaptive_avg_pool(x, out), torch.nn.functional.adaptive_avg_pool2d(x, out),
                               atol=TOL, rtol=0)
