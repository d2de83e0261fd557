"""One shared model (FedAvg's global model) on every client's test set: ``StackedTrainer.evaluate_shared`` against
its oracle, ``Trainer.evaluate`` one client at a time.

The clients' test sets are unequal, one is empty and, with ``EVAL_ROWS`` made small, the larger ones are split
across slices and slices hold several clients. In float64, loss agrees to rounding (1e-9 on any CPU); accuracy and
routed counts exactly.
"""
from __future__ import annotations

import math

import pytest
import torch

from fedmoe_da import data as data_mod
from fedmoe_da import models
from fedmoe_da.config import ExperimentConfig
from fedmoe_da.fl import engine as engine_mod
from fedmoe_da.fl.client import Trainer
from fedmoe_da.fl.engine import StackedTrainer
from fedmoe_da.fl.state import get_state

pytestmark = pytest.mark.equivalence   # also run on a CPU without AVX-512's kernels (Makefile: test)


def setup(model: str, **changes):
    cfg = ExperimentConfig(num_clients=5, max_samples=500, d_model=16, expert_hidden=16, num_experts=4,
                           min_samples=4, progress=False, model=model, dtype="float64",
                           **changes).validate()   # float64: argmax near-ties cannot flip between the paths
    dataset = data_mod.build(cfg)
    clients = data_mod.partition(dataset, cfg)
    torch.manual_seed(0)
    net = models.build(cfg, dataset.input_shape, dataset.num_classes)
    state = get_state(net)
    gen = torch.Generator().manual_seed(1)       # away from the initialisation: routing spreads over experts
    state = {n: t + 0.1 * torch.randn(t.shape, generator=gen) for n, t in state.items()}
    items = [(c.x_test, c.y_test) for c in clients]
    items.insert(2, (clients[0].x_test[:0], clients[0].y_test[:0]))          # an empty test set
    items.append((clients[1].x_test[:1], clients[1].y_test[:1]))             # a single row
    return cfg, net, state, items


def assert_equal_to_the_loop(cfg, net, state, items, got):
    assert len(got) == len(items)
    for (x, y), b in zip(items, got):
        a = Trainer(net, cfg).evaluate(state, x, y)
        assert len(b.routed) == len(a.routed) and b.routed == a.routed
        if len(y) == 0:
            assert math.isnan(b.loss) and math.isnan(b.accuracy) and all(n == 0 for n in b.routed[0])
            continue
        assert b.loss == pytest.approx(a.loss, rel=1e-9, abs=1e-12)
        assert b.accuracy == a.accuracy


@pytest.mark.parametrize("rows", [engine_mod.EVAL_ROWS, 7, 40])
@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_shared_evaluation_equals_the_loop(monkeypatch, model, rows):
    cfg, net, state, items = setup(model)
    sizes = [len(y) for _, y in items]
    assert len(set(sizes)) > 2 and 0 in sizes
    if rows < engine_mod.EVAL_ROWS:
        monkeypatch.setattr(engine_mod, "EVAL_ROWS", rows)
        assert max(sizes) > rows, "a test set should span several slices"
    got = StackedTrainer(net, cfg).evaluate_shared(state, items)
    assert_equal_to_the_loop(cfg, net, state, items, got)
    assert all(sum(r.routed[0]) == n * cfg.top_k for r, n in zip(got, sizes))     # one token per row, k experts
    assert len({tuple(r.routed[0]) for r, n in zip(got, sizes) if n > 1}) > 1, "clients should route differently"


def test_reference_is_evaluate_many_of_the_same_state():
    cfg, net, state, items = setup("mlp")
    ref = Trainer(net, cfg).evaluate_shared(state, items)
    many = Trainer(net, cfg).evaluate_many([(state, x, y) for x, y in items])
    assert [(r.accuracy, r.routed) for r in ref] == [(r.accuracy, r.routed) for r in many]


def test_no_clients_and_only_empty_clients():
    cfg, net, state, items = setup("cnn")
    trainer = StackedTrainer(net, cfg)
    assert trainer.evaluate_shared(state, []) == []
    empty = [(x[:0], y[:0]) for x, y in items[:2]]
    for r in trainer.evaluate_shared(state, empty):
        assert math.isnan(r.loss) and math.isnan(r.accuracy) and r.routed == [[0] * cfg.num_experts]


def test_models_that_do_not_stack_run_the_loop():
    cfg, net, state, items = setup("vit", patch_size=7, moe_layers=2)
    trainer = StackedTrainer(net, cfg)
    assert trainer.why_not is not None
    got = trainer.evaluate_shared(state, items)
    assert all(len(r.routed) == 2 for r in got)
    assert_equal_to_the_loop(cfg, net, state, items, got)
