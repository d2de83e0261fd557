"""Backbones with MoE layers: a CNN and an MLP with an MoE classifier head, and a small ViT.

Every model exposes ``moe_layers`` (its MoE layers in order, layer l of the
parameter groups) and ``aux_loss()`` (the sum of their auxiliary losses).
No BatchNorm: a client's state is its parameters alone.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ExperimentConfig
from ..moe import MoELayer


class MoEModel(nn.Module):
    moe_layers: nn.ModuleList

    def aux_loss(self) -> Tensor:
        return sum((m.aux_loss for m in self.moe_layers), torch.zeros(()))


class CNNMoE(MoEModel):
    """Two conv layers (the second strided) -> d_model features -> an MoE head whose experts output logits.

    One token per image: the router picks the experts that classify it. A
    strided conv rather than max-pooling keeps the detail of 8x8 digits; images
    of side >= ``LARGE_SIDE`` (28x28 digits) get a strided first conv too, which
    cuts the work per image by 4 where the extra resolution adds little.
    """

    LARGE_SIDE = 16

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, moe: dict) -> None:
        super().__init__()
        C, H = input_shape[0], input_shape[1]
        s = 2 if H >= self.LARGE_SIDE else 1
        self.features = nn.Sequential(
            nn.Conv2d(C, 32, 3, stride=s, padding=1), nn.ReLU(),         # (B, 32, H/s, W/s)
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),        # (B, 64, H/2s, W/2s)
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),                       # (B, 64*16)
            nn.Linear(64 * 16, moe["d_model"]), nn.ReLU(),               # (B, d_model)
        )
        self.moe_layers = nn.ModuleList([MoELayer(moe["d_model"], moe.pop("d_hidden"), num_classes, **_rest(moe))])

    def forward(self, x: Tensor) -> Tensor:
        return self.moe_layers[0](self.features(x))                      # (B, classes)


class MLPMoE(MoEModel):
    """Flattened input -> two-layer MLP -> an MoE classifier head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, moe: dict) -> None:
        super().__init__()
        d_in = int(torch.tensor(input_shape).prod())
        d = moe["d_model"]
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(d_in, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU())
        self.moe_layers = nn.ModuleList([MoELayer(d, moe.pop("d_hidden"), num_classes, **_rest(moe))])

    def forward(self, x: Tensor) -> Tensor:
        return self.moe_layers[0](self.features(x))


class ViTBlock(nn.Module):
    """Pre-norm transformer block whose feed-forward is an MoE layer routing every patch token."""

    def __init__(self, d: int, heads: int, moe: MoELayer) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.moe = moe

    def forward(self, x: Tensor) -> Tensor:                              # (B, n, d)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.moe(self.norm2(x))                               # MoE over B*n tokens


class ViTMoE(MoEModel):
    """Patches -> tokens -> ``depth`` MoE transformer blocks -> [cls] -> linear head."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, moe: dict, depth: int,
                 patch_size: int) -> None:
        super().__init__()
        C, H, W = input_shape
        if H % patch_size or W % patch_size:
            raise ValueError(f"patch_size={patch_size} is invalid: must divide the image size {H}x{W}")
        d = moe["d_model"]
        n = (H // patch_size) * (W // patch_size)
        self.patch = nn.Conv2d(C, d, patch_size, stride=patch_size)      # (B, d, H/p, W/p)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(0.02 * torch.randn(1, n + 1, d))
        d_hidden = moe.pop("d_hidden")
        heads = 4 if d % 4 == 0 else 1
        self.moe_layers = nn.ModuleList([MoELayer(d, d_hidden, d, **_rest(moe)) for _ in range(depth)])
        self.blocks = nn.ModuleList([ViTBlock(d, heads, m) for m in self.moe_layers])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)                     # (B, n, d)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos  # (B, n+1, d)
        for block in self.blocks:
            t = block(t)
        return self.head(self.norm(t[:, 0]))                             # (B, classes)


def _rest(moe: dict) -> dict:
    return {k: v for k, v in moe.items() if k != "d_model"}


MODEL_CLASSES = {"cnn": CNNMoE, "mlp": MLPMoE, "vit": ViTMoE}


def build(config: ExperimentConfig, input_shape: tuple[int, int, int], num_classes: int) -> MoEModel:
    """The model of ``config`` for inputs of ``input_shape`` (C, H, W)."""
    moe = dict(d_model=config.d_model, d_hidden=config.expert_hidden, num_experts=config.num_experts,
               top_k=config.top_k, backend=config.backend, capacity_factor=config.capacity_factor,
               lb_coef=config.lb_coef, z_coef=config.z_coef)
    if config.model == "vit":
        model = ViTMoE(input_shape, num_classes, moe, depth=config.moe_layers, patch_size=config.patch_size)
    else:
        model = MODEL_CLASSES[config.model](input_shape, num_classes, moe)
    return model.to(getattr(torch, config.dtype))
