"""The in-process simulation end to end, on smoke-sized runs (a fraction of a second each).

The oracle for communication is a spy on the transport: it sees every payload
that crosses a link, so the ledger must agree with it row by row.
"""
from __future__ import annotations

import gc
import json
import math
import re

import pandas as pd
import pytest
import torch
from torch import nn

from fedmoe_da import load_run, models, simulate
from fedmoe_da.config import ExperimentConfig
from fedmoe_da.fl import InProcessTransport, p2p_graph
from fedmoe_da.fl import simulation as sim
from fedmoe_da.fl.transport import SERVER

GROUP = re.compile(r"backbone|head|gate\[\d+\]|expert\[\d+\]\[\d+\]|A\[\d+\]")
INPUT_SHAPE = (1, 8, 8)   # the embedded digits


def smoke(**changes) -> ExperimentConfig:
    """Smoke-sized runs on the tiny 8x8 digits (INPUT_SHAPE): these tests are about communication, not data."""
    return ExperimentConfig(dataset="digits", progress=False, backend="torch", seed=0).smoke().replace(**changes)


class Spy:
    """A tamper hook that changes nothing and remembers what crossed the link."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def __call__(self, src, dst, group, payload):
        self.sent.append({"src": src, "dst": dst, "group": group,
                          "bytes": sum(t.numel() * t.element_size() for t in payload.values()),
                          "numel": sum(t.numel() for t in payload.values()),
                          "shapes": {n: tuple(t.shape) for n, t in payload.items()}})
        return payload


def model_bytes(config: ExperimentConfig) -> int:
    torch.manual_seed(0)
    model = models.build(config, INPUT_SHAPE, 10)
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.fixture(scope="module")
def spied():
    """One FedMoE-DA and one FedAvg smoke run, each with a spy on its transport."""
    out = {}
    for strategy in ("fedmoe_da", "fedavg"):
        spy = Spy()
        result = simulate(smoke(strategy=strategy), transport=InProcessTransport(tamper=spy))
        out[strategy] = (result, spy)
    return out


# --------------------------------------------------------------------------- the ledger
@pytest.mark.parametrize("strategy", ["fedmoe_da", "fedavg"])
def test_ledger_rows_are_the_bytes_sent(spied, strategy):
    result, spy = spied[strategy]
    ledger = result.ledger
    assert len(ledger) == len(spy.sent) > 0
    for (_, row), sent in zip(ledger.iterrows(), spy.sent):
        assert (row["src"], row["dst"], row["group"]) == (sent["src"], sent["dst"], sent["group"])
        assert (row["bytes"], row["numel"]) == (sent["bytes"], sent["numel"])
    assert result.summary["server_bytes"] == ledger[ledger["channel"] != "p2p"]["bytes"].sum()
    assert result.summary["p2p_bytes"] == ledger[ledger["channel"] == "p2p"]["bytes"].sum()


def test_fedavg_bytes_per_round_are_participants_times_model(spied):
    result, _ = spied["fedavg"]
    size = model_bytes(result.config)
    participants = result.history[result.history["participated"]].groupby("round")["client"].apply(sorted)
    for rnd, clients in participants.items():
        rows = result.ledger[result.ledger["round"] == rnd]
        up, down = rows[rows["channel"] == "server-up"], rows[rows["channel"] == "server-down"]
        assert up["bytes"].sum() == len(clients) * size
        assert down["bytes"].sum() == len(clients) * size
        assert sorted(up["src"].unique()) == clients and set(up["dst"]) == {SERVER}


def test_fedmoe_da_uses_less_server_traffic_than_fedavg(spied):
    moe, avg = spied["fedmoe_da"][0].summary, spied["fedavg"][0].summary
    assert 0 < moe["server_bytes"] < avg["server_bytes"]
    assert moe["p2p_bytes"] > 0 and avg["p2p_bytes"] == 0


@pytest.mark.parametrize("strategy", ["fedmoe_da", "fedavg"])
def test_raw_data_never_leaves_a_client(spied, strategy):
    result, spy = spied[strategy]
    assert all(GROUP.fullmatch(g) for g in result.ledger["group"])
    params = {n for n, _ in models.build(result.config, INPUT_SHAPE, 10).named_parameters()}
    for sent in spy.sent:
        for name, shape in sent["shapes"].items():
            assert re.sub(r"\[\d+\]$", "", name) in params or (sent["group"].startswith("A[") and name in
                                                               ("index", "weight")), name
            assert tuple(shape[-3:]) != INPUT_SHAPE, f"{name} {shape} looks like images"


def test_p2p_graph_matches_ledger(spied):
    ledger = spied["fedmoe_da"][0].ledger
    p2p = ledger[(ledger["channel"] == "p2p") & ledger["accepted"]]
    for rnd in (None, 1):
        rows = p2p if rnd is None else p2p[p2p["round"] == rnd]
        g = p2p_graph(ledger, rnd=rnd)
        assert set(g.edges) == set(zip(rows["src"], rows["dst"]))
        for (src, dst), part in rows.groupby(["src", "dst"]):
            assert g.edges[src, dst]["bytes"] == part["bytes"].sum()
            assert g.edges[src, dst]["experts"] == len(part)


# --------------------------------------------------------------------------- history
def test_routed_tokens_sum_to_test_tokens_times_k(spied):
    result, _ = spied["fedmoe_da"]
    h = result.history
    cols = [c for c in h.columns if c.startswith("routed_l0_e")]
    assert len(cols) == result.config.num_experts
    assert (h[cols].sum(axis=1) == h["n_test"] * result.config.top_k).all()


def test_history_has_one_row_per_round_and_client(spied):
    result, _ = spied["fedavg"]
    cfg = result.config
    assert len(result.history) == cfg.rounds * cfg.num_clients
    assert sorted(set(zip(result.history["round"], result.history["client"]))) == \
        [(r, k) for r in range(1, cfg.rounds + 1) for k in range(cfg.num_clients)]
    assert result.history["global_accuracy"].notna().all()        # fedavg has a global model
    assert spied["fedmoe_da"][0].history["global_accuracy"].isna().all()


def test_same_seed_same_run_other_seed_other_run():
    a, b = simulate(smoke(strategy="fedmoe_da")), simulate(smoke(strategy="fedmoe_da"))
    pd.testing.assert_frame_equal(a.history, b.history)
    pd.testing.assert_frame_equal(a.ledger, b.ledger)
    c = simulate(smoke(strategy="fedmoe_da", seed=1))
    assert not a.history.equals(c.history)


# --------------------------------------------------------------------------- robustness
def _finite_where_tested(history: pd.DataFrame) -> bool:
    tested = history[history["n_test"] > 0]
    return bool(tested["personalised_accuracy"].map(math.isfinite).all()
                and tested["test_loss"].map(math.isfinite).all())


@pytest.mark.parametrize("attack", ["nan", "inf", "shape"])
def test_tampered_p2p_payload_is_rejected(attack):
    hits = []

    def tamper(src, dst, group, payload):
        if not hits and group.startswith("expert") and src != SERVER and dst != SERVER:
            hits.append((src, dst, group))
            name = sorted(payload)[0]
            t = payload[name]
            if attack == "shape":
                payload[name] = torch.zeros(*t.shape, 2)
            else:
                t.view(-1)[0] = float("nan") if attack == "nan" else float("inf")
        return payload

    result = simulate(smoke(strategy="fedmoe_da"), transport=InProcessTransport(tamper=tamper))
    assert len(hits) == 1
    src, dst, group = hits[0]
    bad = result.ledger[~result.ledger["accepted"]]
    assert list(zip(bad["src"], bad["dst"], bad["group"], bad["channel"])) == [(src, dst, group, "p2p")]
    assert len(result.rejections) == 1
    reason = result.rejections["reason"].iloc[0]
    assert ("NaN or Inf" in reason) if attack != "shape" else ("shape" in reason)
    assert result.summary["rejected_transfers"] == 1
    assert _finite_where_tested(result.history)


def test_tampered_upload_is_left_out_of_the_average():
    """FedAvg: client 0's backbone upload in round 1 carries a NaN; the run goes on, finite."""
    def tamper(src, dst, group, payload):
        if src == 0 and dst == SERVER and group == "backbone":
            next(iter(payload.values())).view(-1)[0] = float("nan")
        return payload

    result = simulate(smoke(strategy="fedavg"), transport=InProcessTransport(tamper=tamper))
    rej = result.rejections
    assert len(rej) == result.config.rounds and set(rej["channel"]) == {"server-up"} and set(rej["src"]) == {0}
    assert _finite_where_tested(result.history)
    assert result.history["global_accuracy"].map(math.isfinite).all()


