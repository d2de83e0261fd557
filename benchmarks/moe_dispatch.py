"""Benchmark the MoE dispatch ops, Triton against the torch reference, and the whole MoE layer.

    python benchmarks/moe_dispatch.py                 # default grid, needs a CUDA GPU (H100: a few minutes)
    python benchmarks/moe_dispatch.py --tiny          # tiny grid on CPU in Triton's interpreter, for CI

For every (tokens T, hidden d, experts E, top_k k, dtype) and op (topk_softmax,
routing_index, permute fwd/bwd, combine fwd/bwd) it records, per backend: the
median time, the effective bandwidth (bytes the op must move / time, counted in
``op_bytes``), that bandwidth as a fraction of a device-to-device copy moving
the same number of bytes (measured in the same run), and the speed-up of
Triton over torch. Then the whole ``MoELayer`` forward+backward, both backends.

Writes a CSV (``--out``), a PNG beside it and a JSON sidecar (device, versions,
arguments, and the targets below, reported, not asserted):
  * permute/combine >= 75% of copy bandwidth when T*d >= 16M elements;
  * fused top-k softmax <= 10 us for T <= 4096;
  * layer fwd+bwd >= 1.5x faster than torch at T=16384, d=1024, E=8, k=2.

Timing on CUDA: CUDA events around each call after warm-up; the GPU is first
held busy with ``torch.cuda._sleep`` so that the CPU queues all calls ahead and
the events measure GPU time, not Python launch latency (ops that sync with the
host, like the torch reference's bincount, still pay their stall). L2 is
flushed before each call unless ``--no-flush``. On CPU: ``time.perf_counter``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():                # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import triton  # noqa: E402

from fedmoe_da.moe import MoELayer  # noqa: E402
from fedmoe_da.moe.reference import TORCH_OPS  # noqa: E402
from fedmoe_da.moe.triton_dispatch import TRITON_OPS  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OPS = ("topk_softmax", "routing_index", "permute_fwd", "permute_bwd", "combine_fwd", "combine_bwd")
BACKENDS = {"torch": TORCH_OPS, "triton": TRITON_OPS}


# --------------------------------------------------------------------------- timing

class Timer:
    def __init__(self, device: torch.device, warmup: int, reps: int, flush: bool) -> None:
        self.device, self.warmup, self.reps = device, warmup, reps
        self.cuda = device.type == "cuda"
        self.l2 = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if self.cuda and flush else None

    def __call__(self, fn) -> float:
        """Median milliseconds of fn()."""
        if not self.cuda:
            for _ in range(self.warmup):
                fn()
            times = []
            for _ in range(self.reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        host_s = (time.perf_counter() - t0) / max(self.warmup, 1)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        if hasattr(torch.cuda, "_sleep"):        # ~2 GHz: keep the GPU busy while the CPU queues every call
            torch.cuda._sleep(int(min(2.0 * 1e9 * 1.5 * self.reps * host_s, 4e9)))
        for s, e in zip(starts, ends):
            if self.l2 is not None:
                self.l2.zero_()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


# --------------------------------------------------------------------------- bytes and ops

def op_bytes(op: str, T: int, d: int, E: int, k: int, s: int) -> int:
    """Bytes an op must read + write (s: element size). Index tensors are int64 (8 B), weights fp32 (4 B).

    Every gathered row counts as read once per use (k reads of a token row in permute),
    so a perfect permute moves as many bytes as a copy of its output.
    """
    A = T * k                                                   # assignments
    return {
        "topk_softmax": T * E * s + A * (4 + 8),                # logits in; weights, indices out
        "routing_index": A * 8 + 2 * A * 8,                     # indices in; token_of, pos_of out
        "permute_fwd": A * 8 + 2 * A * d * s,                   # token_of; A rows in, A rows out
        "permute_bwd": A * 8 + A * d * s + T * d * s,           # pos_of; A rows in, T rows out
        "combine_fwd": A * 12 + A * d * s + T * d * s,          # pos_of, w; A rows in, T rows out
        "combine_bwd": A * 12 + T * d * s + 2 * A * d * s + A * 4,  # + grad_y in; grad_y_perm, grad_w out
    }[op]


def make_op(op: str, ops, T: int, d: int, E: int, k: int, dtype: torch.dtype, device: torch.device):
    """A closure running one op of one backend on fresh random inputs (backward ops: the backward only)."""
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(T, E, device=device, generator=g).to(dtype)
    weights, indices = TORCH_OPS.topk_softmax(logits, k)
    index = TORCH_OPS.routing_index(indices, E)
    if op == "topk_softmax":
        return lambda: ops.topk_softmax(logits, k)
    if op == "routing_index":
        return lambda: ops.routing_index(indices, E)
    if op.startswith("permute"):
        x = torch.randn(T, d, device=device, generator=g).to(dtype).requires_grad_()
        if op == "permute_fwd":
            return lambda: ops.permute(x, index)
        out = ops.permute(x, index)
        grad = torch.randn(out.shape, device=device, generator=g).to(dtype)
        return lambda: torch.autograd.grad(out, x, grad, retain_graph=True)
    y_perm = torch.randn(T * k, d, device=device, generator=g).to(dtype).requires_grad_()
    w = weights.requires_grad_()
    if op == "combine_fwd":
        return lambda: ops.combine(y_perm, w, index)
    out = ops.combine(y_perm, w, index)
    grad = torch.randn(out.shape, device=device, generator=g).to(dtype)
    return lambda: torch.autograd.grad(out, (y_perm, w), grad, retain_graph=True)


def make_layer_step(backend: str, T: int, d: int, E: int, k: int, dtype: torch.dtype, device: torch.device):
    torch.manual_seed(0)
    layer = MoELayer(d, d, num_experts=E, top_k=k, backend=backend).to(device, dtype)
    x = torch.randn(T, d, device=device).to(dtype).requires_grad_()
    grad = torch.randn(T, d, device=device).to(dtype)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)
    return step


# --------------------------------------------------------------------------- the run

def run(args, device: torch.device) -> pd.DataFrame:
    timer = Timer(device, args.warmup, args.reps, flush=not args.no_flush)
    copy_ms: dict[int, float] = {}

    def copy_gbps(nbytes: int) -> float:
        """Bandwidth of dst.copy_(src) moving nbytes in all (nbytes/2 read, nbytes/2 written)."""
        n = max(nbytes // 2, 1)
        if n not in copy_ms:
            src = torch.empty(n, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            copy_ms[n] = timer(lambda: dst.copy_(src))
        return 2 * n / copy_ms[n] / 1e6

    rows = []
    configs = [(T, d, E, k, dt) for T in args.tokens for d in args.hidden for E in args.experts
               for k in args.topk for dt in args.dtypes if k <= E]
    for T, d, E, k, dt in configs:
        for op in OPS:
            if op in ("topk_softmax", "routing_index") and d != args.hidden[0]:
                continue                                     # independent of d: once per (T, E, k)
            if op == "routing_index" and dt != args.dtypes[0]:
                continue                                     # and of the dtype
            hidden = 0 if op in ("topk_softmax", "routing_index") else d
            s = DTYPES[dt].itemsize
            nbytes = op_bytes(op, T, d, E, k, s)
            times = {}
            for name, ops in BACKENDS.items():
                try:
                    times[name] = timer(make_op(op, ops, T, d, E, k, DTYPES[dt], device))
                except torch.cuda.OutOfMemoryError:
                    print(f"skip {op} {name} T={T} d={d} E={E} k={k} {dt}: out of memory", file=sys.stderr)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            cbw = copy_gbps(nbytes)
            for name, ms in times.items():
                gbps = nbytes / ms / 1e6
                rows.append(dict(op=op, backend=name, tokens=T, hidden=hidden, experts=E, top_k=k,
                                 dtype="int64" if op == "routing_index" else dt, median_ms=ms, bytes=nbytes,
                                 gb_per_s=gbps, copy_gb_per_s=cbw, frac_of_copy=gbps / cbw,
                                 speedup_vs_torch=times.get("torch", math.nan) / ms))
            print(f"{op:14s} T={T:6d} d={hidden:5d} E={E:3d} k={k} {dt:5s} "
                  + "  ".join(f"{n}={v * 1e3:9.1f}us" for n, v in times.items()), flush=True)
    T, d, E, k = args.layer
    for dt in args.dtypes:
        times = {name: timer(make_layer_step(name, T, d, E, k, DTYPES[dt], device)) for name in BACKENDS}
        for name, ms in times.items():
            rows.append(dict(op="layer_fwd_bwd", backend=name, tokens=T, hidden=d, experts=E, top_k=k, dtype=dt,
                             median_ms=ms, bytes=0, gb_per_s=math.nan, copy_gb_per_s=math.nan,
                             frac_of_copy=math.nan, speedup_vs_torch=times["torch"] / ms))
        print(f"layer fwd+bwd  T={T} d={d} E={E} k={k} {dt}: torch {times['torch']:.3f} ms, "
              f"triton {times['triton']:.3f} ms", flush=True)
    return pd.DataFrame(rows)


def targets(df: pd.DataFrame, layer: tuple[int, int, int, int]) -> dict:
    """The performance targets, evaluated on this run's Triton rows (None when the grid does not cover one)."""
    tri = df[df.backend == "triton"]
    moves = tri[tri.op.str.match("permute|combine") & (tri.tokens * tri.hidden >= 16 * 2**20)]
    topk = tri[(tri.op == "topk_softmax") & (tri.tokens <= 4096)]
    T, d, E, k = layer
    lay = tri[(tri.op == "layer_fwd_bwd") & (tri.tokens == T) & (tri.hidden == d) & (tri.experts == E)
              & (tri.top_k == k)]
    return {
        "permute_combine_min_frac_of_copy (target >= 0.75, T*d >= 16M)":
            None if moves.empty else float(moves.frac_of_copy.min()),
        "topk_softmax_max_us (target <= 10, T <= 4096)": None if topk.empty else float(topk.median_ms.max() * 1e3),
        f"layer_fwd_bwd_speedup (target >= 1.5, T={T} d={d} E={E} k={k})":
            None if lay.empty else {r.dtype: float(r.speedup_vs_torch) for r in lay.itertuples()},
    }


