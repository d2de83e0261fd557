"""Client states stacked for the whole run (``state.ClientStates``) and Eq. 11 over every client at once.

References: a plain list of dicts (what strategies were written against) and a loop over clients and
pool entries for Eq. 11.
"""
from __future__ import annotations

import io

import pytest
import torch

from fedmoe_da import models
from fedmoe_da.config import ExperimentConfig
from fedmoe_da.fl import InProcessTransport
from fedmoe_da.fl import fedmoe_da as fedmoe_da_strategy
from fedmoe_da.fl.registry import make_strategy
from fedmoe_da.fl.state import ClientStates, get_state, read_group, write_group
from fedmoe_da.fl.strategy import Round
from fedmoe_da.fl.transport import Stacked, Transport, copy_payloads, finite_sums

pytestmark = pytest.mark.equivalence   # also run on a CPU without AVX-512's kernels (Makefile: test)

N, E = 6, 4
NUM_TRAIN = [10, 20, 30, 40, 50, 60]


def setup(**changes):
    cfg = ExperimentConfig(num_experts=E, top_k=2, d_model=8, expert_hidden=6, P=3, tau=0.5, I=2, backend="torch",
                           model="cnn", num_clients=N, progress=False).replace(**changes)
    torch.manual_seed(0)
    model = models.build(cfg, (1, 8, 8), 10)
    return cfg, get_state(model), models.param_groups(model)


def random_states(template, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(t.shape, generator=g) for n, t in template.items()}
    return [{n: t + 0.3 * torch.randn(t.shape, generator=g) for n, t in base.items()} for _ in range(N)]


def scale_p2p_by_receiver(src, dst, group, payload):
    """What a receiver gets differs from what the sender holds, by receiver: Eq. 11 must use what arrived."""
    return {n: t * (1 + 0.1 * dst) for n, t in payload.items()} if group.startswith("expert") else payload


# --------------------------------------------------------------------------- the container
def test_views_write_through_and_assignments_copy():
    _, template, _ = setup()
    listed = random_states(template, seed=1)
    states = ClientStates.from_states(listed)
    assert len(states) == N and set(states[2]) == set(template)
    for k in range(N):
        assert all(torch.equal(states[k][n], listed[k][n]) for n in template)
    name = next(iter(template))
    new = torch.full_like(template[name], 7.0)
    states[3][name] = new
    new += 1                                                        # the state holds a copy, not the tensor
    assert torch.equal(states.stacked[name][3], torch.full_like(template[name], 7.0))
    states[3][name][0] = -1.0                                       # a view: in place reaches the stack
    assert float(states.stacked[name][3].flatten()[0]) == -1.0
    states[4] = listed[0]                                           # a whole state copied into row 4
    assert all(torch.equal(states[4][n], listed[0][n]) for n in template)
    assert all(torch.equal(states[5][n], listed[5][n]) for n in template), "other rows untouched"
    assert all(torch.equal(states[-1][n], states[N - 1][n]) for n in template)
    assert [s.k for s in states[1:3]] == [1, 2]


def test_bad_writes_say_what_is_wrong():
    _, template, _ = setup()
    states = ClientStates.from_states(random_states(template, seed=1))
    name = next(iter(template))
    with pytest.raises(ValueError, match=f"client 1: {name} has shape"):
        states[1][name] = torch.zeros(3)
    with pytest.raises(IndexError, match="client 6 out of range: there are 6 clients"):
        states[N]
    with pytest.raises(TypeError, match="cannot delete"):
        del states[0][name]
    with pytest.raises(ValueError, match="leading"):
        ClientStates({"a": torch.zeros(2, 3), "b": torch.zeros(3, 3)})


def test_group_reads_and_writes_match_a_list_of_dicts():
    _, template, groups = setup()
    listed = random_states(template, seed=3)
    states = ClientStates.from_states(random_states(template, seed=3))
    other = random_states(template, seed=4)
    for g, refs in groups.items():
        write_group(listed[2], refs, read_group(other[1], refs))
        write_group(states[2], refs, read_group(other[1], refs))
    for k in range(N):
        assert all(torch.equal(states[k][n], listed[k][n]) for n in template)


def test_a_checkpoint_of_the_views_stores_each_stacked_tensor_once():
    _, template, _ = setup()
    states = ClientStates.from_states(random_states(template, seed=5))
    buf = io.BytesIO()
    torch.save([dict(s) for s in states], buf)
    stacked_bytes = sum(t.numel() * t.element_size() for t in states.stacked.values())
    assert buf.tell() < 1.2 * stacked_bytes + 50_000, "each client's views would otherwise store the whole stack"
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert all(torch.equal(back[k][n], states[k][n]) for k in range(N) for n in template)


