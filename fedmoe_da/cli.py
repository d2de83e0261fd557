"""Command line: ``fedmoe-da run`` (one strategy) and ``fedmoe-da compare`` (the main job).

Every field of :class:`ExperimentConfig` is a flag, generated from the dataclass
(as CleanRL derives its CLI from its Args): ``--num-clients``, ``--fedmoe-backbone``;
one-letter fields keep their case (``--P``, ``--I``). A flag's help is the field's
docstring, its text is read by the annotation (``config.parse_value``: ``X | None``
also takes ``none``, tuples are comma-separated; bools are ``--x/--no-x``), its
choices and range come from the field's rule. ``--config FILE`` reads fields from JSON or TOML.

Bad input exits with code 2 and one line on stderr, never a traceback.
``fedmoe-da run --resume RUN_DIR`` continues a run from its folder's checkpoint
(the config is the folder's config.json). Ctrl-C stops a run with one line
saying how to continue it, and exit code 130. ``compare --jobs N`` runs N runs at once
(``pool.py``, docs/ARCHITECTURE.md §10); a failed run is named and the others
finish, then the command exits 1 listing the failures.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing
from pathlib import Path

from .config import (
    COMPARE_STRATEGIES,
    Bool,
    Choice,
    ConfigError,
    ExperimentConfig,
    describe_fields,
    parse_value,
    read_config_file,
)
from .pool import JOBS_HELP, PoolFailed, parse_jobs, usable_cores

ALIASES = {"num_clients": ["--clients"]}   # older spellings kept working
PRECEDENCE = ("Precedence: the defaults, then --config FILE, then --smoke shrinks the sizes (never P, I, tau, lr, "
              "...), then the flags given on the command line win. --out defaults to runs/<command>.")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag_name(field: str) -> str:
    """The flag of a config field: --num-clients; one-letter fields keep their case (--P)."""
    return "--" + (field if len(field) == 1 else field.replace("_", "-"))


def _converter(name: str) -> typing.Callable[[str], typing.Any]:
    """argparse type of a field: config.parse_value, its ConfigError shown as argparse's one-line error."""
    def convert(text: str) -> typing.Any:
        try:
            return parse_value(name, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def jobs_flag(text: str) -> int:
    """argparse type of ``--jobs``: ``pool.parse_jobs``, its ValueError shown as argparse's one-line error."""
    try:
        return parse_jobs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_jobs_flag(parser: argparse.ArgumentParser) -> None:
    """``--jobs N`` (default: the usable cores), shared by compare, figures and the method study."""
    parser.add_argument("--jobs", type=jobs_flag, default=None, metavar="N",
                        help=f"{JOBS_HELP} (default: the usable cores, here {usable_cores()})")


def _help(text: str) -> str:
    return text.replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per ExperimentConfig field (default suppressed: only flags given appear in the namespace)."""
    docs = describe_fields()
    for f in dataclasses.fields(ExperimentConfig):
        if f.name in skip:
            continue
        rule = f.metadata["rule"]
        names = [flag_name(f.name), *ALIASES.get(f.name, [])]
        help_ = _help(f"{docs[f.name]} (default: {f.default}; allowed: {rule.describe()})")
        if isinstance(rule, Bool):
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_)
            continue
        choices = rule.options if isinstance(rule, Choice) else None
        metavar = None if choices else f.name.upper()
        parser.add_argument(*names, dest=f.name, type=_converter(f.name), choices=choices, metavar=metavar,
                            default=argparse.SUPPRESS, help=help_)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="JSON or TOML file of config fields, or a run folder's config.json to reproduce that run "
                        "(its out too: give --out to write elsewhere)")
    common.add_argument("--smoke", action="store_true",
                        help="shrink the sizes (clients, samples, widths, experts, rounds, epochs): seconds, for tests")

    parser = _Parser(prog="fedmoe-da", description="FedMoE-DA: federated MoE with domain-aware aggregation. "
                     + PRECEDENCE)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", parents=[common], help="run one strategy and write its run folder",
                         description="Run one strategy and write its run folder. " + PRECEDENCE)
    add_config_flags(run)
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue the run in RUN_DIR from its checkpoint, with the config in its config.json (no "
                     "other flags but --progress/--no-progress); a finished run is read back")
    cmp_ = sub.add_parser("compare", parents=[common], help="strategies side by side on one partition: table + plot",
                          description="Run strategies on the same partition and seeds: table + plot. "
                          + PRECEDENCE + " --strategies replaces --strategy.")
    add_config_flags(cmp_, skip=("strategy",))
    cmp_.add_argument("--strategies", default=argparse.SUPPRESS,
                      help="comma-separated strategy entries, each a strategy name with optional "
                      f":field=value overrides, e.g. fedmoe_da:proxy=domain (default: {','.join(COMPARE_STRATEGIES)})")
    cmp_.add_argument("--seeds", type=int, default=argparse.SUPPRESS,
                      help="number of seeds: seed, seed+1, ... (default: 1)")
    add_jobs_flag(cmp_)
    return parser


def _config(args: argparse.Namespace) -> tuple[ExperimentConfig, dict]:
    """Defaults, then the file, then --smoke, then explicit flags; validated. Also the file's compare extras."""
    config, extras = ExperimentConfig(), {}
    if args.config:
        fields, extras = read_config_file(args.config)
        config = config.replace(**fields)
    if args.smoke:
        config = config.smoke()
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig) if hasattr(args, f.name)}
    config = config.replace(**flags)
    if config.out is None:
        config = config.replace(out=str(Path("runs") / args.command))
    return config.validate(), extras


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean bad input, not a bug: shown as one line, exit 2.

    OSError: a missing file or a failed download; ChecksumError: a cached dataset
    file with a wrong checksum (it can only have been raised if its module is loaded).
    """
    real = sys.modules.get(f"{__package__}.data.real")
    return (ConfigError, OSError) + ((real.ChecksumError,) if real is not None else ())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = None   # the run folder, once known (for the line Ctrl-C prints)
    try:
        if args.command == "run" and args.resume is not None:
            out = args.resume
            return _resume(args)
        config, extras = _config(args)
        out = config.out
        if args.command == "compare":
            strategies = (args.strategies.split(",") if hasattr(args, "strategies")
                          else extras.get("strategies", COMPARE_STRATEGIES))
            seeds = args.seeds if hasattr(args, "seeds") else extras.get("seeds", 1)
            strategies = strategies.split(",") if isinstance(strategies, str) else strategies
            return _compare(config, tuple(strategies), seeds, args.jobs)
        if "strategies" in extras:
            raise ConfigError(f"config file {args.config!r} is a compare folder's: use fedmoe-da compare --config")
        return _run(config)
    except KeyboardInterrupt:
        print(_interrupted(args.command, out), file=sys.stderr)
        return 130
    except PoolFailed as exc:
        for line in exc.failures:
            print(f"fedmoe-da: {line}", file=sys.stderr)
        print(f"fedmoe-da: error: {len(exc.failures)} of {len(exc.results)} runs failed (the others finished; "
              "run the same command again to retry only these)", file=sys.stderr)
        return 1
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"fedmoe-da: error: {(str(exc).splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        return 2


def _all_discarded(config: ExperimentConfig, summary: dict) -> bool:
    """True (and one loud line on stderr) when every local update of a run was discarded as non-finite."""
    updates, discarded = summary.get("local_updates"), summary.get("discarded_updates", 0)
    if not updates or discarded != updates:
        return False
    print(f"fedmoe-da: error: {config.strategy} (seed {config.seed}): all {updates} local updates were discarded "
          f"as non-finite, so nothing was learned; the learning rate is probably too high (lr={config.lr})",
          file=sys.stderr)
    return True


def _interrupted(command: str, out: str | None) -> str:
    """The one line Ctrl-C prints: how to continue."""
    if command == "compare":
        return ("fedmoe-da: interrupted; run the same fedmoe-da compare command again: finished runs are read back "
                "and the unfinished one resumes from its checkpoint")
    if out is None or not (Path(out) / "config.json").exists():
        return "fedmoe-da: interrupted before the run folder was written; run the same command again"
    from .fl.checkpoint import saved_round

    try:
        done = saved_round(out)
    except ConfigError:
        done = None
    if done is None:
        return (f"fedmoe-da: interrupted with no checkpoint saved yet; start again with: fedmoe-da run --config "
                f"{shlex.quote(str(Path(out) / 'config.json'))}")
    return f"fedmoe-da: interrupted; round {done} is saved; continue with: fedmoe-da run --resume {shlex.quote(out)}"


def _resume(args: argparse.Namespace) -> int:
    """``run --resume RUN_DIR``: the config is the folder's; only --progress / --no-progress may be given."""
    given = (["--config"] if args.config else []) + (["--smoke"] if args.smoke else []) + [
        flag_name(f.name) for f in dataclasses.fields(ExperimentConfig)
        if hasattr(args, f.name) and f.name != "progress"]
    if given:
        raise ConfigError(f"--resume takes the config from RUN_DIR/config.json: {given[0]} cannot be given with it")
    from .fl import distributed

    if distributed.launched():   # under torchrun: this process is one rank of the resumed run
        from .fl.run_folder import RunFolder

        config = RunFolder(args.resume).config().replace(out=str(args.resume))
        config = config.replace(progress=args.progress) if hasattr(args, "progress") else config
        return distributed.main(config, lambda result: _report(result.config, result), resume=True)
    from .fl.simulation import resume

    result = resume(args.resume, progress=getattr(args, "progress", None))
    return _report(result.config, result)


