"""The token-routing ViT: MoE feed-forward blocks route every patch, one pool and one A per MoE layer."""
import torch

from fedmoe_da import ExperimentConfig, models, simulate


def _config(**kw) -> ExperimentConfig:
    return ExperimentConfig(model="vit", moe_layers=2, progress=False, backend="torch",
                            **kw).smoke().replace(moe_layers=2)


def test_vit_routes_every_patch_token():
    cfg = _config()
    net = models.build(cfg, (1, 8, 8), 10)
    x = torch.randn(3, 1, 8, 8)
    assert net(x).shape == (3, 10)
    tokens = 3 * ((8 // cfg.patch_size) ** 2 + 1)              # patches + [cls], per image
    for layer in net.moe_layers:
        assert int(layer.routing.tokens_per_expert.sum()) == tokens * cfg.top_k
    groups = models.param_groups(net)
    assert {"gate[0]", "gate[1]", "head"} <= set(groups)
    assert sum(g.startswith("expert[1]") for g in groups) == cfg.num_experts


def test_vit_fedmoe_da_has_one_matrix_per_layer():
    result = simulate(_config(strategy="fedmoe_da", rounds=1, P=2))
    ledger = result.ledger
    downs = set(ledger.loc[ledger["channel"] == "server-down", "group"])
    assert {"A[0]", "A[1]"} <= downs
    p2p = set(ledger.loc[ledger["channel"] == "p2p", "group"])
    assert any(g.startswith("expert[0]") for g in p2p) and any(g.startswith("expert[1]") for g in p2p)
    assert result.history["personalised_accuracy"].between(0, 1).all()
