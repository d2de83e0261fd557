# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · The dispatch kernels: what moves where, Triton against the torch reference
#
# A top-k MoE layer sends each of T tokens to k of E experts. Written naively it
# loops over experts and picks each one's tokens with a mask; the **sort-based
# dispatch** instead lays the T·k (token, choice) *assignments* out so that each
# expert's rows are contiguous, runs each expert once on its block, and puts the
# results back:
#
# | op | in | out | what it moves |
# |---|---|---|---|
# | `topk_softmax` | logits (T, E) | weights (T, k) fp32, indices (T, k) | one read of the logits |
# | `routing_index` | indices (T, k) | counts (E,), offsets (E+1,), token_of (T·k,), pos_of (T, k) | only indices |
# | `permute` | x (T, d) | x_perm (T·k, d) | every token row, gathered k times into expert order |
# | experts | x_perm | y_perm (T·k, d_out) | one two-layer MLP per expert on its contiguous block (the grouped matmul) |
# | `combine` | y_perm, weights | y (T, d_out) | y[t] = Σ_j w[t, j] · y_perm[pos_of[t, j]] |
#
# `routing_index` moves only indices: it works out where each assignment goes.
#
# The library has three implementations behind one switch (`fedmoe_da/moe/backend.py`):
# `torch` (`moe/reference.py`, sort-based, readable, the oracle), `dense`
# (`moe/dense.py`: every expert on every token in one batched matmul, masked:
# E/k times the FLOPs but no sort and no loop, so it wins on tiny problems), and
# `triton` (`moe/triton_dispatch.py`: the four ops above as short Triton kernels,
# each with a backward). `auto` takes Triton on a GPU, and on a CPU dense for
# small problems, torch otherwise.

# %% tags=["parameters"]
SMOKE = False          # papermill sets True in CI
FIG_DIR = None         # a folder: save the figures there (fedmoe_da.figures)
RUNS_DIR = "runs/course"   # unused here: this notebook trains nothing
SEED = 0
TOKENS = 37            # the interpreter check: T (not a multiple of any tile), d, E, k
WIDTH = 40
EXPERTS = 4
TOP_K = 2
BENCH_DIR = None       # the committed benchmark results; None: benchmarks/results of this checkout

# %% [markdown]
# Triton reads `TRITON_INTERPRET` once, when it is first imported: without a GPU
# we set it first, so the kernels run in Triton's **CPU interpreter** (each tile
# becomes numpy arrays: correct, slow, fine for small sizes).

# %%
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

import fedmoe_da
from fedmoe_da import viz
from fedmoe_da.explorers.kernel import compare_ops, dispatch_explorer, moved, plot_routing_dispatch
from fedmoe_da.figures import save_figure
from fedmoe_da.moe import triton_available
from fedmoe_da.moe.backend import DENSE_MAX_WORK
from fedmoe_da.moe.reference import TORCH_OPS

if SMOKE:
    TOKENS, WIDTH = min(TOKENS, 13), min(WIDTH, 16)
print("device:", "cuda" if torch.cuda.is_available() else "cpu", "| torch", torch.__version__,
      "| TRITON_INTERPRET =", os.environ.get("TRITON_INTERPRET"))

# %% [markdown]
# ## What `permute` does to a routing
# Ten tokens, four experts, two choices each. Top: the assignments in token
# order (a = t·k + j); bottom: the rows they become, grouped by expert, each
# cell showing its token. `routing_index` computes only the lines (`pos_of`
# and its inverse `token_of`); `permute` moves the rows along them; `combine`
# goes back up, weighting each line by its routing weight.

# %%
fig, ax, routed = plot_routing_dispatch(T=10, E=4, k=2, seed=SEED)
plt.show()
routed.head(6)

# %% [markdown]
# The tensors each op reads and writes, with their bytes (fp32 tokens, one
# small case). Permute and combine move T·k rows of d values: at real sizes they
# are pure memory traffic, which is why the kernels are written to move each
# row once, in the input dtype, and to sum in fp32.

