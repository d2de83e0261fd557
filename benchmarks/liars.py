"""Peers that lie: what one liar out of ten (two out of twenty) costs the honest clients, with and without the screens.

A liar trains honestly but replaces what it *sends* (``fedmoe_da/fl/liars.py``: the transport's
tamper hook changes the payload in flight; its own model stays honest):

    noise_experts    every expert it sends becomes N(0, 1e3^2) noise  (FedAvg: uploads; FedMoE-DA: P2P)
    scaled_experts   every expert it sends is multiplied by 100
    noise_backbone   its backbone upload becomes N(0, 1e3^2) noise

Defences: ``off`` (today's defaults), ``screen`` (``p2p_screen=2``, ``upload_screen=2``:
``fedmoe_da/fl/robust.py``), ``median`` (``server_aggregate="median"``, ``fl/server_aggregation.py``, no screen).
Metric: the honest clients' mean personalised accuracy at the final round; ``drop`` is
in points against the honest run without defences, over the same (honest) clients.

    python benchmarks/liars.py                 # 48 runs, about 13 minutes on one busy core
    python benchmarks/liars.py --smoke         # seconds: checks that the script runs
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from fedmoe_da.config import ExperimentConfig
from fedmoe_da.fl.liars import ATTACKS, honest_outcome, simulate_with_liars

DEFENCES = {"off": {}, "screen": {"p2p_screen": 2.0, "upload_screen": 2.0}, "median": {"server_aggregate": "median"}}
SCENARIOS = ((10, 0), (10, 1), (20, 0), (20, 2))        # (clients, liars); liars are clients 0 .. liars-1
STRATEGIES = ("fedavg", "fedmoe_da")
OUT = Path(__file__).parent / "results" / "liars"


def run_one(base: ExperimentConfig, strategy: str, clients: int, liars: int, attack: str, defence: str) -> dict:
    cfg = base.replace(strategy=strategy, num_clients=clients, **DEFENCES[defence])
    liar_ids = set(range(liars))
    t0 = time.perf_counter()
    result = simulate_with_liars(cfg, liar_ids, attack)
    seconds = time.perf_counter() - t0
    h = result.history
    final = h[h["round"] == h["round"].max()]
    outcome = honest_outcome(result, liar_ids)
    return {"strategy": strategy, "clients": clients, "liars": liars, "attack": attack if liars else "none",
            "defence": defence, "final_acc": final.set_index("client")["personalised_accuracy"].to_dict(),
            "rejected_from_liars": outcome["rejected_from_liars"],
            "rejected_from_honest": outcome["rejected_from_honest"], "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny runs that only check the script")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    base = ExperimentConfig(dataset="digits", rounds=args.rounds, partition="domain", lb_coef=0.0, P=3,
                            progress=False, seed=args.seed, threads=1)
    if args.smoke:
        base = base.smoke().replace(max_samples=None)
    rows = []
    for clients, liars in SCENARIOS:
        for strategy in STRATEGIES:
            for attack in ATTACKS if liars else ("none",):
                for defence in DEFENCES:
                    row = run_one(base, strategy, clients, liars, attack, defence)
                    rows.append(row)
                    print(f"{strategy:9s} {clients:2d} clients {liars} liars {row['attack']:14s} {defence:6s} "
                          f"{row['seconds']:5.1f} s  rejected "
                          f"{row['rejected_from_liars']}/{row['rejected_from_honest']}",
                          flush=True)

    table = []
    for row in rows:
        honest = [k for k in row["final_acc"] if k >= row["liars"]]
        ref = next(r for r in rows if (r["strategy"], r["clients"], r["liars"], r["defence"]) ==
                   (row["strategy"], row["clients"], 0, "off"))
        acc = sum(row["final_acc"][k] for k in honest) / len(honest)
        ref_acc = sum(ref["final_acc"][k] for k in honest) / len(honest)
        table.append({**{k: v for k, v in row.items() if k != "final_acc"},
                      "honest_acc": round(100 * acc, 2), "drop": round(100 * (ref_acc - acc), 2)})
    df = pd.DataFrame(table)[["strategy", "clients", "liars", "attack", "defence", "honest_acc", "drop",
                              "rejected_from_liars", "rejected_from_honest", "seconds"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / ("liars_smoke.csv" if args.smoke else "liars.csv"), index=False)
    wide = df.pivot_table(index=["clients", "liars", "attack"], columns=["strategy", "defence"], values="honest_acc",
                          sort=False)
    print(wide.to_string())
    print(f"\nwritten {out}; {df['seconds'].sum():.0f} s of runs")


if __name__ == "__main__":
    main()