def plot(df: pd.DataFrame):
    """Left: Triton's permute/combine bandwidth as a fraction of copy; right: speed-up over torch per op."""
    fig, (ax_bw, ax_sp) = plt.subplots(1, 2, figsize=(12, 4.5))
    tri = df[df.backend == "triton"].copy()
    tri["elements"] = tri.tokens * tri.hidden.clip(lower=1)
    for op, part in tri[tri.op.str.match("permute|combine")].groupby("op"):
        ax_bw.scatter(part.elements, part.frac_of_copy, label=op, s=14)
    ax_bw.axhline(0.75, color="grey", ls="--", lw=1)
    ax_bw.set(xscale="log", xlabel="T * hidden (elements)", ylabel="fraction of copy bandwidth",
              title="Triton permute / combine")
    ax_bw.legend(fontsize=8)
    sp = tri.groupby("op").speedup_vs_torch.apply(lambda v: float(math.exp(v.apply(math.log).mean())))
    ax_sp.bar(sp.index, sp.values)
    ax_sp.axhline(1.0, color="grey", lw=1)
    ax_sp.set(yscale="log", ylabel="speed-up over torch (geometric mean)", title="Triton vs torch")
    ax_sp.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig, (ax_bw, ax_sp), df


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "moe_dispatch.csv")
    p.add_argument("--tiny", action="store_true", help="tiny grid (T=64, d=32, E=4, k=2, fp32): CPU/CI smoke run")
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--hidden", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    p.add_argument("--topk", type=int, nargs="+", default=[1, 2, 8])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    p.add_argument("--layer", type=int, nargs=4, default=[16384, 1024, 8, 2], metavar=("T", "D", "E", "K"),
                   help="MoELayer fwd+bwd config (hidden width of the experts = D)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--no-flush", action="store_true", help="do not flush L2 before each timed call (CUDA)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if args.tiny:
        args.tokens, args.hidden, args.experts, args.topk, args.dtypes = [64], [32], [4], [2], ["fp32"]
        args.layer = [64, 32, 4, 2]
    elif not cuda and max(max(args.tokens) * max(args.hidden), args.layer[0] * args.layer[1]) > 2**16:
        p.error("this grid needs a CUDA GPU (Triton's CPU interpreter is far too slow): use --tiny, or small "
                "--tokens/--hidden/--layer")
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    args.reps = args.reps if args.reps is not None else (50 if cuda else 3)

    meta = {"device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, "
            "Triton interpreter)", "torch": torch.__version__, "triton": triton.__version__}
    df = run(args, device)
    for key, val in meta.items():
        df[key] = val
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    fig, _, _ = plot(df)
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    report = targets(df, tuple(args.layer))
    sidecar = {**meta, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "targets": report}
    args.out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}, {args.out.with_suffix('.png')}, {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
