"""The data each client holds (notebooks 01, 02): sample images per domain, samples per client by domain and label."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def plot_partition(counts: pd.DataFrame, title: str = "samples per client",
                   kind: str = "bar") -> tuple[plt.Figure, plt.Axes, pd.DataFrame]:
    """A client x (label or domain) count table (from ``data.client_counts``): stacked bars or a heatmap."""
    if kind not in ("bar", "heatmap"):
        raise ValueError(f"kind={kind!r} is invalid: must be 'bar' or 'heatmap'")
    if kind == "heatmap":
        fig, ax = plt.subplots(figsize=(max(4, 0.45 * counts.shape[1] + 2), max(3, 0.22 * len(counts) + 1)))
        sns.heatmap(counts, ax=ax, cmap="Blues", annot=len(counts) * counts.shape[1] <= 240, fmt="d",
                    cbar_kws={"label": "samples"})
        ax.set(title=title)
    else:
        fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(counts)), 3.5))
        counts.plot.bar(stacked=True, ax=ax, width=0.85, colormap="tab10")
        ax.set(xlabel="client", ylabel="samples", title=title)
        ax.legend(title=counts.columns.name, bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig, ax, counts


def plot_domain_samples(x, y, domain, names, per_domain: int = 10) -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """One row per domain, ``per_domain`` samples in it, cycling through the classes (column j shows
    class ``j % n_classes``, the first unused sample of it). x: (n, C, H, W) in [0, 1], C = 1 or 3."""
    x, y, domain = (np.asarray(a) for a in (x, y, domain))
    classes = np.unique(y)
    fig, axes = plt.subplots(len(names), per_domain, figsize=(0.9 * per_domain, 1.0 * len(names)), squeeze=False)
    rows = []
    for k, name in enumerate(names):
        for j in range(per_domain):
            c = classes[j % len(classes)]
            idx = np.flatnonzero((domain == k) & (y == c))
            ax = axes[k, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j // len(classes) < len(idx):
                i = int(idx[j // len(classes)])
                img = x[i].transpose(1, 2, 0)                    # (H, W, C)
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
                ax.set_title(str(c), fontsize=8)
                rows.append({"domain": name, "label": int(c), "index": i, "row": k, "col": j})
        axes[k, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig, axes, pd.DataFrame(rows, columns=["domain", "label", "index", "row", "col"])


def plot_client_data(domains: pd.DataFrame, labels: pd.DataFrame,
                     title: str = "") -> tuple[plt.Figure, np.ndarray, pd.DataFrame]:
    """Two heatmaps side by side, clients as rows: training samples per domain (left) and per label (right).

    domains, labels: ``data.client_counts(..., by="domain")`` and ``by="label"``. df is tidy: one row per
    (client, by, value) with its sample count, domains first."""
    fig, axes = plt.subplots(1, 2, figsize=(3 + 0.5 * (domains.shape[1] + labels.shape[1]),
                                            max(3, 0.22 * len(domains) + 1.2)),
                             gridspec_kw={"width_ratios": [domains.shape[1] + 1, labels.shape[1] + 1]}, sharey=True)
    parts = []
    for ax, counts in zip(axes, (domains, labels)):
        sns.heatmap(counts, ax=ax, cmap="Blues", annot=counts.size <= 240, fmt="d", annot_kws={"fontsize": 7},
                    cbar=False, vmin=0)
        ax.set(title=f"samples per {counts.columns.name}", xlabel=counts.columns.name)
        parts.append(counts.rename_axis(columns="value").stack().rename("samples").reset_index()
                     .assign(by=counts.columns.name))
    axes[1].set_ylabel("")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    df = pd.concat(parts, ignore_index=True)[["client", "by", "value", "samples"]]
    return fig, axes, df
