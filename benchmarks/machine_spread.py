"""How far one run moves between CPUs: the default comparison's seed 0 on this CPU's vector kernels and on
the kernels of older CPUs, which torch and oneDNN take when told to.

    python benchmarks/machine_spread.py                        # native, avx2, default: 15 runs of 30 rounds
    python benchmarks/machine_spread.py --kernels native avx2 --jobs 2

Each kernel setting runs ``python -m fedmoe_da compare --seeds 1 --out <runs>/<kernels>`` in a fresh process
with its environment (``avx2``: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``, a CPU without AVX-512;
``default``: ``ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41``, no AVX at all). The runs are the same
in every other respect (seed, data, partition, initialisation), so the differences are rounding alone,
amplified by 30 rounds of Adam and top-2 routing. Finished runs in ``<runs>`` are read back, not rerun.
Writes ``<out>/spread.csv`` (strategy, one accuracy column per setting, the largest difference), the same as
``<out>/spread.md`` (the README's copy) and
``<out>/spread.json`` (the args, the capability torch reports under each setting, package versions).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
from fedmoe_da.fl.run_folder import versions  # noqa: E402

KERNELS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
           "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}}


def capability(env: dict[str, str]) -> str:
    """The vector kernels torch takes under ``env`` ('AVX512', 'AVX2', 'DEFAULT', ...)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                          text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument("--jobs", type=int, default=1, help="compare's --jobs, if this package has the run pool")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "machine_spread", help="the run folders")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "machine_spread")
    args = parser.parse_args()
    caps, columns = {}, {}
    for name in args.kernels:
        env = {**os.environ, **KERNELS[name], "PYTHONPATH": str(ROOT)}
        caps[name] = capability(KERNELS[name])
        cmd = [sys.executable, "-m", "fedmoe_da", "compare", "--seeds", "1", "--no-progress",
               "--out", str(args.runs / name)] + (["--jobs", str(args.jobs)] if args.jobs != 1 else [])
        print(f"{name} ({caps[name]}): {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        table = pd.read_csv(args.runs / name / "comparison.csv")
        columns[name] = table.set_index("strategy")["final_acc"]
    spread = pd.DataFrame(columns)
    args.out.mkdir(parents=True, exist_ok=True)
    spread["largest_difference"] = spread.max(axis=1) - spread.min(axis=1)
    spread.reset_index().to_csv(args.out / "spread.csv", index=False)
    head = ["strategy", *(f"{k} ({caps[k]})" for k in args.kernels), "largest difference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for name, row in spread.iterrows()]
    (args.out / "spread.md").write_text("final accuracy (mean over clients), seed 0, 30 rounds\n\n"
                                        + "\n".join(lines) + "\n")
    (args.out / "spread.json").write_text(json.dumps(
        {"args": {k: str(v.relative_to(ROOT) if isinstance(v, Path) and v.is_relative_to(ROOT) else v)
                  for k, v in vars(args).items()}, "capability": caps, "versions": versions(),
         "largest_difference": float(spread["largest_difference"].max()),
         "rms_difference_vs_native": {k: float(((spread[k] - spread[args.kernels[0]]) ** 2).mean() ** 0.5)
                                      for k in args.kernels[1:]}}, indent=2))
    print(spread.round(4).to_string())


if __name__ == "__main__":
    main()
