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
# The library does the work; this notebook reads what it produces. Before each
# code cell, a few lines say what to look for; after it, what the run showed and
# why. With `SMOKE = True` (the CI run: 4 clients, 2 rounds, a few hundred
# images) nothing has time to learn and the accuracies stay near chance (0.1 for
# ten digits); the mechanisms (who holds what, who sends what to whom) are
# already all there.

# %% tags=["parameters"]
SMOKE = False      # papermill sets True in CI: a tiny run in seconds
ROUNDS = 30
CLIENTS = 20
SEED = 0

# %%
import matplotlib.pyplot as plt
import pandas as pd

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
# Look for **domain skew without label skew**: in the first plot each bar should
# be mostly one colour, the client's home domain; in the second, the ten digits
# should stack in roughly equal slices.

# %%
dataset = fdata.build(config)
clients = fdata.partition(dataset, config)
viz.plot_partition(fdata.client_counts(clients, dataset, by="domain"), "domains per client")
viz.plot_partition(fdata.client_counts(clients, dataset, by="label"), "labels per client")
plt.show()

# %% [markdown]
# The same two tables in numbers: each client's share of images from its home
# domain, and its fewest and most images of any one digit.

# %%
by_domain = fdata.client_counts(clients, dataset, by="domain")
by_label = fdata.client_counts(clients, dataset, by="label")
print(f"domain_purity = {config.domain_purity}")
pd.DataFrame({"images": by_domain.sum(axis=1), "home share": by_domain.max(axis=1) / by_domain.sum(axis=1),
              "fewest of a digit": by_label.min(axis=1), "most of a digit": by_label.max(axis=1)}
             ).describe().loc[["min", "mean", "max"]].round(2)

# %% [markdown]
# The home share averages close to `domain_purity`. The `domain` partition
# cuts every (domain, digit) cell of the training set among the clients in
# proportion to a weight: `domain_purity` for a client's home domain, the rest
# split evenly over the other domains. A client's share is not exactly that
# weight, since the domains differ in size and in how many clients call them
# home. The digits carry no weight of their own, so every cell is cut in the
# same proportions and each client holds about as many of one digit as of
# another. Clients differ by *what their images look like*, not by which digits
# they hold: the setting FedMoE-DA's domain-aware aggregation is built for.

# %% [markdown]
# ## Three strategies on the same partition
# `compare` runs each strategy with the same seed, so the clients, their data and
# the initial model are identical; only the aggregation differs. In the table,
# look at two things: the final accuracy (mean over clients, and the worst 10%
# of them), and the traffic columns (server MB, P2P MB, and their ratio to
# FedAvg's).

# %%
table, results = compare(config, strategies=("fedmoe_da", "fedavg", "local"))
print(format_table(table))
print("final accuracy, best first:", ", ".join(table.sort_values("final_acc", ascending=False)["strategy"]))

# %% [markdown]
# **Traffic** follows from what each strategy sends, whatever the run's length.
# Local sends nothing. FedAvg sends the whole model up and down every round.
# FedMoE-DA's server column is below FedAvg's: its server carries the
# backbone, the gates and each client's rows of A, never an expert. The experts
# travel peer to peer instead, so its P2P column is not zero; with P = 3 each
# expert is averaged with up to three others, and at the defaults the P2P bytes
# outweigh what the server saves, which puts its total above FedAvg's (the last
# ratio column).
#
# **Accuracy** depends on the run's length. In the full run (the defaults: the
# same setup as the README's comparison), FedAvg ends ahead of FedMoE-DA and
# both ahead of Local; FedMoE-DA does not reproduce the paper's claim here. Local
# is last because a hundred or so images are too few to learn ten digits alone.
# One model trained on everybody's images serves four domains well, and
# FedMoE-DA's experts are averaged with peers that are often of other domains:
# the *purity of A* column is the share of each expert's weight on other
# clients that goes to clients of its own home domain, and with the paper's
# gate proxy it is well below 1 (notebook 04 compares it with chance, notebook
# 06 compares more baselines over two seeds). In a smoke run all three are
# still near chance and their order means nothing.

# %% [markdown]
# ## Accuracy and traffic, round by round
# Left: each strategy's mean accuracy per round, the band one standard deviation
# over clients. Right: the cumulative MB, solid for the server's channels,
# dotted for P2P, dashed for their sum. Look at the slopes on the right.

# %%
fig, axes, curves = viz.plot_comparison(results)
plt.show()
curves.tail()

# %% [markdown]
# Every traffic line is close to straight, since each round sends the same
# payloads: FedAvg's exactly (the same model, every client taking part),
# FedMoE-DA's P2P line less so, because A, recomputed every I rounds, decides
# how many remote experts each client fetches. Local's lines lie flat on zero.
# On the left, a wide band means clients far apart: in the full run the
# personalised strategies (FedMoE-DA, Local) have wider bands than FedAvg, whose
# one model is the same for every client (the `± std` of the table above).

# %% [markdown]
# ## Who fetched which experts from whom
# FedMoE-DA's server carries only the backbone, the gates (at refresh rounds)
# and each client's rows of the aggregation matrix A. The expert weights travel
# between peers: here is the last round's peer-to-peer graph. One arrow goes from
# the peer that served to the client that fetched, its width growing with the
# bytes. Look at how many pairs of clients exchanged experts, and how many
# experts each arrow carries (the `experts` column below).

# %%
fedmoe = next(r for r in results if r.config.strategy == "fedmoe_da")
last = int(fedmoe.history["round"].max())
fig, ax, edges = viz.plot_p2p_graph(fedmoe.ledger, last)
plt.show()
edges.sort_values("bytes", ascending=False).head()

# %%
n = config.num_clients
print(f"round {last}: {len(edges)} of the {n * (n - 1)} ordered pairs of clients exchanged experts; "
      f"{edges['experts'].sum()} remote experts fetched, at most {config.P * config.num_experts} per client "
      f"(P x E, more only when correlations tie)")

# %% [markdown]
# Each client fetches only the remote experts that carry weight in its rows of
# A, each distinct (peer, slot) once however many of its rows use it, and its
# own experts cost nothing. So the arrows are the non-zero entries of A between
# clients, and their number is set by P: a larger P means more peers per
# expert, more arrows and more P2P bytes. Which peers a client picks is decided
# by the correlation of gate rows (Eq. 8-9), which does not know the domains;
# notebook 05 colours this graph by home domain to see where the bytes go, and
# notebook 04 shows why same-slot experts of other clients are picked first.

# %% [markdown]
# ## Explore
# Move the slider to see any round's P2P graph (needs a live kernel).

# %%
import ipywidgets as widgets


def show_round(round=last):
    viz.plot_p2p_graph(fedmoe.ledger, round)
    plt.show()


_ = widgets.interact(show_round, round=widgets.IntSlider(value=last, min=1, max=last, step=1))