# --------------------------------------------------------------------------- strategies see no difference
@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedper", "fedrep", "ditto", "fedmoe_da"])
def test_every_strategy_communicates_the_same_on_stacked_states(name):
    cfg, template, groups = setup(strategy=name, participation=0.5)
    runs = []
    for container in (list, ClientStates.from_states):
        listed = random_states(template, seed=6)
        states = container(listed)
        strategy = make_strategy(cfg, groups, template, NUM_TRAIN)
        strategy.start(states)
        t = InProcessTransport(tamper=scale_p2p_by_receiver)
        for rnd, participants in ((1, [0, 1, 2, 3, 4, 5]), (2, [1, 2, 4]), (3, [0, 2, 5])):
            strategy.begin_round(Round(rnd, participants, states, t))
            for k in participants:                                   # a stand-in for local training
                states[k] = {n: v * 0.9 + 0.01 * (k + rnd) for n, v in states[k].items()}
            strategy.communicate(Round(rnd, participants, states, t))
        runs.append(([{n: s[n].clone() for n in template} for s in states], t.ledger.to_frame()))
    (a, ledger_a), (b, ledger_b) = runs
    assert ledger_a.equals(ledger_b)
    for k in range(N):
        for n in template:
            torch.testing.assert_close(a[k][n], b[k][n], rtol=0, atol=0)


# --------------------------------------------------------------------------- Eq. 11 over every client at once
@pytest.mark.parametrize("chunk", [64, 2])
@pytest.mark.parametrize("participants", [[0, 1, 2, 3, 4, 5], [0, 2, 3, 5]])
def test_eq11_for_all_clients_equals_a_loop_over_clients_and_entries(participants, chunk, monkeypatch):
    """Round 1 refreshes A over everyone; round 2 has only ``participants``: absent peers drop out of each row,
    the row is renormalised, and every remote expert is the one that arrived (scaled by its receiver). With a
    chunk of 2 receivers, the fetches and Eq. 11 run in several chunks."""
    monkeypatch.setattr(fedmoe_da_strategy, "P2P_CHUNK", chunk)
    cfg, template, groups = setup(I=2)
    states = ClientStates.from_states(random_states(template, seed=7))
    strategy = make_strategy(cfg, groups, template, NUM_TRAIN)
    strategy.start(states)
    t = InProcessTransport(tamper=scale_p2p_by_receiver)
    strategy.communicate(Round(1, list(range(N)), states, t))
    before = [{n: states[k][n].clone() for n in template} for k in range(N)]
    strategy.communicate(Round(2, participants, states, t))

    A, pool = strategy.A[0].to_dense(), strategy.pool[0]
    expert_keys = sorted({r.key for g, refs in groups.items() if g.startswith("expert[0]") for r in refs})
    for k in range(N):
        for key in expert_keys:
            if k not in participants:
                assert torch.equal(states[k][key], before[k][key]), "a client that sat out keeps its experts"
                continue
            for e in range(E):
                acc, total = torch.zeros_like(before[k][key][e], dtype=torch.float64), 0.0
                for j, w in enumerate(A[pool.index(k) * E + e].tolist()):
                    peer, slot = pool[j // E], j % E
                    if w == 0 or peer not in participants:
                        continue
                    got = before[peer][key][slot].double() * (1 if peer == k else 1 + 0.1 * k)
                    acc, total = acc + w * got, total + w
                torch.testing.assert_close(states[k][key][e].double(), acc / total, rtol=1e-5, atol=1e-6)
    p2p = t.ledger.to_frame().query("channel == 'p2p' and round == 2")
    assert set(p2p["dst"]) <= set(participants) and set(p2p["src"]) <= set(participants)


def test_send_stacked_is_send_one_after_another():
    """Same rows, rejections and payloads as ``send`` for each row in order: a NaN row, a row a tamper hook
    reshapes, a row it scales, and a screen (rows 0..5: keys carry the row's slot, as P2P's do)."""
    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(6, 3, 2, generator=g), "b": torch.randn(6, 2, generator=g)}
    tensors["w"][1, 0, 0] = float("nan")
    slots = [0, 1, 2, 3, 0, 1]
    batch = Stacked(src=[1, 2, 3, 4, 5, 1], dst=[0, 0, 2, 2, 3, 3], group=[f"expert[0][{e}]" for e in slots],
                    tensors=tensors, key=lambda t, n: f"{n}[{slots[t]}]")

    def tamper(src, dst, group, payload):
        if src == 3:                                                           # row 2: the wrong shape
            return {n: t[:1] for n, t in payload.items()}
        if src == 4:                                                           # row 3: scaled in flight
            return {n: 10 * t for n, t in payload.items()}
        return payload

    def screen(got, rows):                                                     # rejects a large w
        return [f"screen: {float(w.abs().max()):.3g}" if float(w.abs().max()) > 5 else None for w in got["w"]]

    stacked, single = InProcessTransport(tamper=tamper), InProcessTransport(tamper=tamper)
    received, accepted = stacked.send_stacked(7, "p2p", batch, screen)
    ref = []
    for t in range(6):
        payload = {batch.key(t, n): x[t] for n, x in tensors.items()}
        expect = {batch.key(t, n): x.shape[1:] for n, x in tensors.items()}
        def row_screen(got, t=t):
            return screen({n: got[batch.key(t, n)][None] for n in tensors}, torch.tensor([t]))[0]
        ref.append(single.send(7, batch.src[t], batch.dst[t], "p2p", batch.group[t], payload, expect, row_screen))
    assert accepted == [r is not None for r in ref]
    assert accepted[1] is False and accepted[2] is False and accepted[3] is False, "NaN, shape, screen"
    for t, r in enumerate(ref):
        if r is not None:
            assert all(torch.equal(received[n][t], r[batch.key(t, n)]) for n in tensors)
    assert stacked.ledger.to_frame().equals(single.ledger.to_frame())
    assert stacked.ledger.rejections().equals(single.ledger.rejections())
    assert set(stacked.ledger.rejections()["reason"].str.split().str[0]) == {"w[1]", "w[2]", "screen:"}


