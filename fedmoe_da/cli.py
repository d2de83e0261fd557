"""Command line: ``fedmoe-da run`` (one strategy) and ``fedmoe-da compare`` (the main job).

Bad input exits with code 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import BACKENDS, DATASETS, MODELS, PARTITIONS, STRATEGIES, ConfigError, ExperimentConfig, describe_fields

# flag -> config field, for flags whose name differs from the field
FLAGS = ["dataset", "partition", "alpha", "model", "num_experts", "top_k", "backend", "participation",
         "local_epochs", "batch_size", "lr", "rounds", "seed", "P", "tau", "I", "device", "max_samples"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    docs = describe_fields()
    defaults = ExperimentConfig()
    common = _Parser(add_help=False)
    common.add_argument("--clients", dest="num_clients", type=int, help=docs["num_clients"] + f" (default {defaults.num_clients})")
    choices = {"dataset": DATASETS, "partition": PARTITIONS, "model": MODELS, "backend": BACKENDS}
    types = {f: type(getattr(defaults, f)) if getattr(defaults, f) is not None else int for f in FLAGS}
    for f in FLAGS:
        flag = "--" + (f if len(f) == 1 else f.replace("_", "-"))
        common.add_argument(flag, dest=f, type=types[f], choices=choices.get(f),
                            help=f"{docs[f]} (default {getattr(defaults, f)})")
    common.add_argument("--out", help="output folder (default runs/<command>)")
    common.add_argument("--smoke", action="store_true", help="make everything tiny (seconds): for tests and CI")
    common.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    parser = _Parser(prog="fedmoe-da", description="FedMoE-DA: federated MoE with domain-aware aggregation")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", parents=[common], help="run one strategy and write its run folder")
    run.add_argument("--strategy", choices=STRATEGIES, help=f"{docs['strategy']} (default {defaults.strategy})")
    cmp_ = sub.add_parser("compare", parents=[common], help="FedMoE-DA vs FedAvg vs Local on one partition: table + plot")
    cmp_.add_argument("--strategies", default="fedmoe_da,fedavg,local",
                      help="comma-separated strategies to compare (default fedmoe_da,fedavg,local)")
    cmp_.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...) (default 1)")
    return parser


def _config(args: argparse.Namespace) -> ExperimentConfig:
    changes = {f: getattr(args, f) for f in FLAGS + ["num_clients", "strategy"] if getattr(args, f, None) is not None}
    config = ExperimentConfig()
    if args.smoke:
        config = config.smoke()
    config = config.replace(**changes, progress=not args.no_progress)
    return config.replace(out=args.out or str(Path("runs") / args.command)).validate()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = _config(args)
        if args.command == "compare":
            strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
            bad = [s for s in strategies if s not in STRATEGIES]
            if bad or not strategies:
                raise ConfigError(f"--strategies={args.strategies!r} is invalid: use a comma-separated subset of "
                                  + ", ".join(STRATEGIES))
            if args.seeds < 1:
                raise ConfigError(f"--seeds={args.seeds} is invalid: must be an integer >= 1")
            return _compare(config, strategies, args.seeds)
        return _run(config)
    except (ConfigError, OSError) as exc:   # OSError: a missing file or a failed download
        print(f"fedmoe-da: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except ValueError as exc:               # e.g. a cached dataset file with a wrong checksum
        if type(exc).__name__ != "ChecksumError":
            raise
        print(f"fedmoe-da: error: {exc}", file=sys.stderr)
        return 2


def _run(config: ExperimentConfig) -> int:
    from .results import simulate

    result = simulate(config)
    s = result.summary
    print(f"{config.strategy}: final personalised accuracy {s['final_acc_mean']:.3f} ± {s['final_acc_std']:.3f} "
          f"(worst 10% {s['final_acc_worst10']:.3f}), best {s['best_acc_mean']:.3f} at round {s['best_round']}; "
          f"server {s['server_bytes'] / 1e6:.1f} MB, P2P {s['p2p_bytes'] / 1e6:.1f} MB")
    print(f"run folder: {result.run_dir}")
    return 0


def _compare(config: ExperimentConfig, strategies: tuple[str, ...], seeds: int) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from .results import compare, format_table
    from .viz import plot_comparison

    table, results = compare(config, strategies, seeds)
    text = format_table(table)
    out = Path(config.out)  # type: ignore[arg-type]
    (out / "comparison.md").write_text(text + "\n")
    fig, _, df = plot_comparison(results)
    fig.savefig(out / "comparison.png", dpi=120)
    df.to_csv(out / "comparison_plot.csv", index=False)
    print(text)
    print(f"\nplot: {out / 'comparison.png'}   table: {out / 'comparison.csv'}")
    return 0
