# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · FedMoE-DA against the baselines
#
# Same data, same partition, same initial model; only the federated strategy changes:
#
# * **FedAvg**: the server averages whole models, expert slot by expert slot.
# * **FedProx**: FedAvg plus a proximal term that keeps each local model near the global one (mu).
# * **FedPer**: the body is averaged, the head (here: the whole MoE layer) stays local.
# * **FedMoE-DA**: the backbone is averaged on the server; each expert is averaged with its P most correlated
#   experts in the pool (correlation of their gate rows), fetched peer to peer.
#
# Accuracy is **personalised**: each client's own model on its own held-out test data. We look at the mean
# over clients per round, at every client (and the worst ones), and at what each strategy sends where.
#
# **Budget.** A default run (20 clients, 30 rounds) takes about 50 s on a quiet machine, so this notebook runs
# the four strategies above with **two seeds** (eight runs, about six minutes; the seed-0 runs of FedMoE-DA
# and FedAvg are shared with notebooks 03 to 05). The method study (`benchmarks/method_study.py`) runs every
# baseline, Ditto, FedRep and Local included, with three seeds; its table is in the README.

# %% tags=["parameters"]
SMOKE = False               # papermill sets True in CI: tiny runs, one seed, in seconds
FIG_DIR = None              # a folder: save this notebook's paper figures there
RUNS_DIR = "runs/course"    # finished runs are cached here and read back by the next notebook
SEED = 0
SEEDS = 2                   # seeds SEED, SEED + 1, ...
STRATEGIES = ["fedmoe_da", "fedavg", "fedprox", "fedper"]

# %%
import matplotlib.pyplot as plt

from fedmoe_da import ExperimentConfig, results, viz
from fedmoe_da.explorers.compare import compare_explorer
from fedmoe_da.figures import save_figure


def config_of(strategy: str, seed: int) -> ExperimentConfig:
    """The defaults for one strategy and seed; cached as RUNS_DIR/<strategy>_default (seed SEED) or ..._seed<s>."""
    config = ExperimentConfig(strategy=strategy, seed=seed, progress=False)
    if SMOKE:
        return config.smoke()
    return config.replace(out=f"{RUNS_DIR}/{strategy}_default" + ("" if seed == SEED else f"_seed{seed}"))


seeds = [SEED] if SMOKE else [SEED + s for s in range(SEEDS)]
runs = [results.run_or_load(config_of(strategy, seed)) for seed in seeds for strategy in STRATEGIES]
table = results.comparison_table(runs)
print(results.format_table(table))

# %% [markdown]
# Read the table before the plots. On these defaults (and in the method study's three seeds) **FedMoE-DA is
# below FedAvg and FedProx** in mean and worst-client accuracy; it is above FedPer, which keeps its MoE layer
# local. Averaging each expert with a few correlated ones helps over never sharing experts, but here it does not
# beat averaging all of them. The numbers behind that sentence:

# %%
table.set_index("strategy")[["final_acc", "seed_std", "worst10", "server_vs_fedavg", "total_vs_fedavg"]].round(3)

# %% [markdown]
# ## Accuracy per round
# Mean over clients, the band ± one standard deviation over clients (both averaged over the seeds): the
# band is wide because clients of some domains are much harder than others.

# %%
fig, ax, curves = viz.plot_accuracy_curves(runs)
save_figure(fig, curves, "fig06_accuracy", FIG_DIR, params={"strategies": STRATEGIES, "seeds": seeds}, seeds=seeds)
plt.show()

# %% [markdown]
# ## Every client, and the worst ones
# Left: each client's final accuracy, sorted from the worst, all seeds pooled; where the curves part at the
# left is where strategies differ for the clients worst off. Right: the mean per home domain.

# %%
fig, axes, per_client = viz.plot_client_accuracy(runs)
save_figure(fig, per_client, "fig06_client_accuracy", FIG_DIR, params={"strategies": STRATEGIES, "seeds": seeds},
            seeds=seeds)
plt.show()

# %% [markdown]
# The three worst clients of each strategy (client ids are per seed: a seed deals its own partition):

# %%
per_client.sort_values("accuracy").groupby("strategy", sort=False).head(3).sort_values(["strategy", "accuracy"])

# %% [markdown]
# ## What each strategy sends where
# Stacked MB per channel over the whole run (mean over seeds). FedPer keeps the MoE layer local, so it sends
# the least. FedMoE-DA's server carries less than FedAvg's, but the experts it takes off the
# server travel peer to peer, and more of them (each slot averages P = 3 peers' experts), so its total
# is above FedAvg's. Notebook 05 takes the ledger apart.

# %%
fig, ax, traffic = viz.plot_channel_bytes(runs)
save_figure(fig, traffic, "fig06_bytes", FIG_DIR, params={"strategies": STRATEGIES, "seeds": seeds}, seeds=seeds)
plt.show()
traffic.pivot(index="strategy", columns="channel", values="MB").round(1)

# %% [markdown]
# ## Explore
# Choose strategies and a view; everything is drawn from the finished runs (nothing is re-trained).

# %%
compare_explorer(runs)
