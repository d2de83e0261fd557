"""The MoE explorers (notebook 03): the router's top-k on toy tokens, and a run's routed tokens by domain."""
from __future__ import annotations

import numpy as np
import pytest

from fedmoe_da import ExperimentConfig, simulate, viz
from fedmoe_da.explorers.moe import BY_DOMAIN, router_explorer, routing_explorer


@pytest.fixture(scope="module")
def result():
    return simulate(ExperimentConfig(seed=0, progress=False).smoke())


def routed(history, round_, client, E):
    """Client's routed token counts at a round, one expert at a time."""
    row = history[(history["round"] == round_) & (history["client"] == client)].iloc[0]
    return [int(row[f"routed_l0_e{e}"]) for e in range(E)]


def test_routing_by_domain_sums_to_the_tokens_of_its_clients(result):
    ex = routing_explorer(result)
    assert ex.state["domain"] == BY_DOMAIN
    E, k = result.config.num_experts, result.config.top_k
    for rnd in (1, 2):
        ex.controls["round"].value = rnd
        df = ex.last[2]
        final = result.history[result.history["round"] == rnd]
        for name, part in df.groupby("domain"):
            members = result.clients.loc[result.clients["home_domain_name"] == name, "client"]
            tokens = int(final[final["client"].isin(members)]["n_test"].sum()) * k   # dropless: k per token
            assert part["tokens"].sum() == tokens
            assert part["share"].sum() == pytest.approx(1.0)
            assert list(part["tokens"]) == list(np.sum([routed(result.history, rnd, c, E) for c in members], axis=0))


def test_a_domain_shows_its_clients_shares(result):
    ex = routing_explorer(result)
    E = result.config.num_experts
    for name in ex.controls["domain"].options[1:]:
        ex.controls["domain"].value = name
        df = ex.last[2]
        members = result.clients.loc[result.clients["home_domain_name"] == name, "client"].tolist()
        assert list(df.index) == [f"{c} ({name})" for c in sorted(members)]
        for c, (_, shares) in zip(sorted(members), df.iterrows()):
            counts = routed(result.history, ex.state["round"], c, E)
            assert list(shares) == pytest.approx([n / sum(counts) for n in counts])


def test_plot_routing_rejects_a_domain_it_cannot_place(result):
    with pytest.raises(ValueError, match="needs clients"):
        viz.plot_routing(result.history, domain="usps")
    with pytest.raises(ValueError, match="no client has it"):
        viz.plot_routing(result.history, clients=result.clients, domain="svhn")


def test_router_explorer_keeps_top_k_renormalised_weights():
    ex = router_explorer(seed=0, tokens=10, num_experts=5)
    for k in (1, 3, 5):
        ex.controls["top_k"].value = k
        df = ex.last[2]
        for _, tok in df.groupby("token"):
            probs, weights = tok["prob"].to_numpy(), tok["weight"].to_numpy()
            chosen = np.argsort(-probs, kind="stable")[:k]                     # the k most probable experts
            assert set(np.flatnonzero(weights)) == set(chosen)
            assert weights[chosen] == pytest.approx(probs[chosen] / probs[chosen].sum())
            assert probs.sum() == pytest.approx(1.0)


def test_a_larger_logit_scale_sharpens_the_softmax():
    ex = router_explorer(seed=0)
    peaks = []
    for scale in (0.1, 1.0, 10.0):
        ex.controls["scale"].value = scale
        peaks.append(ex.last[2].groupby("token")["prob"].max().mean())
    assert peaks[0] < peaks[1] < peaks[2]
    with pytest.raises(ValueError, match="top_k"):
        from fedmoe_da.explorers.moe import plot_router, toy_tokens
        plot_router(*toy_tokens(num_experts=3), top_k=4)
