# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Peer to peer: who fetches what from whom, and what it costs
#
# In FedMoE-DA the server never carries an expert. Every round it averages the backbone (FedAvg), collects
# the gates, recomputes the aggregation matrix A and sends each client **its rows of A**: for each of its
# expert slots, which (peer, slot) experts to average with and with what weights. The client then fetches
# those experts **from the peers themselves**, each distinct remote expert once however many of its rows use
# it, and applies Eq. 11 locally.
#
# Every transfer of a run is one row of its **ledger**: `round, src, dst, channel, group, numel, bytes,
# accepted`, with channel `server-up` (client to server), `server-down` (server to client) or `p2p`
# (client to client), and `src`/`dst` = -1 for the server. This notebook reads the ledger of a trained
# FedMoE-DA run on the defaults (20 clients, one home digit domain each, 30 rounds, P = 3, I = 1) and of a
# FedAvg run on the same partition; notebooks 03 and 04 use the same runs, so they are trained once.

# %% tags=["parameters"]
SMOKE = False               # papermill sets True in CI: tiny runs in seconds
FIG_DIR = None              # a folder: save this notebook's paper figures there
RUNS_DIR = "runs/course"    # finished runs are cached here and read back by the next notebook
SEED = 0

# %%
import tempfile

import matplotlib.pyplot as plt
import torch

from fedmoe_da import ExperimentConfig, results, viz
from fedmoe_da.explorers.p2p import p2p_explorer
from fedmoe_da.figures import save_figure
from fedmoe_da.fl import InProcessTransport, simulate
from fedmoe_da.fl.run_folder import RunFolder, matrix_key
from fedmoe_da.models.names import expert_group, group_kind, matrix_group, pool_key

if SMOKE:
    fedmoe = results.run_or_load(ExperimentConfig(seed=SEED, progress=False).smoke())
    fedavg = results.run_or_load(ExperimentConfig(strategy="fedavg", seed=SEED, progress=False).smoke())
else:
    fedmoe = results.run_or_load(
        ExperimentConfig(seed=SEED, progress=False).replace(out=f"{RUNS_DIR}/fedmoe_da_default"))
    fedavg = results.run_or_load(ExperimentConfig(strategy="fedavg", seed=SEED, progress=False)
                                 .replace(out=f"{RUNS_DIR}/fedavg_default"))
ledger, clients = fedmoe.ledger, fedmoe.clients
config = fedmoe.config.replace(out=None).to_dict()     # what the figures record beside their data
last = int(fedmoe.history["round"].max())
ledger.head(10)

# %% [markdown]
# ## What travels on which channel
# The groups are the model's parameter groups (`backbone`, `gate[l]`, `expert[l][e]`) and the rows of A
# (`A[l]`). MB per channel and kind of group over the whole run:

# %%
(ledger.assign(kind=ledger["group"].map(group_kind))
 .pivot_table(index="kind", columns="channel", values="bytes", aggfunc="sum", fill_value=0) / 1e6).round(3)

# %% [markdown]
# The backbone goes up and down through the server every round, gates go up at every refresh and the rows of
# A come down, small next to the backbone. The experts only ever travel peer to peer.
#
# How many remote experts does a client fetch per round? With E experts per layer and P = 3, each of its
# slots is averaged with 3 others, so about 3E distinct remote experts at most (more only when correlations
# tie at the threshold of Eq. 9, since ties are kept); fewer when two of its slots pick the same peer's
# expert, or pick one of the client's own experts (which costs nothing).

# %%
p2p = ledger[(ledger["channel"] == "p2p") & ledger["accepted"]]
fetched = p2p.groupby(["round", "dst"]).size()
print(f"E = {fedmoe.config.num_experts}, P = {fedmoe.config.P}: P x E = {fedmoe.config.P * fedmoe.config.num_experts}; "
      f"remote experts fetched per client and round: {fetched.mean():.1f} on average "
      f"(min {fetched.min()}, max {fetched.max()})")

# %% [markdown]
# ## One round's graph, laid out by home domain
# Each client is a node, coloured by its home domain; the clients of a domain sit together. An arrow
# goes from the peer that served experts to the client that fetched them, one per pair with the bytes
# summed, its width and opacity growing with the bytes. Arrows inside a domain take its colour, arrows across
# domains are grey: if the gate proxies found the domains, most traffic would stay inside the clusters.

# %%
fig, ax, edges = viz.plot_p2p_graph(ledger, last, clients=clients)
save_figure(fig, edges, "fig05_p2p_graph", FIG_DIR, params=config, seeds=[SEED])
plt.show()

# %% [markdown]
# The same round summed by domain pair: rows are the domains that served, columns the domains that fetched.

# %%
by_domain = edges.pivot_table(index="src_domain", columns="dst_domain", values="bytes", aggfunc="sum", fill_value=0)
(by_domain / 1e6).round(3)

# %% [markdown]
# ## The whole run as a matrix
# At 20 clients a graph of every round at once is a hairball; a matrix of MB per (peer, client) pair, clients
# ordered by home domain, reads better: traffic within a domain is the diagonal blocks, and a dark block off the
# diagonal is a pair of domains whose gates the proxy finds alike.

