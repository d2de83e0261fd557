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
# Twenty clients hold images of the digits 0-9 from four **domains**, four real
# sources with real domain shift (the default dataset, `digit_domains`, built
# offline from files that pip packages ship: see notebook 02 and
# `data/README.md`): `mnist` (handwritten MNIST), `usps` (scikit-learn's 8x8
# handwritten digits upsampled to fill the frame, as USPS), `mnistm` (other
# MNIST digits blended over colour photos, as MNIST-M) and `synth` (digits
# printed in 18 fonts on coloured backgrounds, as SynDigits). Each client has
# one home domain (90% of its hundred or so training images) and balanced
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
# One bar per client, stacked by domain (first plot) and by label (second).

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
