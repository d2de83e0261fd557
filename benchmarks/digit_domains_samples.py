"""The figure of samples per domain of the embedded digit domains (one row per domain, one digit per class).

    python benchmarks/digit_domains_samples.py [--out benchmarks/results/digit_domains]

Writes samples.png and samples.csv (which image of which domain and class is drawn where).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from fedmoe_da.data.digit_domains import load_digit_domains  # noqa: E402
from fedmoe_da.viz import plot_domain_samples  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/digit_domains")
    parser.add_argument("--cache-dir", default="data")
    args = parser.parse_args()
    data = load_digit_domains(args.cache_dir)
    fig, _, df = plot_domain_samples(data.x, data.y, data.domain, data.names, per_domain=10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "samples.png", dpi=110, bbox_inches="tight")
    df.to_csv(out / "samples.csv", index=False)
    print(f"wrote {out / 'samples.png'} and {out / 'samples.csv'}")


if __name__ == "__main__":
    main()