def test_partial_participation():
    result = simulate(smoke(strategy="fedmoe_da", participation=0.5, rounds=3, I=2))
    h, ledger = result.history, result.ledger
    per_round = h.groupby("round")["participated"].sum()
    assert (per_round == 2).all()
    for rnd, part in h.groupby("round"):
        who = set(part[part["participated"]]["client"])
        sent = ledger[(ledger["round"] == rnd)]
        assert set(sent[sent["channel"] == "server-up"]["src"]) <= who
        assert set(sent[sent["channel"] == "p2p"]["src"]) <= who and set(sent[sent["channel"] == "p2p"]["dst"]) <= who
        assert set(h[(h["round"] == rnd) & ~h["participated"]]["train_loss"].map(math.isnan)) == {True}
    assert _finite_where_tested(h)


def test_fedavg_participants_start_from_the_global_model(monkeypatch):
    """McMahan et al.: every sampled client starts local training from the current global model."""
    captured, diffs = {}, []
    make = sim.make_strategy
    train = sim.StackedTrainer.train_jobs

    def make_and_keep(*args, **kwargs):
        captured["strategy"] = make(*args, **kwargs)
        return captured["strategy"]

    def train_and_check(self, jobs):
        g = captured["strategy"].global_state
        diffs.extend(max(float((job.state[n] - g[n]).abs().max()) for n in g) for job in jobs)
        return train(self, jobs)

    monkeypatch.setattr(sim, "make_strategy", make_and_keep)
    monkeypatch.setattr(sim.StackedTrainer, "train_jobs", train_and_check)
    sim.simulate(smoke(strategy="fedavg", participation=0.5).replace(rounds=4))
    assert diffs and max(diffs) == 0.0, diffs