# %%
fig, ax, pairs = viz.plot_p2p_matrix(ledger, clients)
save_figure(fig, pairs, "fig05_p2p_matrix", FIG_DIR, params=config, seeds=[SEED])
plt.show()
within = pairs.loc[pairs["src_domain"] == pairs["dst_domain"], "MB"].sum() / pairs["MB"].sum()
same_domain = clients.groupby("home_domain").size()
chance = ((same_domain * (same_domain - 1)).sum() / (len(clients) * (len(clients) - 1)))
print(f"{within:.0%} of the P2P bytes stay within a home domain; a peer drawn at random is from the same "
      f"domain {chance:.0%} of the time")

# %% [markdown]
# ## The trade-off against FedAvg
# FedAvg sends every whole model up and down through the server. FedMoE-DA takes the experts off the server,
# but the experts still travel, peer to peer, and more of them: each slot is averaged with P = 3 peers'
# experts, where FedAvg's download is one averaged copy per slot. So the server's load falls and the total
# traffic rises. Above each bar: its server and total MB as a multiple of FedAvg's.

# %%
fig, ax, channels = viz.plot_channel_bytes([fedmoe, fedavg])
save_figure(fig, channels, "fig05_channel_bytes", FIG_DIR, params=config, seeds=[SEED])
plt.show()
channels.pivot(index="strategy", columns="channel", values="MB").round(1)

# %% [markdown]
# Per round, the channels of the FedMoE-DA run (with I = 1 every round is a refresh round, so every round
# looks alike; notebook 07 sweeps I and the schedule):

# %%
per_round = ledger.pivot_table(index="round", columns="channel", values="bytes", aggfunc="sum", fill_value=0) / 1e6
ax = per_round.plot(marker=".", figsize=(6, 3.2), ylabel="MB per round", title="FedMoE-DA: MB per round and channel")
plt.show()

# %% [markdown]
# ## Eq. 11 by hand, for one expert of one client
# What a client does with its rows of A is the paper's Eq. 11, theta_i <- sum_j a_ij theta_j, over the
# experts *as they were after local training* (before anyone applied Eq. 11). The run computes it in
# `fl/aggregation_scaled.py` (two sparse products over many clients at once); here we redo it for one expert
# with a plain sum and check that it gives what the run did. A short run (smoke sizes, two rounds) records,
# through a transport that keeps a copy of every expert that travels peer to peer, the pre-Eq. 11 experts;
# its A is in `matrices`, its final states in its checkpoint.

# %%
class Recorder(InProcessTransport):
    """The in-process transport, keeping each P2P expert as sent: (round, peer, group) -> {tensor: (...)}."""

    def __init__(self):
        super().__init__()
        self.sent = {}

    def send_stacked(self, round, channel, batch, screen=None):
        for t, (src, group) in enumerate(zip(batch.src, batch.group)):
            self.sent[(round, src, group)] = {n: v[t].clone() for n, v in batch.tensors.items()}
        return super().send_stacked(round, channel, batch, screen)


short_dir = tempfile.mkdtemp()
recorder = Recorder()
short = simulate(ExperimentConfig(seed=SEED, progress=False).smoke().replace(out=short_dir), transport=recorder)
rnd, E = int(short.history["round"].max()), short.config.num_experts
A_last = torch.as_tensor(short.matrices[matrix_key(rnd, matrix_group(0))])        # (M, M): the last round's A
pool = short.matrices[matrix_key(rnd, pool_key(0))].tolist()                      # A's row order: (client, slot)
after = RunFolder(short_dir).load_checkpoint()["states"]                          # every client after the run

# the pre-Eq. 11 expert of every (peer, slot) that someone fetched in the last round
before = {(src, group): tensors for (r, src, group), tensors in recorder.sent.items() if r == rnd}
# one expert i = (k, e) whose row's sources all travelled (its own expert too: some peer fetched it)
i = next(i for i in range(len(pool) * E)
         if all((pool[j // E], expert_group(0, j % E)) in before for j in torch.nonzero(A_last[i]).flatten().tolist()))
k, e = pool[i // E], i % E
for name in before[(k, expert_group(0, e))]:
    # Eq. 11: theta_i <- sum_j a_ij theta_j
    by_hand = sum(float(A_last[i, j]) * before[(pool[j // E], expert_group(0, j % E))][name].double()
                  for j in torch.nonzero(A_last[i]).flatten().tolist())
    ran = after[k][name][e].double()
    print(f"client {k}, slot {e}, {name}: max |by hand - run| = {float((by_hand - ran).abs().max()):.2e}")
    torch.testing.assert_close(by_hand, ran, rtol=1e-5, atol=1e-6)

# %% [markdown]
# ## Explore
# Walk the rounds with the slider; the graph keeps its layout, so you can watch the traffic move (needs a
# live kernel; nothing is re-trained).

# %%
p2p_explorer(fedmoe)
