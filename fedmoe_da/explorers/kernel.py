"""The MoE dispatch up close (notebook 09): what the sort-based dispatch moves, and a backend against the reference.

    ex = dispatch_explorer()                  # tokens T, experts E, choices k, seed -> the permutation drawn
    ex.controls["E"].value = 3                # redraws; k is capped at E
    moved(T=12, d=32, E=4, k=2)               # one row per tensor each op reads or writes, with its bytes
    compare_ops(TRITON_OPS, TORCH_OPS, T=37, d=40, E=4, k=2)   # max |difference| per op, forward and backward

The explorer's random logits go through the torch reference ops (``moe.reference.TORCH_OPS``: top-k
softmax, then ``routing_index``), which the Triton kernels must match exactly; no kernel runs in it, so
it is instant anywhere. ``compare_ops`` runs whatever ``DispatchOps`` it is given (the Triton kernels on
CPU need ``TRITON_INTERPRET=1`` set before Triton is first imported).
"""
from __future__ import annotations

import ipywidgets as widgets
import pandas as pd
import torch
import torch.nn.functional as F

from .. import viz
from ..moe.reference import TORCH_OPS, DispatchOps, run_experts, sort_dispatch
from ..widgets import Explorer


def routing(T: int, E: int, k: int, seed: int = 0):
    """(weights (T, k), indices (T, k), RoutingIndex) of T tokens with N(0, 2^2) logits over E experts."""
    if not 1 <= k <= E:
        raise ValueError(f"k={k} is invalid: must be between 1 and E={E}")
    logits = 2 * torch.randn(T, E, generator=torch.Generator().manual_seed(seed))     # (T, E)
    weights, indices = TORCH_OPS.topk_softmax(logits, k)                                # (T, k), (T, k)
    return weights, indices, TORCH_OPS.routing_index(indices, E)


def plot_routing_dispatch(T: int, E: int, k: int, seed: int = 0):
    """``viz.plot_dispatch`` of ``routing(T, E, k, seed)``."""
    weights, indices, index = routing(T, E, k, seed)
    return viz.plot_dispatch(weights, indices, index.pos_of)


def dispatch_explorer(T: int = 8, E: int = 4, k: int = 2, seed: int = 0) -> Explorer:
    """Sliders for T, E, k and the seed around ``plot_routing_dispatch``; k's slider never exceeds E."""
    controls = {"T": widgets.IntSlider(T, 1, 24, description="tokens T"),
                "E": widgets.IntSlider(E, 1, 8, description="experts E"),
                "k": widgets.IntSlider(min(k, E), 1, E, description="choices k"),
                "seed": widgets.IntSlider(seed, 0, 20, description="seed")}

    def cap_k(change):   # registered before the Explorer's redraw: k is already valid when it draws
        controls["k"].max = change["new"]

    controls["E"].observe(cap_k, names="value")
    return Explorer(plot_routing_dispatch, controls, title="sort-based dispatch: tokens -> rows grouped by expert")


