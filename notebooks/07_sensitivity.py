# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Sensitivity: P, tau, I, the proxy and the schedule
#
# FedMoE-DA has a handful of knobs the paper leaves to the user:
#
# * **P**: each expert is aggregated with its P most correlated experts in the pool (Eq. 9); P = 0 makes A
#   the identity, so experts never leave their client (FedPer-like experts, FedAvg backbone).
# * **tau**: the softmax temperature of the weights over those P + 1 experts (Eq. 10): small tau puts almost
#   all weight on the best match, large tau spreads it evenly.
# * **I**: A is recomputed (gates uploaded, rows sent down) every I rounds.
# * **proxy**: what stands for an expert's domain: its gate row (`gate`, the paper's), a client fingerprint
#   next to the slot (`gate_signature`), or the true home domain (`domain`, an oracle no real system has).
# * **schedule** (`sync`): with I > 1, apply Eq. 11 every round with the last A (`every_round`) or only at
#   refresh rounds (`refresh`). At I = 1 every round is a refresh round and the two are the same run, so the
#   schedule is swept at I = 5.
#
# We change **one knob at a time** around the defaults and train each setting once. Training is the
# expensive part, so the sweep is small: **10 clients, 1,600 samples (about 100 training images per client,
# as in the defaults), 20 rounds, one seed**. One seed and ten clients make differences of a few points noise:
# read the trends, not the third digit. The method study (`benchmarks/method_study.py`) screens the same knobs at
# the full size on validation data. How P and tau reshape A itself, without any training, is in notebook 04.

# %% tags=["parameters"]
SMOKE = False                 # papermill sets True in CI: a tiny sweep in seconds
FIG_DIR = None                # a folder: save this notebook's paper figures there
RUNS_DIR = "runs/course"      # finished runs are cached here and read back by the next run
SEED = 0
CLIENTS = 10
MAX_SAMPLES = 1600
ROUNDS = 20
P_VALUES = [0, 1, 3, 8]
TAU_VALUES = [0.03, 0.1, 0.5]
I_VALUES = [1, 5, 10]
PROXIES = ["gate", "gate_signature", "domain"]
SYNC_AT_I = 5                 # the schedule is swept at this I

# %%
import matplotlib.pyplot as plt

from fedmoe_da import ExperimentConfig, viz
from fedmoe_da.explorers.sensitivity import sensitivity_explorer, sweep, sweep_points
from fedmoe_da.figures import save_figure

base = ExperimentConfig(num_clients=CLIENTS, max_samples=MAX_SAMPLES, rounds=ROUNDS, seed=SEED, progress=False)
grid = {"P": P_VALUES, "tau": TAU_VALUES, "I": I_VALUES, "proxy": PROXIES, "sync": ["every_round", "refresh"]}
at = {"sync": {"I": SYNC_AT_I}}
if SMOKE:
    base = base.smoke()
    grid = {"P": [0, 3], "tau": [0.03, 0.1], "I": [1, 2], "proxy": ["gate", "domain"],
            "sync": ["every_round", "refresh"]}
    at = {"sync": {"I": 2}}
else:
    base = base.replace(out=f"{RUNS_DIR}/sensitivity")
base.validate()
print("base:", {k: getattr(base, k)
                for k in ("num_clients", "max_samples", "rounds", "P", "tau", "I", "proxy", "sync")})

# %% [markdown]
# ## The points of the sweep
# Each (knob, value) is the base config with that one change. Points that give the same config (P = 3, tau =
# 0.1, I = 1 and proxy = gate are all the base) are run once; `fedmoe_da` below is the base point.

# %%
points = sweep_points(base, grid, at)
drawn_with = {"base": base.replace(out=None).to_dict(), "grid": grid, "at": at}   # recorded beside the figures
print(f"{len(points)} points, {len(set(points.values()))} distinct runs")
points

# %% [markdown]
# ## Run the sweep
# `sweep` runs the distinct configs through `results.compare`, which caches every run under
# `RUNS_DIR/sensitivity/<entry>/seed<s>/`: a second pass of this notebook only reads them back.

# %%
table, runs = sweep(base, grid, at)
table[["knob", "value", "fixed", "final_acc", "worst10", "p2p_MB", "total_MB", "purity"]].round(3)

# %% [markdown]
# ## Accuracy against each knob
# One panel per knob; the orange star is the base point (the sync panel has none: both its points are at I = 5).

# %%
fig, axes, df = viz.plot_sensitivity(table, "final_acc")
save_figure(fig, df, "fig07_sensitivity", FIG_DIR, params=drawn_with, seeds=[SEED])
plt.show()

# %% [markdown]
# What to look for:
#
# * **P = 0** cuts P2P traffic to zero: every client keeps its own experts. Whether aggregating experts helps
#   at all is the gap between P = 0 and the rest; a large P averages each expert with many unrelated ones.
# * **tau** matters only through how peaked the weights over the P + 1 chosen experts are; with P = 3 the
#   difference between tau values is a difference in how much an expert keeps of itself.
# * **The oracle proxy** (`domain`) shows what perfect domain matching would buy on this data; if it is
#   not better than `gate`, domain-aware matching is not what limits FedMoE-DA here.
#
# ## What each setting costs
# The same sweep, P2P megabytes: P sets how many experts travel, the schedule how often. Under `every_round`
# the experts travel every round whatever I is (Eq. 11 is applied with the last A); under `refresh` only at
# refresh rounds. The oracle proxy fetches more than P suggests: its R takes only the values 1, 0.5 and 0,
# so many experts tie at the threshold of Eq. 9, and ties are kept.

# %%
fig, axes, df = viz.plot_sensitivity(table, "p2p_MB")
save_figure(fig, df, "fig07_sensitivity_p2p", FIG_DIR, params=drawn_with, seeds=[SEED])
plt.show()

# %% [markdown]
# ## Explore
# Choose the knob and the metric; the explorer redraws from the finished sweep (nothing is re-trained).

# %%
sensitivity_explorer(table)
