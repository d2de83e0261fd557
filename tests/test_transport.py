"""The transport's skeleton (docs/ARCHITECTURE.md §5) and the placement (§6), in process, against simple references:
deliver -> judge -> agree -> log, ``Outcome``'s fields, an ``agree`` that overrules the receiver, and the
fault-injection placement."""
from __future__ import annotations

import math
import signal

import pytest
import torch

from fedmoe_da.fl.distributed.faults import KillSwitch, kill_spec
from fedmoe_da.fl.placement import Placement
from fedmoe_da.fl.transport import SERVER, InProcessTransport, Outcome


def payload(value: float = 1.0) -> dict:
    return {"w": torch.full((2, 3), value), "b": torch.full((3,), value, dtype=torch.float64)}


EXPECT = {"w": (2, 3), "b": (3,)}


def rows(transport) -> list[tuple]:
    frame = transport.ledger.to_frame()
    return list(frame[["round", "src", "dst", "channel", "group", "numel", "bytes", "accepted"]]
                .itertuples(index=False, name=None))


def test_outcome_fields():
    o = Outcome(True, 9, 48)
    assert (o.accepted, o.numel, o.nbytes, o.reason, o.content) == (True, 9, 48, None, None)
    assert Outcome._fields == ("accepted", "numel", "nbytes", "reason", "content")


def test_send_accepts_a_clone_and_logs_one_row():
    t = InProcessTransport()
    sent = payload()
    got = t.send(1, 0, SERVER, "server-up", "head", sent, EXPECT)
    assert got is not None and torch.equal(got["w"], sent["w"]) and got["w"].data_ptr() != sent["w"].data_ptr()
    assert rows(t) == [(1, 0, SERVER, "server-up", "head", 9, 6 * 4 + 3 * 8, True)]
    assert t.ledger.num_rejections == 0


@pytest.mark.parametrize("bad, reason", [({"w": torch.zeros(2, 3)}, "do not match"),
                                         ({**payload(), "w": torch.zeros(3, 2)}, "w has shape"),
                                         (payload(math.nan), "contains NaN or Inf")])
def test_send_rejects_what_the_receiver_cannot_use(bad, reason):
    t = InProcessTransport()
    assert t.send(2, 1, SERVER, "server-up", "head", bad, EXPECT) is None
    assert [r[-1] for r in rows(t)] == [False]
    assert reason in t.ledger.rejections()["reason"].iloc[0]


def test_gather_judges_together_in_the_order_sent():
    t = InProcessTransport()
    sent = {3: payload(1.0), 1: payload(math.inf), 2: payload(100.0)}

    def screen(got):
        return {src: "far from the others" for src, p in got.items() if float(p["w"][0, 0]) > 10}

    got = t.gather(4, SERVER, "server-up", "head", sent, EXPECT, screen)
    assert list(got) == [3]
    assert [(r[1], r[-1]) for r in rows(t)] == [(3, True), (1, False), (2, False)]
    assert list(t.ledger.rejections()["reason"]) == ["w contains NaN or Inf", "far from the others"]


def test_send_equals_a_gather_of_one():
    a, b = InProcessTransport(), InProcessTransport()

    def screen(p):
        return "no" if float(p["w"].sum()) > 0 else None

    a.send(1, 0, SERVER, "server-up", "head", payload(), EXPECT, screen)
    b.gather(1, SERVER, "server-up", "head", {0: payload()}, EXPECT, lambda got: {k: "no" for k in got})
    assert rows(a) == rows(b)
    assert a.ledger.rejections().equals(b.ledger.rejections())


class Overruled(InProcessTransport):
    """An ``agree`` that rejects every outcome: what every process logs and returns is the agreed outcome."""

    def agree(self, dst, outcomes, n):
        return [o._replace(accepted=False, reason="overruled") for o in outcomes]


def test_the_agreed_outcome_is_what_is_logged_and_returned():
    t = Overruled()
    assert t.gather(1, SERVER, "server-up", "head", {0: payload(), 1: payload()}, EXPECT) == {}
    assert [r[-1] for r in rows(t)] == [False, False]
    assert list(t.ledger.rejections()["reason"]) == ["overruled", "overruled"]
    assert t.send(1, SERVER, 0, "server-down", "head", payload(), EXPECT) is None


def test_the_in_process_placement_changes_nothing():
    p = Placement()
    p.begin_round(1)
    assert p.hosts(0) and p.hosts(SERVER)
    assert p.trained({0: 1.5}) == {0: 1.5} and p.evaluated([{"client": 0}]) == [{"client": 0}]
    folder = object()
    assert p.folder(folder) is folder and p.settle(None) is None


def test_kill_spec():
    assert kill_spec(None, 2, 0) is None and kill_spec("", 2, 0) is None
    assert kill_spec("2:3", 2, 0) == (3, signal.SIGKILL)
    assert kill_spec("2:3:STOP", 2, 0) == (3, signal.SIGSTOP)
    assert kill_spec("2:3", 1, 0) is None and kill_spec("2:3", 2, 1) is None   # another rank; a restart


def test_the_kill_switch_fires_once_at_the_start_of_its_round(monkeypatch):
    fired, started = [], []

    class Seen(Placement):
        def begin_round(self, rnd):
            started.append(rnd)

    class Faulty(KillSwitch, Seen):
        pass

    monkeypatch.setattr("fedmoe_da.fl.distributed.faults.os.kill", lambda pid, sig: fired.append(sig))
    p = Faulty().arm(2, signal.SIGKILL)
    for rnd in (1, 2, 3):
        p.begin_round(rnd)
    assert fired == [signal.SIGKILL] and started == [1, 2, 3]
