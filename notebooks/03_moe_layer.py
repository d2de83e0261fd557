# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The Mixture-of-Experts layer: router, top-k, dispatch, and where tokens go
#
# Every client's model ends in an MoE layer: a **router** (the *gate*) scores
# each token against E experts, the token visits its top k experts, and their
# outputs are mixed with the renormalised router weights. FedMoE-DA aggregates
# these experts one by one, and uses the gate's rows as their *proxies*
# (notebook 04): so it pays to know exactly what the layer computes.
#
# 1. one layer on a dozen random tokens, every step checked by hand: logits,
#    softmax, top-k, renormalised weights, the output, the two auxiliary losses,
#    the dispatch that groups tokens by expert;
# 2. a trained FedMoE-DA run (the defaults): which experts each domain's test
#    images go to.

# %% tags=["parameters"]
SMOKE = False             # papermill sets True in CI: a tiny run in seconds
FIG_DIR = None            # a folder to save the figures in (None: show only)
RUNS_DIR = "runs/course"  # the trained run is cached here (shared with notebooks 04 and 05)
SEED = 0
TOKENS = 12               # toy layer: tokens, token width, experts, experts per token
D_MODEL = 8
EXPERTS = 4
TOP_K = 2

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

from fedmoe_da import ExperimentConfig, viz
from fedmoe_da.explorers.data import skew
from fedmoe_da.explorers.moe import router_explorer, routing_explorer
from fedmoe_da.figures import save_figure
from fedmoe_da.moe import MoELayer, load_balance_loss, topk_softmax_reference, z_loss
from fedmoe_da.moe.reference import routing_index_reference
from fedmoe_da.results import run_or_load

torch.manual_seed(SEED)
layer = MoELayer(D_MODEL, d_hidden=16, num_experts=EXPERTS, top_k=TOP_K, backend="torch").requires_grad_(False)
x = torch.randn(TOKENS, D_MODEL)          # (T, d): T tokens of width d
y = layer(x)                              # (T, d_out)
layer

# %% [markdown]
# ## The router: logits, softmax, top-k, renormalised weights
# The gate is a linear map without bias, W_g of shape (E, d):
#
# $$\ell = x W_g^\top \in \mathbb{R}^{T \times E}, \qquad p = \operatorname{softmax}(\ell), \qquad
# w_{t,j} = \frac{p_{t, i_{t,j}}}{\sum_{j'} p_{t, i_{t,j'}}}$$
#
# where i_{t,1..k} are the k most probable experts of token t (ties go to the
# lower index). After every forward pass the layer keeps what it decided in
# `layer.routing`; the router's reference function recomputes it from the logits.

# %%
r = layer.routing
logits = x @ layer.gate.weight.T                                   # (T, E)
weights, indices = topk_softmax_reference(logits, TOP_K)           # (T, k), (T, k)
assert torch.allclose(logits, r.logits, atol=1e-6) and torch.equal(indices, r.indices)
assert torch.allclose(weights, r.weights) and torch.allclose(weights.sum(dim=1), torch.ones(TOKENS))
probs = torch.softmax(logits, dim=-1)                              # (T, E)
fig, axes, decision = viz.plot_token_routing(probs, r.weights, r.indices)
plt.show()

# %% [markdown]
# Left, each token's softmax over the experts; right, what is kept: the k
# largest probabilities, rescaled to sum to 1 (zero elsewhere).
#
# ## The output: a weighted sum of k expert MLPs
# Expert e is a two-layer MLP, `act(x W1[e] + b1[e]) W2[e] + b2[e]`, its
# parameters stored stacked so that slice `[e]` of `w1, b1, w2, b2` is the
# expert. By hand, for one token:

# %%
def expert(e, v):
    return layer.activation(v @ layer.w1[e] + layer.b1[e]) @ layer.w2[e] + layer.b2[e]


