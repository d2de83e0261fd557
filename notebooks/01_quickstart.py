# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Quickstart: FedMoE-DA next to FedAvg and Local
#
# Twenty clients hold handwritten digits drawn from five **domains** (original,
# rotated, inverted, noisy, blurred): each client mostly one domain, with skewed
# labels. Every client's model is a small CNN whose classifier is a
# **Mixture-of-Experts** layer.
#
# * **Local**: every client trains alone.
# * **FedAvg**: the server averages whole models, expert slot by expert slot.
# * **FedMoE-DA**: the server averages the backbone only; it correlates every
#   expert with every other one through their gate rows (the *proxies*), and each
#   expert is aggregated with its P most correlated peers, the weights fetched
#   **peer to peer** between clients.
#
# The library does the work; this notebook sets parameters, runs, and looks.

# %% tags=["parameters"]
SMOKE = False      # papermill sets True in CI: a tiny run in seconds
ROUNDS = 30
CLIENTS = 20
SEED = 0

# %%
import matplotlib.pyplot as plt

from fedmoe_da import ExperimentConfig, compare, viz
from fedmoe_da import data as fdata
from fedmoe_da.results import format_table

config = ExperimentConfig(rounds=ROUNDS, num_clients=CLIENTS, seed=SEED, progress=False)
if SMOKE:
    config = config.smoke()
config.validate()
config

# %% [markdown]
# ## The data each client holds
# Rows are clients; colours are domains (left) and labels (right).

# %%
dataset = fdata.build(config)
clients = fdata.partition(dataset, config)
viz.plot_partition(fdata.client_counts(clients, dataset, by="domain"), "domains per client")
viz.plot_partition(fdata.client_counts(clients, dataset, by="label"), "labels per client")
plt.show()

# %% [markdown]
# ## Three strategies on the same partition
# `compare` runs each strategy with the same seed, so the clients, their data and
# the initial model are identical; only the aggregation differs.

# %%
table, results = compare(config, strategies=("fedmoe_da", "fedavg", "local"))
print(format_table(table))

# %%
fig, axes, curves = viz.plot_comparison(results)
plt.show()
curves.tail()

# %% [markdown]
# ## Who fetched which experts from whom
# FedMoE-DA's server carries only the backbone, the gates (at refresh rounds)
# and each client's rows of the aggregation matrix A. The expert weights travel
# between peers: here is the last round's peer-to-peer graph.

# %%
fedmoe = next(r for r in results if r.config.strategy == "fedmoe_da")
last = int(fedmoe.history["round"].max())
fig, ax, edges = viz.plot_p2p_graph(fedmoe.ledger, last)
plt.show()
edges.sort_values("bytes", ascending=False).head()

# %% [markdown]
# ## Explore
# Move the slider to see any round's P2P graph (needs a live kernel).

# %%
import ipywidgets as widgets


def show_round(round=last):
    viz.plot_p2p_graph(fedmoe.ledger, round)
    plt.show()


widgets.interact(show_round, round=widgets.IntSlider(value=last, min=1, max=last, step=1));