# --------------------------------------------------------------------------- what the ops move, and a backend's error
def _case(T: int, d: int, E: int, k: int, seed: int, device: str | torch.device = "cpu"):
    """Random logits (T, E), tokens x (T, d) and experts w1 (E, d, h), b1, w2 (E, h, d), b2 with h = d, drawn on
    the CPU (the same numbers on every device) and moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    logits, x = torch.randn(T, E, generator=g), torch.randn(T, d, generator=g)             # (T, E), (T, d)
    experts = [0.3 * torch.randn(*shape, generator=g) for shape in ((E, d, d), (E, d), (E, d, d), (E, d))]
    return logits.to(device), x.to(device), [w.to(device) for w in experts]


def moved(T: int, d: int, E: int, k: int, seed: int = 0) -> pd.DataFrame:
    """One row per tensor that each forward op of the sort-based dispatch reads (in) or writes (out), for fp32
    tokens of width d and experts of hidden width d run through the torch reference: op, direction, tensor,
    shape, dtype, bytes.

    The expert MLPs (the grouped matmul) sit between permute and combine; they read the (T*k, d) rows in
    expert order and write (T*k, d) rows, plus their weights."""
    logits, x, (w1, b1, w2, b2) = _case(T, d, E, k, seed)
    w, idx = TORCH_OPS.topk_softmax(logits, k)
    index = TORCH_OPS.routing_index(idx, E)
    x_perm = TORCH_OPS.permute(x, index)
    y_perm = run_experts(x_perm, index, w1, b1, w2, b2, F.gelu)
    y = TORCH_OPS.combine(y_perm, w, index)
    steps = [("topk_softmax", {"logits": logits}, {"weights": w, "indices": idx}),
             ("routing_index", {"indices": idx},
              {"counts": index.counts, "offsets": index.offsets, "token_of": index.token_of, "pos_of": index.pos_of}),
             ("permute", {"x": x, "token_of": index.token_of}, {"x_perm": x_perm}),
             ("experts (grouped matmul)", {"x_perm": x_perm, "w1": w1, "b1": b1, "w2": w2, "b2": b2},
              {"y_perm": y_perm}),
             ("combine", {"y_perm": y_perm, "weights": w, "pos_of": index.pos_of}, {"y": y})]
    rows = [{"op": op, "direction": direction, "tensor": name, "shape": tuple(t.shape),
             "dtype": str(t.dtype).removeprefix("torch."), "bytes": t.numel() * t.element_size()}
            for op, ins, outs in steps for direction, tensors in (("in", ins), ("out", outs))
            for name, t in tensors.items()]
    return pd.DataFrame(rows)


def compare_ops(ops: DispatchOps, reference: DispatchOps, T: int, d: int, E: int, k: int,
                seed: int = 0, device: str | torch.device = "cpu") -> pd.DataFrame:
    """``ops`` against ``reference`` on one random fp32 case on ``device``: one row per output (op, output,
    max |difference|, max |reference|, identical). Every op gets the *same* inputs (the reference's routing),
    then the whole dispatch (``sort_dispatch``: routing, permute, experts, combine) runs once per backend,
    forward and backward."""
    logits, x, experts = _case(T, d, E, k, seed, device)
    w, idx = reference.topk_softmax(logits, k)
    index = reference.routing_index(idx, E)
    x_perm = reference.permute(x, index)
    rows = []

    def row(op: str, output: str, got: torch.Tensor, want: torch.Tensor) -> None:
        if got.shape != want.shape:
            raise ValueError(f"{op} {output}: shape {tuple(got.shape)} differs from the reference's "
                             f"{tuple(want.shape)}")
        diff = (got.double() - want.double()).abs()
        rows.append({"op": op, "output": output, "max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
                     "max_abs_reference": float(want.double().abs().max()) if want.numel() else 0.0,
                     "identical": bool(torch.equal(got, want))})

    got_w, got_idx = ops.topk_softmax(logits, k)
    row("topk_softmax", "weights", got_w, w)
    row("topk_softmax", "indices", got_idx, idx)
    got_index = ops.routing_index(idx, E)
    for name in ("counts", "offsets", "token_of", "pos_of"):
        row("routing_index", name, getattr(got_index, name), getattr(index, name))
    row("permute", "x_perm", ops.permute(x, index), x_perm)
    row("combine", "y", ops.combine(x_perm, w, index), reference.combine(x_perm, w, index))

    outputs = {}
    for name, backend in (("got", ops), ("want", reference)):
        z, xx = logits.clone().requires_grad_(), x.clone().requires_grad_()
        weights, indices = backend.topk_softmax(z, k)
        y, _ = sort_dispatch(backend, xx, weights, indices, *experts, F.gelu)                # (T, d)
        y.pow(2).sum().backward()
        outputs[name] = (y.detach(), xx.grad, z.grad)
    for output, got, want in zip(("y", "grad x", "grad logits"), outputs["got"], outputs["want"]):
        row("whole dispatch", output, got, want)
    return pd.DataFrame(rows)
