# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · The aggregation matrix A, step by step (Eq. 8-10)
#
# FedMoE-DA does not average experts slot by slot. It puts every expert of every
# client into one **pool** (M = N x E pairs *i* = (client, slot)), describes
# each by a **proxy** (the paper's: its row of the client's gate), and
# aggregates each expert with the P experts whose proxies are most correlated
# with its own:
#
# $$\text{(8)}\;\; R_{ij} = \cos(\pi_i, \pi_j) \qquad
# \text{(9)}\;\; S_i = \{j : R_{ij} \ge \text{the } (P{+}1)\text{-th largest of row } i\} \qquad
# \text{(10)}\;\; a_{ij} = \frac{e^{R_{ij}/\tau}}{\sum_{l \in S_i} e^{R_{il}/\tau}} \;\text{for } j \in S_i$$
#
# and then (Eq. 11) θ_i ← Σ_j a_ij θ_j, the peers' experts fetched peer to peer.
# The server only ever sees the gates. If proxies of the same domain correlate,
# A is *domain-aware*: an expert learns from experts that serve the same kind
# of data.
#
# Here every step runs on the real proxies of the default FedMoE-DA run (the
# one notebook 03 trained; its run folder keeps, for every refresh round, A,
# the uploaded gates behind it and the pool), through the dense reference
# functions of `fedmoe_da/fl/aggregation.py`: one line per equation, with the
# equation written above it, to read beside the paper. The run itself uses
# `fl/aggregation_scaled.py` (row blocks, a sparse A), tested against them.

# %% tags=["parameters"]
SMOKE = False             # papermill sets True in CI: a tiny run in seconds
FIG_DIR = None            # a folder to save the figures in (None: show only)
RUNS_DIR = "runs/course"  # the trained run is cached here (shared with notebooks 03 and 05)
SEED = 0
ROW = 0                   # the pool pair whose row of A is followed step by step
SWEEP_P = [1, 2, 3, 5, 7, 10, 15, 20, 30, 40]   # P values of the purity sweep

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

from fedmoe_da import ExperimentConfig, viz
from fedmoe_da.explorers.matrix import (
    PROXIES,
    describe,
    home_domains,
    matrix_explorer,
    plot_matrix_by_domain,
    proxies_of,
    purity_sweep,
    refresh_rounds,
    saved_gates,
)
from fedmoe_da.figures import save_figure
from fedmoe_da.fl.aggregation import TIE_TOLERANCE, aggregation_matrix, correlation, selection, softmax_weights
from fedmoe_da.fl.diagnostics import matrix_diagnostics
from fedmoe_da.fl.run_folder import matrix_key
from fedmoe_da.models.names import matrix_group
from fedmoe_da.results import run_or_load

config = ExperimentConfig(seed=SEED, progress=False)
if SMOKE:
    result = run_or_load(config.smoke().replace(num_clients=8))   # two clients per domain
    SWEEP_P = [p for p in SWEEP_P if p < 8 * result.config.num_experts]
else:
    result = run_or_load(config.replace(out=f"{RUNS_DIR}/fedmoe_da_default", progress=False))
cfg = result.config
E, homes = cfg.num_experts, home_domains(result)
rounds = refresh_rounds(result)
last = rounds[-1]
gates, pool = saved_gates(result, last)             # (M, d): the gates uploaded at the last refresh
M = gates.shape[0]
print(f"proxy={cfg.proxy}, P={cfg.P}, tau={cfg.tau}, refreshed every I={cfg.I} round(s): {len(rounds)} refreshes; "
      f"pool of {len(pool)} clients x {E} experts = {M} pairs, proxies of width {gates.shape[1]}")

# %% [markdown]
# ## Eq. 8: R, the correlation of every proxy with every other
# Rows and columns are sorted by the home domain of each pair's client (the
# server does not know domains; we sort only to see whether R does).

# %%
R = correlation(gates)                              # Eq. 8: (M, M), R_ii = 1
fig, ax, _ = plot_matrix_by_domain(R, pool, E, result.clients, "R = cos(gate row i, gate row j)", cmap="viridis")
plt.show()

# %% [markdown]
# The diagonal stripes are the **slots**: all clients start from one gate
# initialisation, so row e of one client's gate still points where row e of
# every other client's gate does. Averaged by kind of pair:

