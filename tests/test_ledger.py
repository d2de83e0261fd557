"""The columnar ledger and the fused payload checks, each against a simple reference.

* ``CommLedger`` against a list of tuples (what the ledger used to be): random sequences of transfers and
  rejections, read back with ``to_frame(start)`` / ``rejections(start)`` at random points, with blocks of a
  few rows so every read crosses block edges; ``restore`` from the run folder's CSVs gives the same tables;
* bytes per row from the columns' ``nbytes``, not a timing;
* ``payload_problems`` against a per-tensor loop (``isfinite`` of every tensor), naming the same sender and
  tensor; sums that overflow on finite values are not rejected; ``gather`` names the bad client.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from fedmoe_da.fl import ledger as ledger_mod
from fedmoe_da.fl.ledger import CHANNELS, LEDGER_COLUMNS, REJECTION_COLUMNS, CommLedger, payload_size
from fedmoe_da.fl.transport import SERVER, InProcessTransport, payload_problem, payload_problems

GROUPS = ["backbone", "head", "gate[0]", "gate[1]", "A[0]", "expert[0][3]", "expert[1][7]"]
REASONS = ["w contains NaN or Inf", "far from the median", "dropped after local training", "w has shape (2,)"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool]


def reference_frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    """The old ledger: a DataFrame of the tuples, ints as int64, strings as strings, ``accepted`` as bool."""
    frame = pd.DataFrame(rows, columns=columns)
    dtypes = {c: (bool if c == "accepted" else "int64" if c in ("round", "src", "dst", "numel", "bytes")
                  else "str") for c in columns}
    return frame.astype(dtypes)


def random_payload(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    return {f"t{i}": torch.zeros(tuple(rng.integers(0, 5, size=rng.integers(0, 4))),
                                 dtype=DTYPES[rng.integers(len(DTYPES))]) for i in range(rng.integers(0, 4))}


def assert_same(got: pd.DataFrame, rows: list[tuple], columns: list[str]) -> None:
    pd.testing.assert_frame_equal(got, reference_frame(rows, columns))


@pytest.mark.parametrize("seed", range(6))
def test_ledger_equals_list_of_tuples(seed, monkeypatch):
    monkeypatch.setattr(ledger_mod, "BLOCK", int(np.random.default_rng(seed).integers(1, 9)))   # tiny blocks
    rng = np.random.default_rng(seed)
    ledger, rows, rejected = CommLedger(), [], []
    for step in range(int(rng.integers(0, 300))):
        rnd, src, dst = int(rng.integers(1, 50)), int(rng.integers(-1, 1000)), int(rng.integers(-1, 1000))
        channel, group = CHANNELS[rng.integers(len(CHANNELS))], GROUPS[rng.integers(len(GROUPS))]
        op = rng.random()
        if op < 0.5:                                        # a transfer of real tensors
            payload, accepted = random_payload(rng), bool(rng.random() < 0.8)
            ledger.record(rnd, src, dst, channel, group, payload, accepted=accepted)
            numel = sum(t.numel() for t in payload.values())
            rows.append((rnd, src, dst, channel, group, numel,
                         sum(t.numel() * t.element_size() for t in payload.values()), accepted))
        elif op < 0.75:                                     # a transfer sized elsewhere (distributed runner)
            numel = int(rng.integers(0, 2**40))
            ledger.add(rnd, src, dst, channel, group, numel, 4 * numel, accepted=True)
            rows.append((rnd, src, dst, channel, group, numel, 4 * numel, True))
        elif op < 0.9:                                      # a rejection, on any channel (local, dropout too)
            ch = (channel, "local", "dropout")[rng.integers(3)]
            reason = REASONS[rng.integers(len(REASONS))] + f" (round {rnd})" * int(rng.integers(2))
            ledger.reject(rnd, src, dst, ch, group, reason)
            rejected.append((rnd, src, dst, ch, group, reason))
        else:                                               # a read in the middle: freezes a partial block
            start = int(rng.integers(0, len(rows) + 3))
            assert_same(ledger.to_frame(start), rows[start:], LEDGER_COLUMNS)
            start = int(rng.integers(0, len(rejected) + 3))
            assert_same(ledger.rejections(start), rejected[start:], REJECTION_COLUMNS)
        assert len(ledger) == len(rows) and ledger.num_rejections == len(rejected)
    for start in {0, len(rows) // 3, len(rows), len(rows) + 5}:
        assert_same(ledger.to_frame(start), rows[start:], LEDGER_COLUMNS)
    assert_same(ledger.rejections(), rejected, REJECTION_COLUMNS)


def test_restore_from_csv_gives_the_same_tables(monkeypatch):
    """What checkpoint.restore does: the run folder's ledger.csv and rejections.csv back into a ledger."""
    monkeypatch.setattr(ledger_mod, "BLOCK", 5)
    ledger = CommLedger()
    for i in range(23):
        ledger.record(i // 4 + 1, SERVER if i % 3 else i, i % 7, CHANNELS[i % 3], GROUPS[i % len(GROUPS)],
                      {"w": torch.zeros(i, 2)}, accepted=i % 5 != 0)
        if i % 5 == 0:
            ledger.reject(i // 4 + 1, i, i % 7, CHANNELS[i % 3], GROUPS[i % len(GROUPS)], f"bad, \"{i}\"")
    csv = {name: frame.to_csv(index=False) for name, frame in
           (("ledger", ledger.to_frame()), ("rejections", ledger.rejections()))}
    back = CommLedger()
    back.restore(pd.read_csv(io.StringIO(csv["ledger"])), pd.read_csv(io.StringIO(csv["rejections"])))
    pd.testing.assert_frame_equal(back.to_frame(), ledger.to_frame())
    pd.testing.assert_frame_equal(back.rejections(), ledger.rejections())
    for led in (ledger, back):   # both carry on alike
        led.record(9, 1, 2, "p2p", "a new group", {"w": torch.zeros(3, dtype=torch.float16)})
    pd.testing.assert_frame_equal(back.to_frame(20), ledger.to_frame(20))
    back.restore(pd.DataFrame(), pd.DataFrame())   # an empty run folder (resumed at round 0)
    assert len(back) == back.num_rejections == 0 and back.to_frame().columns.tolist() == LEDGER_COLUMNS


def test_bytes_per_row_are_few():
    """Columns, not tuples: 34 bytes a transfer however many rounds (a tuple row took ~200)."""
    ledger = CommLedger()
    for rnd in range(1, 6):
        for i in range(10_000):
            ledger.add(rnd, i % 1000, SERVER, CHANNELS[i % 3], GROUPS[i % len(GROUPS)], 4096, 16384)
        assert len(ledger.rows.staged) < ledger_mod.BLOCK   # tuples only until a block fills
        ledger.to_frame(len(ledger))   # the runner reads each round: freezes what is staged
        assert len(ledger.rows.staged) == 0
        assert ledger.nbytes / len(ledger) == 34
    assert len(ledger.rows.columns["group"].names) == len(GROUPS)
    assert ledger.to_frame()["bytes"].sum() == 5 * 10_000 * 16384


def test_bad_input_is_named():
    ledger = CommLedger()
    with pytest.raises(ValueError, match="channel='up' is invalid: must be one of server-up"):
        ledger.record(1, 0, SERVER, "up", "backbone", {})
    with pytest.raises(ValueError, match="start=-1 is invalid"):
        ledger.to_frame(-1)


def test_payload_size_from_shapes():
    payload = {"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float16), "c": torch.zeros(0, 7),
               "d": torch.zeros(2, 2, dtype=torch.int64).t()}   # a view: size from its shape, not its storage
    assert payload_size(payload) == (12 + 5 + 0 + 4, 48 + 10 + 0 + 32)


# --------------------------------------------------------------------------- payload checks
def reference_problem(tensors, expect):
    """The per-tensor check: names and shapes, then the first tensor whose isfinite is not all True."""
    if expect is not None:
        if set(tensors) != set(expect):
            return f"tensors {sorted(tensors)} do not match the expected {sorted(expect)}"
        for name, shape in expect.items():
            if tuple(tensors[name].shape) != tuple(shape):
                return f"{name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}"
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"{name} contains NaN or Inf"
    return None


def poisoned_payloads(seed: int, n: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    shapes = {"w": (4, 3), "b": (3,), "idx": (2,), "h": (5,)}
    payloads, expects = {}, {}
    for k in range(n):
        p = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g, dtype=torch.float64),
             "idx": torch.arange(2), "h": torch.randn(5, generator=g).half()}
        for name in ("w", "b", "h"):
            u = rng.random()
            if u < 0.1:
                p[name].view(-1)[rng.integers(p[name].numel())] = float("nan")
            elif u < 0.2:
                p[name].view(-1)[rng.integers(p[name].numel())] = float(rng.choice([np.inf, -np.inf]))
        if rng.random() < 0.05:
            p["w"] = torch.zeros(3, 4)
        if rng.random() < 0.05:
            del p["idx"]
        payloads[k], expects[k] = p, shapes if rng.random() < 0.8 else None
    return payloads, expects


