"""How far apart are the four digit domains? Train on one, test on each.

A multinomial logistic regression on raw pixels (3x28x28) is trained on 80% of one
domain and tested on the held-out 20% of every domain (stratified, seeded). The
diagonal is in-domain accuracy, the rest is what a model loses under domain shift.
Also: how well a nearest-centroid classifier tells the domains apart.

    python benchmarks/digit_domains_shift.py [--cache-dir data]     # a few minutes on 2 cores
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestCentroid

from fedmoe_da.data.digit_domains import build_digit_domains, load_digit_domains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="load/cache here (default: build, no cache)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = load_digit_domains(args.cache_dir) if args.cache_dir else build_digit_domains()
    print(f"{'loaded' if args.cache_dir else 'built'} in {time.perf_counter() - t0:.1f} s; samples per domain x label:")
    print(data.counts().to_string(), "\n")

    X = data.x.reshape(len(data.y), -1)                          # (n, 2352)
    strata = data.domain * 10 + data.y
    tr, te = train_test_split(np.arange(len(data.y)), test_size=0.2, stratify=strata, random_state=args.seed)
    acc = pd.DataFrame(index=pd.Index(data.names, name="train on"), columns=pd.Index(data.names, name="test on"),
                       dtype=float)
    for i, src in enumerate(data.names):
        fit = tr[data.domain[tr] == i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LogisticRegression(max_iter=300, C=0.1).fit(X[fit], data.y[fit])
        for j, dst in enumerate(data.names):
            test = te[data.domain[te] == j]
            acc.loc[src, dst] = clf.score(X[test], data.y[test])
    print("logistic regression on raw pixels, accuracy (train domain x test domain):")
    print(acc.round(3).to_string(), "\n")

    nc = NearestCentroid().fit(X[tr], data.domain[tr])
    print(f"nearest-centroid domain classifier on raw pixels: accuracy {nc.score(X[te], data.domain[te]):.3f}")


if __name__ == "__main__":
    main()