# %%
client = torch.tensor(pool).repeat_interleave(E)                  # (M,) client of each pair
slot = torch.arange(E).repeat(len(pool))                          # (M,) slot of each pair
home = torch.tensor([homes[k] for k in pool]).repeat_interleave(E)
off = client[:, None] != client[None, :]                          # pairs of two different clients
kinds = {"same slot, same domain": (slot[:, None] == slot) & (home[:, None] == home),
         "same slot, other domain": (slot[:, None] == slot) & (home[:, None] != home),
         "other slot, same domain": (slot[:, None] != slot) & (home[:, None] == home),
         "other slot, other domain": (slot[:, None] != slot) & (home[:, None] != home)}
pd.Series({name: float(R[mask & off].mean()) for name, mask in kinds.items()}, name="mean R_ij").round(3)

# %% [markdown]
# In the default run, sharing a slot raises the correlation far more than
# sharing a domain: the gate rows remember their initialisation more than the
# data that moved them. Eq. 9 will therefore pick mostly the same slot of other
# clients, and among those, the clients whose gates drifted alike.

# %% [markdown]
# ## Eq. 9: each row keeps itself and its P best-correlated peers
# Follow one row. The threshold is the (P+1)-th largest value of the row (the
# row contains R_ii = 1 itself); everything within `TIE_TOLERANCE` of it is kept.

# %%
P, tau = cfg.P, cfg.tau
assert cfg.min_correlation is None, "the references are Eq. 9 as published, without the zero-correlation guard"
S = selection(R, P)                                 # Eq. 9: (M, M) bool
A = softmax_weights(R, S, tau)                      # Eq. 10: (M, M), rows sum to 1
row = R[ROW]
threshold = float(row.topk(min(P + 1, M)).values[-1])
order = torch.argsort(row, descending=True)[:P + 4]
names = result.clients.set_index("client")["home_domain_name"]
pd.DataFrame({"client": client[order].tolist(), "slot": slot[order].tolist(),
              "domain": [names[int(k)] for k in client[order]], "R": row[order].numpy().round(4),
              "R >= threshold - TIE_TOLERANCE": (row[order] >= threshold - TIE_TOLERANCE).tolist(),
              "kept (Eq. 9)": S[ROW, order].tolist(),
              "a (Eq. 10)": A[ROW, order].numpy().round(4)}, index=pd.Index(order.tolist(), name="j"))

# %% [markdown]
# **Ties.** Eq. 9 keeps *every* value equal to the threshold, so a row can hold
# more than P + 1 entries. With real-valued gate rows ties are rare; with the
# domain proxy (one-hot domain next to one-hot slot: R is 1, 0.5 or 0) they are
# the rule, and one more P can add dozens of peers at once:

# %%
def nnz_per_row(proxies, p):
    return float((aggregation_matrix(proxies, p, tau) > 0).sum(dim=1).float().mean())


oracle = proxies_of("domain", gates, pool, E, homes)             # (M, D + E)
pd.DataFrame([{"P": p, "non-zeros per row, gate": nnz_per_row(gates, p),
               "non-zeros per row, domain": nnz_per_row(oracle, p)} for p in (1, 3, 4, 5, 8)]).set_index("P")

# %% [markdown]
# ## Eq. 10: a softmax over the kept peers, at temperature tau
# R lies in [-1, 1], so tau sets how much a better correlation counts: a small
# tau gives nearly all weight to the best-correlated entry (the expert itself,
# R_ii = 1); a large tau spreads it evenly over the P + 1 kept entries.

# %%
kept = torch.argsort(row, descending=True)[:P + 1]
pd.DataFrame({f"tau={t:g}": aggregation_matrix(gates, P, t)[ROW, kept].numpy()
              for t in (0.01, 0.03, 0.1, 0.3, 1.0, 10.0)},
             index=pd.Index([f"j={j} (R={float(row[j]):.3f})" for j in kept], name=f"row {ROW}")).round(3)

# %% [markdown]
# ## A, as the server computed it
# Eq. 8-10 of the references on the saved gates give back the A the run used
# (the run keeps A's weights in float32: equal to that rounding). From here on
# we read the run's own A. Sorted by domain, a domain-aware A would be
# block-diagonal.
# `matrix_diagnostics` says how close it is: its **domain purity** is the share
# of each row's weight on *other clients* that goes to clients of the row's own
# home domain, against the **chance** level a domain-blind A would get.