t = 0
by_hand = sum(r.weights[t, j] * expert(int(r.indices[t, j]), x[t]) for j in range(TOP_K))
print(f"token {t}: experts {r.indices[t].tolist()}, weights {[round(w, 3) for w in r.weights[t].tolist()]}")
print("max |layer - by hand| =", float((y[t] - by_hand).abs().max()))

# %% [markdown]
# ## The auxiliary losses
# **Load balance** (Switch Transformer style, scaled so that a perfect balance
# gives 1): with f_e the share of assignments that went to expert e (summing to
# k) and P_e the mean router probability of e,
#
# $$L_{lb} = \frac{E}{k} \sum_e f_e P_e.$$
#
# Only P_e carries a gradient: minimising it pushes probability away from the
# busy experts. The **z-loss** is the mean of logsumexp(logits)², which keeps
# the logits small. Both come out of every forward pass in `layer.aux_losses`:

# %%
f = torch.bincount(r.indices.reshape(-1), minlength=EXPERTS).float() / TOKENS   # (E,) sums to k
P = probs.mean(dim=0)                                                          # (E,)
by_hand = {"load_balance": float(EXPERTS / TOP_K * (f * P).sum()),
           "z_loss": float(torch.logsumexp(logits, dim=-1).pow(2).mean())}
pd.DataFrame({"layer": {k: float(v) for k, v in layer.aux_losses.items()}, "by hand": by_hand})

# %% [markdown]
# A router that sends every token to the same experts pays for it: tilt every
# token towards expert 0 and the load-balance loss climbs towards its maximum
# E/k.

# %%
tilted = x + 3.0 * layer.gate.weight[0] / layer.gate.weight[0].norm()         # (T, d) all lean to expert 0
lt = tilted @ layer.gate.weight.T
_, lt_idx = topk_softmax_reference(lt, TOP_K)
lb, lb_tilted = load_balance_loss(probs, r.indices, EXPERTS), load_balance_loss(torch.softmax(lt, -1), lt_idx, EXPERTS)
print(f"load balance: random tokens {float(lb):.3f}, tilted tokens {float(lb_tilted):.3f} (max {EXPERTS / TOP_K:g}); "
      f"z-loss {float(z_loss(logits)):.3f} -> {float(z_loss(lt)):.3f}")

# %% [markdown]
# ## Dispatch: tokens grouped by expert
# With T tokens and k choices there are T·k *assignments*. The sort-based
# dispatch orders them by expert (stable, so by token within an expert), runs
# each expert once on its contiguous block of rows, and sums the results back
# with the weights. `routing_index_reference` says where every assignment goes:
# `counts` per expert, `offsets` of each expert's block, and for every permuted
# row the token it came from.

# %%
index = routing_index_reference(r.indices, EXPERTS)
start, end = index.offsets[:-1].tolist(), index.offsets[1:].tolist()
pd.DataFrame({"assignments": index.counts.tolist(), "rows": [f"{a}..{b - 1}" for a, b in zip(start, end)],
              "tokens": [index.token_of[a:b].tolist() for a, b in zip(start, end)]},
             index=pd.Index(range(EXPERTS), name="expert"))

# %% [markdown]
# Three backends compute the same thing: `torch` (this sort-based reference),
# `dense` (every expert on every token, masked: one batched matmul, which wins
# on small CPU problems) and `triton` (the sort-based ops as GPU kernels).
# `auto` picks one by device and size. With a **capacity** (at most
# ceil(factor · T · k / E) assignments per expert) the overflow is dropped and
# counted.

# %%
outputs = {}
for backend in ("torch", "dense"):
    layer.backend = backend
    outputs[backend] = layer(x)
print("max |torch - dense| =", float((outputs["torch"] - outputs["dense"]).abs().max()))
layer.backend, layer.capacity_factor = "torch", 0.5
layer(x)
print(f"capacity {layer.capacity(TOKENS)} per expert: {layer.routing.dropped} of {TOKENS * TOP_K} assignments dropped")
layer.capacity_factor = None

