"""Does a rerun reproduce a committed comparison? Within its band for accuracies, byte for byte for integer data.

    python -m fedmoe_da.reproduce results/compare/comparison.csv RERUN/comparison.csv

Over 30 rounds of Adam with top-2 routing, the rounding of one CPU's vector kernels against another's flips
near-tied routes and moves a run's accuracy by a few points: a single seed is one machine's draw. A committed
comparison therefore averages ``s`` seeds, and its ``seed_std`` (the std over seeds of a strategy's final
mean accuracy) sets the band a rerun on another machine must fall in:

    |rerun - committed| <= BAND_SE * sqrt(2 / s) * max(seed_std, MIN_SEED_STD)

``sqrt(2 / s) * seed_std`` is the standard error of the difference of two means of ``s`` seeds; BAND_SE = 3
of them. Three seeds can agree by chance, and one CPU's kernels against another's move a single run about as
much as a change of seed does, so the std is never taken below MIN_SEED_STD, the spread measured between
machines (README, "How far results move between machines").

Integer data that does not depend on rounding is compared exactly: the number of seeds and the server bytes
(every server channel moves whole, fixed groups; MB = bytes / 1e6, averaged over seeds). The peer-to-peer
bytes are integers too, but which peers a client fetches from follows near-tied correlations: they are
compared within P2P_REL of the committed value.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

BAND_SE = 3.0
MIN_SEED_STD = 0.02          # a single run's spread between CPUs' kernels (README): the narrowest std a band uses
BANDED = ("final_acc",)      # compared within the band (seed_std is the std over seeds of this column)
EXACT = ("seeds", "server_MB")           # integer data independent of rounding: compared exactly
RELATIVE = ("p2p_MB", "total_MB")        # compared within P2P_REL of the committed value
P2P_REL = 0.02
MB_DIGITS = 6                # bytes / 1e6 averaged over seeds: exact to the byte at 6 decimals


def band(seed_std: float, seeds: int) -> float:
    """Half-width of the band around a committed mean of ``seeds`` seeds whose std over seeds is ``seed_std``."""
    return BAND_SE * math.sqrt(2 / seeds) * max(float(seed_std), MIN_SEED_STD)


def check(committed: pd.DataFrame, rerun: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(one row per strategy and checked column, problems): the rerun against the committed comparison."""
    rows, problems = [], []
    old, new = committed.set_index("strategy"), rerun.set_index("strategy")
    for name in [s for s in old.index if s not in new.index]:
        problems.append(f"{name}: in the committed comparison, not in the rerun")
    for name in [s for s in new.index if s not in old.index]:
        problems.append(f"{name}: in the rerun, not in the committed comparison")
    for name in [s for s in old.index if s in new.index]:
        a, b = old.loc[name], new.loc[name]
        for col in EXACT:
            same = round(float(a[col]), MB_DIGITS) == round(float(b[col]), MB_DIGITS)
            rows.append({"strategy": name, "column": col, "committed": a[col], "rerun": b[col],
                         "allowed": "equal", "ok": same})
            if not same:
                problems.append(f"{name}: {col} is {b[col]} in the rerun, {a[col]} committed (must be equal)")
        for col in RELATIVE:
            ok = abs(float(b[col]) - float(a[col])) <= P2P_REL * abs(float(a[col]))
            rows.append({"strategy": name, "column": col, "committed": a[col], "rerun": b[col],
                         "allowed": f"± {P2P_REL:.0%}", "ok": ok})
            if not ok:
                problems.append(f"{name}: {col} is {b[col]} in the rerun, {a[col]} committed (allowed ± {P2P_REL:.0%})")
        for col in BANDED:
            width = band(a["seed_std"], int(a["seeds"]))
            diff = float(b[col]) - float(a[col])
            ok = abs(diff) <= width
            rows.append({"strategy": name, "column": col, "committed": a[col], "rerun": b[col],
                         "allowed": f"± {width:.3f}", "ok": ok})
            if not ok:
                problems.append(f"{name}: {col} moved by {diff:+.3f}, outside the band ± {width:.3f} "
                                f"({BAND_SE:g} standard errors of {int(a['seeds'])} seeds, seed std "
                                f"{float(a['seed_std']):.3f})")
    return pd.DataFrame(rows), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedmoe_da.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("committed", type=Path, help="the committed comparison.csv")
    parser.add_argument("rerun", type=Path, help="the rerun's comparison.csv")
    args = parser.parse_args(argv)
    for path in (args.committed, args.rerun):
        if not path.is_file():
            parser.error(f"{path} is not a file: give a comparison.csv that `fedmoe-da compare --out` wrote")
    try:
        tables = [pd.read_csv(p) for p in (args.committed, args.rerun)]
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read a comparison: {str(exc).splitlines()[0]}")
    missing = [f"{p}: {c}" for p, t in zip((args.committed, args.rerun), tables)
               for c in ("strategy", "seed_std", *BANDED, *EXACT, *RELATIVE) if c not in t.columns]
    if missing:
        parser.error(f"not a comparison.csv (missing column {missing[0]})")
    table, problems = check(*tables)
    print(table.to_string(index=False))
    if problems:
        print("\n".join(["", "the rerun does not reproduce the committed comparison:", *problems]), file=sys.stderr)
        return 1
    print(f"\nthe rerun reproduces {args.committed} (accuracies within their band, integer data exact)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