# %%
moves = moved(T=TOKENS, d=WIDTH, E=EXPERTS, k=TOP_K, seed=SEED)
moves.groupby(["op", "direction"], sort=False)["bytes"].sum().unstack()

# %% [markdown]
# ## The Triton kernels against the torch reference
# Every op gets the same inputs under both backends; then the whole dispatch
# (routing, permute, experts, combine) runs forward and backward once per
# backend. Indices and the routing index must be identical, values equal up to
# float rounding. On a CPU this runs the kernels in the interpreter.

# %%
ok, why = triton_available()
if not ok:
    print(f"skipping the Triton check: {why}")
    errors = None
else:
    from fedmoe_da.moe.triton_dispatch import TRITON_OPS

    errors = compare_ops(TRITON_OPS, TORCH_OPS, T=TOKENS, d=WIDTH, E=EXPERTS, k=TOP_K, seed=SEED,
                         device="cuda" if torch.cuda.is_available() else "cpu")
    assert errors.loc[errors["op"] == "routing_index", "identical"].all(), "the routing index must be exact"
    assert (errors["max_abs_diff"] <= 1e-5 * errors["max_abs_reference"].clip(lower=1)).all(), errors
errors

# %% [markdown]
# The same check runs in the test suite over many shapes, odd E, every dtype
# (fp32, fp16, bf16) and the gradients (`tests/test_triton_dispatch.py`), in the
# interpreter on CPU and at real sizes on a GPU when one is there.
#
# ## Timings
# **No GPU measurement exists in this project yet**: the harness is written
# (`benchmarks/moe_dispatch.py`: each op's time and bandwidth against a copy,
# and the whole layer, Triton against torch), but no machine with a GPU has run
# it, so nothing below is a Triton timing. What is committed is the CPU
# comparison of the two CPU paths, sort-based `torch` against `dense`
# (`benchmarks/moe_cpu.py`), which set the threshold of `auto`.

# %%
bench = Path(BENCH_DIR) if BENCH_DIR else Path(fedmoe_da.__file__).resolve().parents[1] / "benchmarks" / "results"
gpu = sorted(bench.glob("moe_dispatch*.csv"))
print("GPU dispatch results:", ", ".join(p.name for p in gpu) if gpu else "none committed")
for p in gpu:
    display(pd.read_csv(p))
sweep_csv = bench / "moe_cpu_sweep.csv"
sweep = pd.read_csv(sweep_csv) if sweep_csv.is_file() else None
print(f"CPU sweep: {sweep_csv}" if sweep is not None else f"no {sweep_csv}: the CPU timings are skipped")

# %% [markdown]
# One thread on a shared two-core machine (the JSON beside the CSV has the
# device, versions and the load average); each point is the median of one MoE
# layer forward + backward. Dense costs E/k times the expert FLOPs but no sort
# and no per-expert loop, so it wins below a few million multiply-adds
# (`dense_work`) and loses above; `auto` takes dense up to `DENSE_MAX_WORK`.

# %%
if sweep is not None:
    fig, axes, timings = viz.plot_dispatch_timings(sweep, DENSE_MAX_WORK)
    save_figure(fig, timings, "fig09_dispatch_timings", FIG_DIR,
                params={"source": "benchmarks/results/moe_cpu_sweep.csv", "dense_max_work": DENSE_MAX_WORK})
    plt.show()
    display(pd.read_csv(bench / "moe_cpu.csv")[["case", "backend", "tokens", "median_us", "dense_speedup",
                                                 "auto_picks", "device"]])

# %% [markdown]
# ## Explore
# Change T, E, k and the seed: the permutation is redrawn from the torch
# reference (instant; needs a live kernel to move the sliders).

# %%
dispatch_explorer(T=10, E=4, k=2, seed=SEED)