# %% [markdown]
# Try the router yourself: k, and a scale on the logits (a sharper or flatter
# softmax; the load balance and the z-loss are in the title). Needs a live kernel.

# %%
router_explorer(seed=SEED, tokens=TOKENS, d_model=D_MODEL, num_experts=EXPERTS)

# %% [markdown]
# ## In a trained model: where each domain's images go
# The default run: 20 clients, each with one home domain of `digit_domains`,
# FedMoE-DA for 30 rounds, a CNN whose last layer is an MoE head with 8
# experts, top-2, one token per image. It is cached in `RUNS_DIR` and shared
# with notebooks 04 and 05 (about a minute the first time).
#
# Every round the history records, per client, how many of its test images
# each expert received (`routed_l0_e{e}`: k assignments per image). Summed
# over the clients of each home domain:

# %%
config = ExperimentConfig(seed=SEED, progress=False)
if SMOKE:
    result = run_or_load(config.smoke())
else:
    result = run_or_load(config.replace(out=f"{RUNS_DIR}/fedmoe_da_default", progress=False))
print(f"{result.config.strategy}: final personalised accuracy {result.summary['final_acc_mean']:.3f}")
fig, ax, by_domain = viz.plot_routing_by_domain(result.history, result.clients)
save_figure(fig, by_domain, "fig03_routing_by_domain", FIG_DIR, params={"round": int(result.history["round"].max())},
            seeds=[SEED])
plt.show()

# %% [markdown]
# Each client has its own gate and its own experts: slot e of one client is
# only *tied* to slot e of another through the shared initialisation and the
# aggregation (which, with the gate proxy, mostly mixes the same slot across
# clients: notebook 04). So the per-client picture matters as much as the sum:

# %%
fig, ax, per_client = viz.plot_routing(result.history, clients=result.clients)
plt.show()

# %% [markdown]
# Two numbers say how domain-specific the routing is: the skew between domains
# (how far each domain's routing is from the pooled routing: 0 if all domains
# route alike) and, for comparison, the same skew among the clients of one
# domain, averaged over domains. Experts that receive no test image at all are
# *dead*: the default `lb_coef` is 0 (the load-balance loss cost FedMoE-DA
# accuracy in `benchmarks/method_study.py`), so nothing keeps every expert busy.

# %%
last = result.history[result.history["round"] == result.history["round"].max()]
tokens = by_domain.pivot(index="domain", columns="expert", values="tokens")
cols = [c for c in last.columns if c.startswith("routed_l0_")]
within = [skew(last[last["client"].isin(result.clients.loc[result.clients["home_domain_name"] == d, "client"])][cols])
          for d in tokens.index]
print(f"routing skew between domains {skew(tokens):.3f}; among the clients of a domain {sum(within) / len(within):.3f}")
print("dead experts (no test image, any client):", [e for e in tokens.columns if tokens[e].sum() == 0])
busiest = per_client.apply(lambda shares: shares.nlargest(TOP_K).sum(), axis=1)   # (N,) share on its top-k experts
print(f"share of a client's assignments on its {TOP_K} busiest experts: min {busiest.min():.2f}, "
      f"median {busiest.median():.2f}")

# %% [markdown]
# In the default run the clients of one domain differ more from each other than
# the domains do, and every client sends most of its images to the same two
# experts (a share of 0.5 is the most one expert can get with top-2): the
# router separates *clients* more than *domains*, and images hardly at all.
# The gates never leave their client (FedMoE-DA uploads them only as proxies),
# so each drifts its own way from the shared initialisation. Notebook 04 shows
# what this means for the gate rows used as proxies.

# %% [markdown]
# ## Explore
# Pick a home domain to see its clients one by one (or all domains, one row
# each) and move through the rounds. Needs a live kernel.

# %%
routing_explorer(result)
