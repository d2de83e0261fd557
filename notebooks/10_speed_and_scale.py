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
# the same FedAvg workload in Flower's simulation engine. Before each code cell, a few
# lines say what to look for; after it, what we saw and why. The live timings
# depend on the machine and on what else runs on it; the committed benchmarks
# are the same in a smoke run and a full one (they are read, not rerun).

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
import pandas as pd
from IPython.display import display

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
# Look at the last line: how many times faster the stacked engine is here.

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
# The loop engine pays, for every client and every step, the Python calls and
# the launch of each small kernel; the stacked one pays them once per step for
# all clients. How much that saves depends on the workload (how small each
# client's step is: the smoke run's model and data are tiny) and on the
# machine's load, so a smoke run and a full one print different ratios, and the
# same run on a busy machine prints another. Only the committed benchmarks
# below, measured with repeats and the load recorded, are numbers to compare.

# %% [markdown]
# Faster is only useful if it computes the same thing. Look at the largest
# difference between the two engines' histories (losses and accuracies of every
# client), round by round, and at how many (round, client) accuracies differ at
# all.

# %%
cols = ["train_loss", "test_loss", "personalised_accuracy"]


def engine_gap(histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Largest |loop - stacked| per round and column (the two histories have the same rows in the same order)."""
    a, b = histories["loop"], histories["stacked"]
    return (a[cols] - b[cols]).abs().groupby(a["round"]).max()


a, b = results["loop"].history, results["stacked"].history
print(engine_gap({"loop": a, "stacked": b}).to_string(float_format="%.1e"))
differs = int((a["personalised_accuracy"] != b["personalised_accuracy"]).sum())
print(f"accuracy differs in {differs} of {len(a)} (round, client) rows")

# %% [markdown]
# The gap starts at float32 rounding: the stacked engine adds the same numbers
# in another order (a grouped convolution, batched matmuls, a padded and masked
# batch), and float addition is not associative. Training then carries it
# forward: a weight that differs in its last bit gives slightly different
# gradients at the next step, and Adam, which divides each step by the gradient's
# running size, does not damp them. So the gap grows with the training steps:
# in a smoke run (two tiny rounds, a few steps) it stays at rounding level,
# while the full run's clients take enough steps for it to grow well above
# rounding within the first round, until some test images near a decision
# boundary flip and accuracies differ by a few images. Is it the rounding or
# the engine? The same two runs in float64 (`dtype`, a config field) answer it:

# %%
exact = {engine: simulate(config.replace(engine=engine, dtype="float64")).history for engine in ("loop", "stacked")}
print(engine_gap(exact).to_string(float_format="%.1e"))

# %% [markdown]
# In float64 the two engines stay at float64 rounding in every round: the
# engines compute the same training, and what grew in float32 was its rounding.
# `tests/test_engine.py` holds the engines equal this way, in float64, for every
# strategy.

# %% [markdown]
# ## Seconds per round and memory against clients
# `benchmarks/sim_throughput.py` runs 20 and more clients for 20 rounds, each in
# a fresh process (so its peak RSS is its own), the data set dealt IID so each
# round trains on the same number of images whatever the number of clients.
# Look at two things: how the seconds per round grow with the number of clients
# (a log axis: a straight rise would mean the cost follows the clients), and
# whether the stacked line stays below the loop one.

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
# In numbers: each engine's growth from its fewest to its most clients, the
# loop's time over the stacked one's at each size, and the largest memory growth
# over a run's rounds.

# %%
if scaling_csv.is_file():
    wide = drawn.pivot(index="clients", columns="engine", values="s_per_round")
    span = f"{wide.index.min()} to {wide.index.max()} clients"
    for engine in wide.columns:
        print(f"{engine}: seconds per round x{wide[engine].iloc[-1] / wide[engine].iloc[0]:.2f} from {span}")
    if {"loop", "stacked"} <= set(wide.columns):
        print("loop time / stacked time:", (wide["loop"] / wide["stacked"]).round(2).to_dict())
    print(f"largest RSS growth over a run: {scaling['rss_growth_pct'].max():.1f}%")

# %% [markdown]
# The clients multiply, the seconds per round much less: each round trains on
# the same number of images whatever the number of clients, so what grows is
# only the per-client work around the training (a state per client, a payload
# per client in the ledger, an evaluation per client). The stacked engine cuts
# that per-client part, which is why, in the committed measurements, the loop
# takes longer than the stacked engine at every size (the ratios printed).
# Peak memory grows with the clients (one state each); the growth over a run's
# rounds stays small, which is what says that nothing
# accumulates from round to round.

# %% [markdown]
# ## Against Flower
# `benchmarks/vs_flower.py` runs the same FedAvg workload (this package's model,
# data, partition, optimizer and batch order) in Flower's simulation engine
# (Ray, one actor per CPU) and in `simulate`, on the same cores, alternating.
# Ray's start-up is reported apart and left out of the ratio. The ratio is
# Flower's seconds per round over ours: above 1, this package is faster. Issue
# 8 set the targets: 4x at 20 clients and 20x at 100.

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

# %%
TARGETS = {20: 4.0, 100: 20.0}     # issue 8: Flower's seconds per round over ours
if flower_json.is_file():
    best = ratios.groupby("clients")["ratio"].max()
    for n, target in TARGETS.items():
        if n in best.index:
            print(f"{n} clients: best ratio {best[n]:.2f}x against a target of {target:g}x: "
                  f"{'met' if best[n] >= target else 'not met'}")

# %% [markdown]
# The lines above say, for the committed measurements, whether each target is
# met and by how much. Both sides run the same training on the same cores, and
# a round of this package is mostly that training (`train_s` against
# `s_per_round` in the scaling table): the convolutions' arithmetic, which no
# simulator can skip. What a simulator can save is its overhead around the
# training (scheduling, serialising, one client after another), so the ratio is
# bounded by how large that overhead is in Flower next to the arithmetic. The
# ratio also carries the machine's load, recorded before and after in the json.

# %% [markdown]
# ## What bounds it
# Local training is convolutions: their FLOPs are fixed by the model, and on
# one CPU core the grouped convolution of the stacked engine runs them only a
# little faster than one small convolution per client. Stacking removes the
# per-client overhead around them (hundreds of tiny kernels and Python calls
# per step), fuses the optimizer and evaluates every client in a few passes.
# `train_gflops` and `pct_of_peak` in the table above put the training speed
# against a single-thread matmul on the same machine.