# %%
run_A = torch.as_tensor(result.matrices[matrix_key(last, matrix_group(0))])       # (M, M) float32
torch.testing.assert_close(A, aggregation_matrix(gates, P, tau))                 # Eq. 8-10 in one call
torch.testing.assert_close(A.float(), run_A, rtol=0, atol=1e-7)
A = run_A
diag = matrix_diagnostics(A, pool, E, homes)
fig, ax, A_sorted = plot_matrix_by_domain(A, pool, E, result.clients,
                                          f"A ({cfg.proxy}, P={P}, tau={tau:g}, round {last})\n{describe(diag)}")
save_figure(fig, A_sorted.rename_axis("pair").reset_index(), "fig04_matrix_by_domain", FIG_DIR,   # pair: client:slot
            params={"round": last, "P": P, "tau": tau, "proxy": cfg.proxy}, seeds=[SEED])
plt.show()
pd.Series(diag).round(3)

# %% [markdown]
# Where does each domain's weight on other clients go? Rows: the home domain of
# the row's client; columns: the home domain of the peer; each row sums to 1.

# %%
pair_domain = [names[int(k)] for k in client]                     # (M,) in A's row order
inter = pd.DataFrame(A.masked_fill(client[:, None] == client[None, :], 0.0).numpy(),
                     index=pair_domain, columns=pair_domain)     # weight on other clients only
flow = inter.T.groupby(level=0, sort=False).sum().T.groupby(level=0, sort=False).sum()
flow.div(flow.sum(axis=1), axis=0).round(2)

# %% [markdown]
# In the default run nearly all the off-diagonal weight stays on the **same
# slot** of other clients (`same_slot_share`), A is domain-aware (purity well
# above chance) but far from block-diagonal, and the weight that leaves a
# domain goes mostly to the domain that looks most alike: `mnist` and `usps`
# (grey digits on black) exchange weight, as do `mnistm` and `synth` (colour
# images).
#
# How purity evolved during the run (the run's own diagnostics, one point per refresh):

# %%
fig, ax, over_rounds = viz.plot_purity(result.aggregation.assign(proxy=cfg.proxy), x="round")
plt.show()

# %% [markdown]
# ## The paper's gate proxy next to the others
# The run folder keeps the gates, so A can be rebuilt with other proxies
# (`config.proxy`; `fl/proxies.py`):
#
# * `gate`: the raw gate row (the paper);
# * `gate_centred`: each row minus its slot's mean over the pool's clients,
#   which removes what every client shares slot by slot (the initialisation);
# * `gate_signature`: the client's whole centred gate as a fingerprint, next
#   to a one-hot slot: the same slot of clients whose gates moved alike;
# * `domain`: the oracle (one-hot home domain and slot); the server never knows
#   domains, so it is an upper bound for teaching, not a method.
#
# Domain purity of A against P for each proxy, at the run's tau and on the same
# uploaded gates (the dashed line: chance):

# %%
sweep = purity_sweep(result, SWEEP_P, [tau], PROXIES, last)
fig, ax, drawn = viz.plot_purity(sweep[["proxy", "P", "tau", "domain_purity", "purity_chance"]], x="P", hue="proxy")
save_figure(fig, drawn, "fig04_purity", FIG_DIR, params={"round": last, "tau": tau, "P": SWEEP_P}, seeds=[SEED])
plt.show()
sweep.pivot(index="P", columns="proxy", values="domain_purity").round(3)

# %% [markdown]
# In the default run the paper's gate proxy is purest at the smallest P and
# loses purity as P grows (the extra peers come from any domain);
# `gate_centred` is purer at moderate P, `gate_signature` stays level, and all
# three stay far below the oracle. Purity is only half the story: the same sweep
# says where each proxy's off-diagonal weight goes (other slots of the same
# client, the same slot of other clients), and how much each expert keeps of
# itself. Centring by slot removes the stripes of R, so `gate_centred` spends
# much of its weight on the client's *own* other experts: they cost no P2P
# traffic, but they were trained on the inputs routed to other slots.

# %%
sweep[sweep["P"] == P].set_index("proxy")[["domain_purity", "purity_chance", "self_weight", "same_slot_share",
                                           "intra_client_share", "nnz_per_row"]].round(3)

# %% [markdown]
# ## Explore
# Move P and tau, or switch the proxy: A is recomputed on the run's uploaded
# gates (last refresh) and redrawn sorted by domain, its purity in the title.
# Needs a live kernel.

# %%
matrix_explorer(result)