def _run(config: ExperimentConfig) -> int:
    from .fl import distributed

    if distributed.launched():   # under torchrun: this process is one rank of the run (fl/distributed/)
        return distributed.main(config, lambda result: _report(result.config, result))
    from . import simulate

    return _report(config, simulate(config))


def _report(config: ExperimentConfig, result) -> int:
    """The run's one-line summary and its folder on stdout; 1 if every local update was discarded."""
    s = result.summary
    print(f"{config.strategy}: final personalised accuracy {s['final_acc_mean']:.3f} ± {s['final_acc_std']:.3f} "
          f"(worst 10% {s['final_acc_worst10']:.3f}), best {s['best_acc_mean']:.3f} at round {s['best_round']}; "
          f"server {s['server_bytes'] / 1e6:.1f} MB, P2P {s['p2p_bytes'] / 1e6:.1f} MB")
    print(f"run folder: {result.run_dir}")
    return 1 if _all_discarded(config, s) else 0


def _compare(config: ExperimentConfig, strategies: tuple[str, ...], seeds: int, jobs: int | None) -> int:
    from .fl.distributed import launched

    if launched():
        raise ConfigError("compare runs in one process; under torchrun, run one strategy per job with fedmoe-da run")
    import matplotlib

    matplotlib.use("Agg")
    from . import compare
    from .results import format_table
    from .viz import plot_comparison

    table, results = compare(config, strategies, seeds, jobs or usable_cores())   # checks every entry first
    out = Path(config.out)  # type: ignore[arg-type]   compare wrote comparison.csv and comparison.md there
    fig, _, df = plot_comparison(results)
    fig.savefig(out / "comparison.png", dpi=120)
    df.to_csv(out / "comparison_plot.csv", index=False)
    print(format_table(table))
    print(f"\nplot: {out / 'comparison.png'}   table: {out / 'comparison.csv'}")
    failed = [r for r in results if _all_discarded(r.config, r.summary)]
    return 1 if failed else 0
