"""Explorers of the data (notebook 02): how each partitioner deals the training samples to clients.

    dataset = data.build(config)
    ex = partition_explorer(dataset, config)    # partitioner, alpha, domain purity, shards -> the partition
    ex.controls["alpha"].value = 10             # redraws: domains and labels per client, skews in the title

A redraw only re-deals the samples (``data.partition``, no training): well under a second.
"""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import data as fdata
from .. import viz
from ..config import PARTITIONS, ConfigError, ExperimentConfig
from ..data.datasets import MultiDomainDataset
from ..widgets import Explorer

KNOBS = {"dirichlet": ("alpha",), "domain": ("purity",), "domain_dirichlet": ("alpha", "purity"),
         "shards": ("shards",), "iid": ()}
"""Which of the explorer's sliders each partitioner reads (the others leave it unchanged)."""


def client_mix(dataset: MultiDomainDataset, config: ExperimentConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples per domain, samples per label) of each client under ``config``'s partition of ``dataset``."""
    clients = fdata.partition(dataset, config)
    return (fdata.client_counts(clients, dataset, by="domain"), fdata.client_counts(clients, dataset, by="label"))


def skew(counts: pd.DataFrame) -> float:
    """How far clients are from the pooled data: the mean over clients of the total variation distance

        TV_k = 1/2 sum_c | n_kc / n_k  -  n_c / n |

    between client k's distribution over the columns (labels or domains) and the pool's. 0: every client
    looks like the pool (iid); close to 1: clients hold disjoint columns. Clients without samples are skipped.
    """
    n = counts.to_numpy(dtype=float)                                   # (N, C)
    sizes = n.sum(axis=1)
    if not (sizes > 0).any():
        raise ValueError("counts holds no samples: at least one client needs one")
    n = n[sizes > 0]
    own = n / n.sum(axis=1, keepdims=True)                             # (N, C) each client's distribution
    pooled = n.sum(axis=0) / n.sum()                                   # (C,)
    return float(0.5 * np.abs(own - pooled).sum(axis=1).mean())


def plot_partition_mix(dataset: MultiDomainDataset, config: ExperimentConfig):
    """Domains and labels per client under ``config``'s partition, its skews in the title (viz's (fig, axes, df))."""
    domains, labels = client_mix(dataset, config)
    knobs = {"alpha": f"alpha={config.alpha:.3g}", "purity": f"purity={config.domain_purity:.2f}",
             "shards": f"shards={config.shards_per_client}"}
    used = ", ".join(knobs[k] for k in KNOBS[config.partition])
    title = (f"{config.partition}{f' ({used})' if used else ''}: label skew {skew(labels):.2f}, "
             f"domain skew {skew(domains):.2f}")
    return viz.plot_client_data(domains, labels, title)


def partition_explorer(dataset: MultiDomainDataset, config: ExperimentConfig) -> Explorer:
    """Partitioner dropdown, alpha (log), domain purity and shards sliders, starting from ``config``'s values."""
    D = len(dataset.domains)
    controls = {
        "partition": widgets.Dropdown(options=list(PARTITIONS), value=config.partition, description="partition"),
        "alpha": widgets.FloatLogSlider(value=config.alpha, base=10, min=-2, max=2, step=0.25, description="alpha"),
        "purity": widgets.FloatSlider(value=config.domain_purity, min=round(1 / D, 2), max=1.0, step=0.05,
                                      description="purity"),
        "shards": widgets.IntSlider(value=config.shards_per_client, min=1, max=10, description="shards"),
    }

    def plot(partition: str, alpha: float, purity: float, shards: int):
        chosen = config.replace(partition=partition, alpha=alpha, domain_purity=purity, shards_per_client=shards)
        try:
            return plot_partition_mix(dataset, chosen)
        except ConfigError as exc:      # e.g. alpha so small that some client gets fewer than min_samples
            fig, ax = plt.subplots(figsize=(8, 1.5))
            ax.text(0.5, 0.5, f"no partition: {exc}", ha="center", va="center", wrap=True, fontsize=9)
            ax.axis("off")
            return fig, ax, pd.DataFrame(columns=["client", "by", "value", "samples"])

    return Explorer(plot, controls, "How a partitioner deals the samples: domains and labels per client")


__all__ = ["KNOBS", "client_mix", "skew", "plot_partition_mix", "partition_explorer"]