# --------------------------------------------------------------------------- memory
def test_clients_hold_states_not_models(monkeypatch):
    """Building modules does not scale with clients, and no module appears during training."""
    built = []
    init = nn.Module.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "__init__", counting_init)
    live = []
    train = sim.StackedTrainer.train_jobs

    def train_and_count(self, *args, **kwargs):
        live.append(sum(issubclass(type(o), nn.Module) for o in gc.get_objects()))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(sim.StackedTrainer, "train_jobs", train_and_count)
    counts = {}
    for n in (2, 6):
        built.clear()
        live.clear()
        sim.simulate(smoke(strategy="fedavg", num_clients=n))
        counts[n] = len(built)
        assert len(live) == 2 and len(set(live)) == 1, live           # one engine call per round; flat
    assert counts[2] == counts[6] > 0


# --------------------------------------------------------------------------- run folder
def test_run_folder_round_trip(tmp_path):
    out = tmp_path / "run"
    result = simulate(smoke(strategy="fedmoe_da", out=str(out)))
    for name in ("config.json", "history.csv", "ledger.csv", "rejections.csv", "summary.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["strategy"] == "fedmoe_da"
    assert {"python", "torch", "numpy", "git_sha"} <= set(meta["versions"])
    back = load_run(out)
    assert back.config.to_dict() == result.config.to_dict()
    pd.testing.assert_frame_equal(back.history, result.history, check_dtype=False)
    pd.testing.assert_frame_equal(back.ledger, result.ledger, check_dtype=False)
    assert back.summary == result.summary and back.run_dir == str(out)
    assert list(back.rejections.columns) == ["round", "src", "dst", "channel", "group", "reason"]
