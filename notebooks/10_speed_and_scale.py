# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · Speed and scale: the stacked engine
#
# Every figure of this course is a federated simulation, so the simulator's
# speed decides how much a class can explore. A round is mostly local
# training: each participant runs a few epochs of mini-batches on its own
# data. Run one client after another (the **loop** engine, `fl/client.py`, the
# readable reference) and every step is a few tiny kernels: 16 images through
# a small CNN, far below what one core can do.
#
# The **stacked** engine (`fl/engine.py`, the default) trains every
# participant at once: one tensor per weight with the clients first, the
# convolutions as one grouped convolution, the linears and the experts as
# batched matmuls, Adam as one fused kernel. Each client keeps its own seed and
# batch order; a step pads the clients' batches to its fullest one and masks
# the padding. The client states stay stacked between rounds too. The tests
# (`tests/test_engine.py`) hold its results equal to the loop's within float
# rounding, for every strategy.
#
# This notebook times the two engines live, then reads the committed
# benchmarks: seconds per round and memory against the number of clients, and
# the same FedAvg workload in Flower's simulation engine.

# %% tags=["parameters"]
SMOKE = False      # papermill sets True in CI: a tiny run in seconds
FIG_DIR = None     # where save_figure writes (figures command); None: nothing written
RUNS_DIR = "runs/course"
SEED = 0
CLIENTS = 20
ROUNDS = 3
REPEATS = 2
BENCH_DIR = "benchmarks/results"

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fedmoe_da import ExperimentConfig, simulate, viz
from fedmoe_da.figures import save_figure

config = ExperimentConfig(strategy="fedavg", num_clients=CLIENTS, rounds=ROUNDS, seed=SEED, progress=False)
if SMOKE:
    config, REPEATS = config.smoke(), 1
config.validate()

# %% [markdown]
# ## The two engines, side by side
# Same config, both engines, alternating (loop, stacked, loop, stacked) so a
# change in the machine's load hits both. Wall time of whole runs, divided by
# rounds (data loading included, so the ratio understates the training speed-up).

# %%
timings, results = [], {}
for rep in range(REPEATS):
    for engine in ("loop", "stacked"):
        start = time.perf_counter()
        results[engine] = simulate(config.replace(engine=engine))
        timings.append({"engine": engine, "repeat": rep, "s_per_round": (time.perf_counter() - start) / config.rounds})
timings = pd.DataFrame(timings)
per_engine = timings.groupby("engine")["s_per_round"].median()
print(per_engine.round(3).to_string(), f"\nstacked is {per_engine['loop'] / per_engine['stacked']:.2f}x faster here")

# %% [markdown]
# The two engines give the same run: here is the largest difference between
# their histories (losses and accuracies of every client and round).

# %%
cols = ["train_loss", "test_loss", "personalised_accuracy"]
a, b = results["loop"].history, results["stacked"].history
print({c: float(np.nanmax(np.abs(a[c].to_numpy() - b[c].to_numpy()))) for c in cols})

# %% [markdown]
# ## Seconds per round and memory against clients
# `benchmarks/sim_throughput.py` runs 20 to 1,000 clients for 20 rounds, each in
# a fresh process (so its peak RSS is its own), the data set dealt IID so each
# round trains on the same number of images whatever the number of clients.

# %%
bench = Path(BENCH_DIR)
scaling_csv = bench / "sim_throughput" / "sim_throughput.csv"
if scaling_csv.is_file():
    scaling = pd.read_csv(scaling_csv)
    fig, axes, drawn = viz.plot_scaling(scaling)
    save_figure(fig, drawn, "fig10_scaling", FIG_DIR, params={"source": str(scaling_csv)})
    plt.show()
    cols = [c for c in ("clients", "engine", "s_per_round", "train_s", "peak_rss_mb", "rss_growth_pct",
                        "train_gflops", "pct_of_peak") if c in scaling]
    display(scaling[cols])
else:
    print(f"{scaling_csv} is missing: run python benchmarks/sim_throughput.py")

# %% [markdown]
# ## Against Flower
# `benchmarks/vs_flower.py` runs the same FedAvg workload (this package's model,
# data, partition, optimizer and batch order) in Flower's simulation engine
# (Ray, one actor per CPU) and in `simulate`, on the same cores, alternating.
# Ray's start-up is reported apart and left out of the ratio.

# %%
flower_json = bench / "vs_flower" / "vs_flower.json"
if flower_json.is_file():
    meta = json.loads(flower_json.read_text())
    ratios = pd.DataFrame(meta["ratios"])
    fig, ax, drawn = viz.plot_vs_flower(ratios)
    save_figure(fig, drawn, "fig10_vs_flower", FIG_DIR, params={"source": str(flower_json)})
    plt.show()
    print("machine:", meta["machine"], "load average before/after:", meta["load_before"], meta["load_after"])
    display(ratios)
else:
    print(f"{flower_json} is missing: run python benchmarks/vs_flower.py (needs the flower extra)")

# %% [markdown]
# ## What bounds it
# Local training is convolutions: their FLOPs are fixed by the model, and on
# one CPU core the grouped convolution of the stacked engine runs them only a
# little faster than one small convolution per client. Stacking removes the
# per-client overhead around them (hundreds of tiny kernels and Python calls
# per step), fuses the optimizer and evaluates every client in a few passes.
# `train_gflops` and `pct_of_peak` in the table above put the training speed
# against a single-thread matmul on the same machine.