@pytest.mark.parametrize("seed", range(4))
def test_payload_problems_equal_the_per_tensor_check(seed):
    payloads, expects = poisoned_payloads(seed, 60)
    want = {k: reference_problem(p, expects[k]) for k, p in payloads.items()}
    assert sum(v is not None for v in want.values()) > 5 and sum(v is None for v in want.values()) > 5
    assert payload_problems(payloads, expects) == want
    assert {k: payload_problem(p, expects[k]) for k, p in payloads.items()} == want


def test_overflowing_sums_of_finite_values_are_accepted():
    """Sums are a fast path only: a sum that overflows sends the tensor to the exact check, which passes it."""
    payload = {"big": torch.full((4,), 3e38), "half": torch.full((1000,), 60000.0, dtype=torch.float16),
               "big64": torch.full((3,), 1.7e308, dtype=torch.float64),
               "bf16": torch.full((8,), 3e38, dtype=torch.bfloat16), "grad": torch.ones(3, requires_grad=True)}
    assert payload_problem(payload, None) is None
    payload["half"][999] = float("inf")
    assert payload_problem(payload, None) == "half contains NaN or Inf"


def test_gather_names_the_bad_client():
    t = InProcessTransport()
    sent = {k: {"w": torch.full((2, 2), float(k))} for k in range(50)}
    sent[17]["w"][1, 0] = float("nan")
    accepted = t.gather(1, SERVER, "server-up", "backbone", sent, expect={"w": (2, 2)})
    assert sorted(accepted) == [k for k in range(50) if k != 17]
    rej = t.ledger.rejections()
    assert rej[["src", "reason"]].values.tolist() == [[17, "w contains NaN or Inf"]]
    rows = t.ledger.to_frame()
    assert rows["src"].tolist() == list(range(50)) and rows["accepted"].sum() == 49
    assert (rows["bytes"] == 16).all()