def test_finite_checks_of_views_into_one_buffer():
    """One pass over the buffer the views share; a NaN in a gap no view covers is no one's, one in a view is its."""
    buf = torch.arange(12.0)
    views = [buf[0:4], buf[6:10].view(2, 2), buf[10:12], buf[0:12:3]]   # the last is not contiguous
    buf[5] = float("nan")
    assert finite_sums(views) == [True, True, True, True]
    buf[7] = float("inf")
    assert finite_sums(views) == [True, False, True, True]
    buf[9] = 1.0
    buf[3] = float("nan")
    assert finite_sums(views) == [False, False, True, False]


def test_copied_payloads_are_copies_in_one_buffer_per_dtype():
    a = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    b = {"w": torch.randn(3, 2), "i": torch.arange(4)}
    out = copy_payloads([a, b])
    assert [list(p) for p in out] == [["w", "b"], ["w", "i"]]
    for p, q in zip([a, b], out):
        for n in p:
            assert torch.equal(p[n], q[n]) and q[n].data_ptr() != p[n].data_ptr() and q[n].dtype == p[n].dtype
    assert out[0]["w"].untyped_storage().data_ptr() == out[1]["w"].untyped_storage().data_ptr()
    out[0]["w"] += 1
    assert not torch.equal(out[0]["w"], a["w"]), "a copy, not an alias"


def test_a_transport_with_only_deliver_sends_stacked_rows_one_by_one():
    """A custom transport implements ``_deliver`` alone: send_stacked then delivers row by row, with the same
    result as the in-process one; a row delivered in another shape is rejected; 1-D stacks (a scalar a row) work."""
    class Plain(Transport):
        def _deliver(self, src, dst, tensors, group):
            return {n: (t[:0] if src == 9 and t.dim() else t).clone() for n, t in tensors.items()}

    tensors = {"w": torch.randn(4, 3), "s": torch.tensor([1.0, float("inf"), 3.0, 4.0])}
    batch = Stacked([1, 2, 9, 3], [0, 0, 0, 1], ["g"] * 4, tensors)
    plain, ref = Plain(), InProcessTransport()
    got, accepted = plain.send_stacked(2, "p2p", batch)
    want, ref_accepted = ref.send_stacked(2, "p2p", Stacked([1, 2, 8, 3], [0, 0, 0, 1], ["g"] * 4, tensors))
    assert accepted == [True, False, False, True] and ref_accepted == [True, False, True, True]
    assert all(torch.equal(got[n][[0, 3]], want[n][[0, 3]]) for n in tensors)
    assert plain.ledger.rejections()["reason"].tolist() == ["s contains NaN or Inf", "w has shape (0,), expected (3,)"]


def test_a_whole_state_written_into_a_row_must_name_every_tensor():
    _, template, _ = setup()
    states = ClientStates.from_states(random_states(template, seed=1))
    partial = dict(list(random_states(template, seed=2)[0].items())[1:])
    with pytest.raises(ValueError, match="client 2: a state must hold exactly the tensors"):
        states[2] = partial
