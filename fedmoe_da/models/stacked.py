"""Every client's model at once: the CNN and MLP forward pass on stacked parameters.

A stacked parameter is one tensor per weight with a leading client dimension G
(``features.0.weight`` (G, 32, C, 3, 3), ``moe_layers.0.w1`` (G, E, d, h), ...),
and the inputs are (G, B, ...) with a mask (G, B) of the real rows (batches of
unequal size are padded at the end). The forward pass (docs/ARCHITECTURE.md §8)
reads the model's own modules for their hyper-parameters and runs

    Conv2d      one grouped convolution over all clients (channels-last: groups = G)
    Linear      one batched matmul (G, out, in) x (G, in, B), so that the weight's gradient is contiguous
    AdaptiveAvgPool2d   one matmul with the pooling matrix (its backward is a matmul too)
    ReLU        in place on a convolution's or linear layer's output (their backward does not read it)
    Flatten     per client, in the module's (C, H, W) order
    MoE head    ``moe.layer.moe_apply`` with the dense backend and leading dimension G

so client g's rows see exactly client g's parameters, and nothing else: each
client's result equals its own forward pass on the module (the engine's
oracle test, ``tests/test_engine.py``). Models without a ``features``
Sequential of those layers (the ViT), or with an MoE capacity (a padded batch
would change it), are not stackable: ``stackable`` says why, and the engine
runs them one client at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..moe.backend import DENSE
from ..moe.layer import moe_apply
from ..moe.router import expert_counts
from .networks import MoEModel

_LAYERS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten)


def stackable(model: MoEModel) -> str | None:
    """None if ``stacked_forward`` runs ``model``, else why not (one line)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or len(model.moe_layers) != 1:
        return f"{type(model).__name__} is not a features Sequential followed by one MoE head"
    odd = [type(m).__name__ for m in features if not isinstance(m, _LAYERS)]
    if odd:
        return f"{type(model).__name__} has layers the stacked forward does not run: {', '.join(odd)}"
    if any(isinstance(m, nn.Conv2d) and (m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros")
           for m in features):
        return "a grouped, dilated or non-zero-padded convolution"
    if model.moe_layers[0].capacity_factor is not None:
        return "an MoE capacity (padded batches would change it)"
    return None


def stacked_forward(model: MoEModel, params: dict[str, Tensor], x: Tensor,
                    mask: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """x (G, B, ...) with mask (G, B) -> logits (G, B, classes), aux loss (G,), routed counts [(G, E)] per MoE layer.

    ``params``: the model's parameter names -> stacked tensors (G, ...). The aux loss and the counts cover
    the real rows only.
    """
    G, B = x.shape[:2]
    h, spatial = x, x.dim() > 3                                          # (G, B, C, H, W) images or (G, B, F)
    if spatial:                                                          # -> (B, G*C, H, W) channels-last
        h = x.transpose(0, 1).reshape(B, -1, *x.shape[3:]).contiguous(memory_format=torch.channels_last)
    owned = False                                                        # h is this pass's own fresh tensor
    for i, m in enumerate(model.features):
        w = params.get(f"features.{i}.weight")
        b = params.get(f"features.{i}.bias")
        if isinstance(m, nn.Conv2d):                                     # every client's filters, one grouped conv
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                         stride=m.stride, padding=m.padding, groups=G)
        elif isinstance(m, nn.Linear):                                   # (G, out, in) x (G, in, B), transposed
            hT = torch.bmm(w, h.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2))
            h = hT.transpose(1, 2)                                       # (G, B, out); w's gradient comes contiguous
        elif isinstance(m, nn.ReLU):                                     # in place on a conv's or linear's output
            h = F.relu(h, inplace=owned)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            h = _adaptive_avg_pool(h, m.output_size)
        elif isinstance(m, nn.Flatten):                                  # per client, (C, H, W) order as the module
            h = h.reshape(B, G, -1).transpose(0, 1) if spatial else h.flatten(2)
            spatial = False
        owned = isinstance(m, (nn.Conv2d, nn.Linear))
    layer = model.moe_layers[0]
    p = "moe_layers.0."
    y, _, indices, _, _, aux = moe_apply(DENSE, h, params[p + "gate.weight"], params[p + "w1"], params[p + "b1"],
                                         params[p + "w2"], params[p + "b2"], layer.top_k, layer.activation,
                                         mask=mask)
    loss = layer.lb_coef * aux["load_balance"] + layer.z_coef * aux["z_loss"]   # (G,)
    return y, loss, [expert_counts(indices, layer.num_experts, mask)]


def _bins(n: int, out: int) -> Tensor:
    """(out, n): row i averages [floor(i n / out), ceil((i + 1) n / out)), the bins of adaptive_avg_pool2d."""
    P = torch.zeros(out, n, dtype=torch.float64)
    for i in range(out):
        lo, hi = (i * n) // out, -(-(i + 1) * n // out)
        P[i, lo:hi] = 1.0 / (hi - lo)
    return P


def _adaptive_avg_pool(h: Tensor, output_size) -> Tensor:
    """``F.adaptive_avg_pool2d`` of h (B, C, H, W) as one matmul with the pooling matrix P (Ho*Wo, H*W):
    out[b, :, q] = sum_p P[q, p] h[b, :, p]. On channels-last h, (B, H*W, C) is a view and the result is
    channels-last again; its backward is P^T times the gradient, where the pooling kernel's is a slow scatter."""
    B, C, H, W = h.shape
    Ho, Wo = (output_size, output_size) if isinstance(output_size, int) else output_size
    Ho, Wo = Ho or H, Wo or W
    P = torch.kron(_bins(H, Ho), _bins(W, Wo)).to(h)                                 # (Ho*Wo, H*W)
    out = torch.matmul(P, h.permute(0, 2, 3, 1).reshape(B, H * W, C))               # (B, Ho*Wo, C)
    return out.view(B, Ho, Wo, C).permute(0, 3, 1, 2)                               # (B, C, Ho, Wo) channels-last
