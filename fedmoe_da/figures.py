"""The paper figures: a registry of figure ids, each drawn by one notebook, and the files each figure leaves.

A notebook draws a figure and hands it to ``save_figure(fig, df, fig_id, FIG_DIR, ...)``;
with ``FIG_DIR`` None (a reader running the notebook by hand) nothing is
written. Each saved figure is four files in ``FIG_DIR``:

    <id>.png   <id>.pdf    the figure
    <id>.csv                exactly the data drawn (the ``df`` of viz's ``(fig, ax, df)``)
    <id>.json               figure id, notebook, parameters, seeds, package versions, git commit
                            (the runner adds the notebook's wall time)

``FIGURES`` maps each id to its notebook, the papermill parameters of the
full run, the claim of the paper it tests and what it shows.

The command regenerates them, running each notebook that draws one once:

    python -m fedmoe_da.figures                  # all, full size, into paper_figures/ (+ its README.md)
    python -m fedmoe_da.figures --only ID ...    # the notebooks drawing these ids
    python -m fedmoe_da.figures --smoke          # every notebook in smoke mode, into build/figures-smoke/
    python -m fedmoe_da.figures --list           # id, notebook, claim
    python -m fedmoe_da.figures --readme         # only paper_figures/README.md, from the registry and the jsons
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from . import notebooks
from .fl.run_folder import versions
from .pool import Task, TaskFailed, jobs_option, pool_failures, usable_cores

CSV_FLOAT_FORMAT = "%.6g"
SUFFIXES = ("png", "pdf", "csv", "json")          # the files of one figure
PAPER_FIGURES = notebooks.ROOT / "paper_figures"   # the committed full-size figures
SMOKE_OUT = notebooks.ROOT / "build" / "figures-smoke"
SMOKE_CELL_TIMEOUT = 300                          # s: a smoke notebook takes seconds; a cell this slow is stuck
EXECUTED = notebooks.ROOT / "build" / "notebooks"  # executed copies: <smoke|full>/<notebook>.ipynb
COMMAND = "python -m fedmoe_da.figures"


@dataclass(frozen=True)
class Figure:
    id: str                  # also the output name: <id>.png/.pdf/.csv/.json
    notebook: str            # stem in notebooks/, e.g. "04_aggregation_matrix"
    claim: str               # the claim of the paper (or of this package) it tests
    shows: str               # what it shows, honestly
    params: dict[str, Any] = field(default_factory=dict)   # papermill parameters of the full run


# -- registry: one entry per figure, grouped by notebook --
FIGURES: tuple[Figure, ...] = (
    Figure(id="fig02_domain_samples", notebook="02_data",
           claim="The default data set has real domain shift: the same ten digits look different in each source "
                 "(the setting FedMoE-DA is built for).",
           shows="One row per domain of digit_domains (mnist, usps, mnistm, synth), one image per class, "
                 "as built (pixels in [0, 1], before the run's standardisation)."),
    Figure(id="fig02_partition", notebook="02_data",
           claim="The default partition gives each client one home domain (domain purity 0.9) with roughly "
                 "balanced labels: domain skew without label skew.",
           shows="Training images per client by domain (left) and by label (right) for the default run's "
                 "partition (20 clients, seed 0), with the mean total-variation skew of each in the title."),
    Figure(id="fig05_p2p_graph", notebook="05_p2p_ledger",
           claim="In FedMoE-DA the expert weights travel peer to peer: each client fetches from its peers the "
                 "experts its rows of A name; a domain-aware A would keep that traffic mostly within home domains.",
           shows="The last round of the default FedMoE-DA run (20 clients, 30 rounds, seed 0): clients grouped and "
                 "coloured by home domain, one arrow per (peer, client) pair with the bytes summed, width by bytes; "
                 "the title gives the share of the round's P2P bytes that stays within a home domain."),
    Figure(id="fig05_p2p_matrix", notebook="05_p2p_ledger",
           claim="In FedMoE-DA the expert weights travel peer to peer: each client fetches from its peers the "
                 "experts its rows of A name; a domain-aware A would keep that traffic mostly within home domains.",
           shows="MB each client fetched from each peer over the whole default run (seed 0), clients ordered by "
                 "home domain with the domain blocks outlined: within-domain traffic is the diagonal blocks."),
    Figure(id="fig05_channel_bytes", notebook="05_p2p_ledger",
           claim="FedMoE-DA relieves the server: expert weights leave the server's channels for peer-to-peer links.",
           shows="MB sent up to the server, down from it and peer to peer over the default runs of FedMoE-DA and "
                 "FedAvg (seed 0), with server and total MB as multiples of FedAvg's above the bars: the server's "
                 "load falls, but with P = 3 the P2P expert traffic is larger than what the server saves, so the "
                 "total is above FedAvg's."),
    Figure(id="fig06_accuracy", notebook="06_baselines",
           claim="FedMoE-DA's domain-aware expert aggregation gives better personalised accuracy than federated "
                 "baselines under domain shift (the paper's main claim).",
           shows="Personalised accuracy per round (mean ± std over clients, averaged over 2 seeds) of FedMoE-DA, "
                 "FedAvg, FedProx and FedPer on the defaults (20 clients, one home digit domain each, 30 rounds). "
                 "FedMoE-DA ends below FedProx and FedAvg and above FedPer: the claim does not hold here."),
    Figure(id="fig06_client_accuracy", notebook="06_baselines",
           claim="FedMoE-DA serves clients of every domain, the worst-off included, better than the baselines.",
           shows="Every client's final personalised accuracy sorted from the worst (2 seeds pooled) and the mean per "
                 "home domain, for FedMoE-DA, FedAvg, FedProx and FedPer on the defaults; which strategy is ahead "
                 "for the worst clients and for each domain is read off the curves, not assumed."),
    Figure(id="fig06_bytes", notebook="06_baselines",
           claim="FedMoE-DA relieves the server: expert weights leave the server's channels for peer-to-peer links.",
           shows="MB per channel (server-up, server-down, P2P) over a default run, mean over 2 seeds, for "
                 "FedMoE-DA, FedAvg, FedProx and FedPer, with server and total MB as multiples of FedAvg's: FedPer "
                 "sends least, FedMoE-DA's server load is below FedAvg's and its total above it."),
    Figure(id="fig07_sensitivity", notebook="07_sensitivity",
           claim="FedMoE-DA's accuracy depends on how many peers each expert is aggregated with (P), the softmax "
                 "temperature (tau), the refresh interval (I), the proxy and the sync schedule.",
           shows="Final personalised accuracy when one knob at a time changes around the defaults, on a reduced "
                 "setting (10 clients, 1,600 samples, 20 rounds, one seed; the schedule at I = 5), base point "
                 "starred; one seed of ten clients: differences of a few points are within noise."),
    Figure(id="fig07_sensitivity_p2p", notebook="07_sensitivity",
           claim="FedMoE-DA's peer-to-peer traffic is set by P (how many experts travel) and by I and the schedule "
                 "(how often).",
           shows="P2P MB of the same one-knob-at-a-time sweep (10 clients, 1,600 samples, 20 rounds, one seed): "
                 "zero at P = 0, growing with P, lower under the refresh schedule (experts fetched at refresh "
                 "rounds only)."),
    Figure(id="fig03_routing_by_domain", notebook="03_moe_layer",
           claim="An MoE router sends inputs of different domains to different experts, which is what makes "
                 "experts (and their gate rows, the proxies) domain-specific.",
           shows="The share of test images routed to each of the 8 experts (top-2) in the last round of the default "
                 "FedMoE-DA run (20 clients, 30 rounds, seed 0), summed over the clients of each home domain; "
                 "each client has its own gate, so slot e is only loosely the same expert across clients."),
    Figure(id="fig04_matrix_by_domain", notebook="04_aggregation_matrix",
           claim="Eq. 8-10 on the gate proxies give a domain-aware aggregation matrix: each expert is aggregated "
                 "mostly with experts of clients from its own domain (the paper's central claim).",
           shows="The A the default FedMoE-DA run used at its last refresh (gate proxy, P=3, tau=0.1, 20 clients x "
                 "8 experts, seed 0), rows and columns sorted by the home domain of each pair's client, with its "
                 "domain purity against the domain-blind chance level in the title."),
    Figure(id="fig04_purity", notebook="04_aggregation_matrix",
           claim="The paper's gate proxy makes A domain-aware; proxies that remove what all clients share "
                 "(gate_centred, gate_signature) are this package's alternatives, the domain proxy an oracle.",
           shows="Domain purity of A recomputed on the same uploaded gates (last refresh of the default run, "
                 "tau=0.1) against P, for the gate, gate_centred, gate_signature and oracle domain proxies, with "
                 "the domain-blind chance level dashed; one run, one seed."),
    Figure(id="fig08_dropout_participation", notebook="08_robustness",
           claim="FedMoE-DA keeps working when clients drop after training or only some clients take part: the "
                 "server averages over who answered and each client's rows of A renormalise over the peers that "
                 "answered (this package's claim; the paper does not study it).",
           shows="Final personalised accuracy (mean ± std over clients, dotted: worst 10%) of FedMoE-DA on the 8x8 "
                 "digits, 10 clients with one home domain each, 10 rounds, one seed, against the dropout probability "
                 "(participation 1) and against the participation fraction (no dropout); each point is labelled "
                 "with the local updates that reached the others. In this run dropout up to 0.5 costs nothing (a "
                 "dropped client has trained and keeps its update), while fewer participants cost accuracy (a "
                 "client that is not sampled does not train); one seed, so a point or two is within the spread."),
    Figure(id="fig08_liars", notebook="08_robustness",
           claim="One lying peer of ten costs the honest clients at most a few points once the screens are on "
                 "(p2p_screen and upload_screen, c = 2), and most of their accuracy without them (this package's "
                 "claim; benchmarks/liars.py).",
           shows="The honest clients' final accuracy of FedMoE-DA (same setup as fig08_dropout_participation) with "
                 "client 0 sending N(0, 1000^2) noise as its experts or as its backbone, with no defence, the "
                 "screens, or a coordinate-wise median at the server; dashed: the run without a liar; over each "
                 "bar the payloads rejected from the liar / from honest clients. One seed. The screens reject "
                 "every lie and no honest payload here; screened expert lies leave the honest run's accuracy, a "
                 "screened backbone lie leaves a few points below it (the liar's backbone is then missing from "
                 "every round's mean), and the median sits lower still."),
    Figure(id="fig09_dispatch_timings", notebook="09_triton_kernel",
           claim="On a CPU the dense-masked dispatch beats the sort-based one for small problems and loses for "
                 "large ones; 'auto' picks dense up to DENSE_MAX_WORK multiply-adds (moe/backend.py).",
           shows="The committed CPU measurements of benchmarks/moe_cpu.py --sweep (one thread, a shared 2-core "
                 "machine; no GPU numbers exist in this project): time of one MoE layer forward + backward against "
                 "tokens per shape, and torch time / dense time against dense_work with the threshold. The Triton "
                 "kernels are not in it: they have not been timed on a GPU here."),
    Figure(id="fig10_scaling", notebook="10_speed_and_scale",
           claim="The stacked engine makes a federated round cheap enough to explore in class: seconds per round "
                 "grow with the work, not with the number of clients, and memory stays flat over rounds.",
           shows="The committed benchmarks/sim_throughput.py measurements (one torch thread, a shared 2-core "
                 "machine whose load average is in the json): median seconds per round and peak RSS against "
                 "clients (20 to 1,000), stacked and loop engines."),
    Figure(id="fig10_vs_flower", notebook="10_speed_and_scale",
           claim="Issue 8's target: at least 20x faster than Flower's simulation engine per round at 100 clients "
                 "and 4x at 20, same workload and cores.",
           shows="The committed benchmarks/vs_flower.py measurements: seconds per round of FedAvg (training and "
                 "communication, no evaluation) in this package (both engines) and in Flower 1.x with Ray, and the "
                 "ratio; on this shared machine the targets are not met (see the json's load averages)."),
    # -- end of registry --
)


def save_figure(fig: plt.Figure, df: pd.DataFrame, fig_id: str, out: str | Path | None,
                params: dict[str, Any] | None = None, seeds: list[int] | None = None) -> Path | None:
    """Write <id>.png, .pdf, .csv and .json into ``out`` (nothing when ``out`` is None); returns the png's path.

    ``fig_id`` must be registered in FIGURES (a one-line ValueError otherwise, before anything is written).
    """
    if out is None:
        return None
    notebook = _notebook_of(fig_id)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{fig_id}.png", dpi=150, bbox_inches="tight")
    fig.savefig(out / f"{fig_id}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
    df.to_csv(out / f"{fig_id}.csv", index=False, float_format=CSV_FLOAT_FORMAT)
    meta = {"figure": fig_id, "notebook": notebook, "parameters": params or {},
            "seeds": list(seeds or []), "versions": versions()}
    (out / f"{fig_id}.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return out / f"{fig_id}.png"


def _notebook_of(fig_id: str) -> str:
    """The notebook registered for ``fig_id``; an unregistered id is a one-line ValueError."""
    return select([fig_id])[0].notebook


def select(ids: list[str] | None = None) -> tuple[Figure, ...]:
    """The registered figures with these ids (all when ``ids`` is empty), by notebook, then in registry order."""
    valid = [f.id for f in FIGURES]
    unknown = [i for i in ids or () if i not in valid]
    if unknown:
        raise ValueError(f"unknown figure id {', '.join(unknown)}; registered in fedmoe_da.figures.FIGURES: "
                         f"{', '.join(valid) or 'none'}")
    return tuple(sorted((f for f in FIGURES if not ids or f.id in ids), key=lambda f: f.notebook))


def figure_files(fig_id: str, out: str | Path) -> list[Path]:
    """The four files of one figure in ``out``."""
    return [Path(out) / f"{fig_id}.{suffix}" for suffix in SUFFIXES]


def notebook_runs(figures: tuple[Figure, ...], smoke: bool, out: Path,
                  runs_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The papermill parameters of each notebook that draws one of ``figures`` (one run per notebook).

    SMOKE and FIG_DIR, RUNS_DIR when ``runs_dir`` is given, plus (full runs
    only) the registry's params; every name must be one of the notebook's
    parameters, and figures of one notebook must agree on them.
    """
    runs: dict[str, dict[str, Any]] = {}
    for f in figures:
        params = {"SMOKE": smoke, "FIG_DIR": _for_kernel(out),
                  **({"RUNS_DIR": _for_kernel(runs_dir)} if runs_dir else {}), **({} if smoke else f.params)}
        if runs.setdefault(f.notebook, params) != params:
            raise ValueError(f"figures of notebook {f.notebook} ask for different params ({f.id}: {f.params}); "
                             "one notebook runs once: give its figures the same params")
    for stem, params in runs.items():
        unknown = sorted(set(params) - set(notebooks.parameters(stem)))
        if unknown:
            raise ValueError(f"notebook {stem} has no parameter {', '.join(unknown)} in its cell tagged 'parameters'")
    return runs


def generate(figures: tuple[Figure, ...], smoke: bool, out: Path, executed: Path, jobs: int = 1,
             runs_dir: Path | None = None) -> list[str]:
    """Run each notebook drawing one of ``figures`` once; returns one line per failure (empty: all written).

    After a notebook, each of its figures must have its four files written by that run; the notebook's wall
    time goes into each figure's json. ``jobs`` notebooks run at once (``pool.py``), in smoke runs only.
    """
    if jobs > 1 and not smoke:
        raise ValueError(f"--jobs {jobs} needs --smoke: full-size notebooks share cached runs (RUNS_DIR), so they "
                         "run one after another")
    runs = notebook_runs(figures, smoke, out, runs_dir)
    tasks = [Task(stem, _run_notebook, (stem, tuple(f for f in figures if f.notebook == stem), smoke, out, executed,
                                        runs[stem], jobs, notebooks.NOTEBOOK_DIR)) for stem in runs]
    # threads, not processes: each notebook already runs in its own kernel process, and kernels started from one
    # process draw their ports from jupyter_client's per-process cache. Kernels started at once from several
    # processes can draw the same free port, and a client then waits forever for a reply that went to the other
    # kernel (seen with figures --smoke in two processes: both kernels idle, both clients in epoll).
    return pool_failures(tasks, jobs, processes=False, desc="notebooks")


def _run_notebook(stem: str, mine: tuple[Figure, ...], smoke: bool, out: Path, executed: Path,
                  params: dict[str, Any], jobs: int, folder: Path) -> None:
    """Run notebook ``folder/stem.py`` and check that it wrote its figures (``mine``); a pool task of ``generate``
    (a worker process gets the folder as an argument: it does not see changes to ``notebooks.NOTEBOOK_DIR``)."""
    since = time.time() - 1.0   # files older than the run are stale (1 s: coarse file-system clocks)
    try:
        wall = notebooks.execute(stem, executed / f"{stem}.ipynb", params,
                                 cell_timeout=SMOKE_CELL_TIMEOUT if smoke else None, folder=folder)
    except Exception as exc:   # papermill's PapermillExecutionError carries the failing cell's error
        what = (f"{exc.ename}: {exc.evalue}" if hasattr(exc, "ename")
                else (str(exc).strip().splitlines() or [type(exc).__name__])[-1])
        raise TaskFailed(f"failed ({what}); executed copy: {executed / f'{stem}.ipynb'}") from None
    stale = [p.name for f in mine for p in figure_files(f.id, out) if not p.is_file() or p.stat().st_mtime < since]
    if stale:
        raise TaskFailed(f"ran, but did not write {', '.join(stale)} into {out}")
    for f in mine:
        _stamp(out / f"{f.id}.json", f, wall, smoke, params, jobs)
    print(f"{stem}: {wall:.1f} s, wrote {', '.join(f.id for f in mine)}", file=sys.stderr)


def _stamp(path: Path, figure: Figure, wall: float, smoke: bool, params: dict[str, Any], jobs: int) -> None:
    """Add the run's wall time and papermill parameters to a figure's json (written by save_figure)."""
    meta = json.loads(path.read_text())
    if meta.get("figure") != figure.id:
        raise ValueError(f"{path} names figure {meta.get('figure')!r}, not {figure.id!r}")
    meta.update(notebook_wall_s=round(wall, 1), notebooks_at_once=jobs, smoke=smoke,
                papermill_parameters={k: v for k, v in params.items() if k != "FIG_DIR"},
                csv_sha256=csv_sha256(path.with_suffix(".csv")))
    path.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def csv_sha256(path: Path) -> str:
    """The hash of a figure's csv as the run wrote it (kept in its json: a hand-edited csv no longer matches)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _for_kernel(out: Path) -> str:
    """FIG_DIR as the kernel (cwd: the repository root) sees it: relative when inside the repository."""
    out = out.resolve()
    return str(out.relative_to(notebooks.ROOT)) if out.is_relative_to(notebooks.ROOT) else str(out)


def readme(out: Path) -> str:
    """paper_figures/README.md: every registered figure, the claim it tests, what it shows, how to redraw it."""
    lines = ["# Paper figures", "",
             f"Written by `{COMMAND}` (`make figures`), which runs each notebook that draws a figure once, "
             "at full size; this file is generated from the registry in `fedmoe_da/figures.py`: edit there.",
             "Each figure is four files: `.png`, `.pdf`, `.csv` (exactly the data drawn) and `.json` (parameters, "
             "seeds, package versions, git commit, the notebook's wall time, the csv's sha256). CI checks that "
             "every registered figure is here, that each csv is finite and is the file the run wrote, and redraws "
             "a cheap subset at full size and compares it with these csvs (`tests/test_figures.py`).", "",
             "| figure | notebook | claim it tests |", "|---|---|---|"]
    lines += [f"| [{f.id}](#{f.id.lower()}) | `notebooks/{f.notebook}.py` | {f.claim} |" for f in select()]
    for f in select():
        meta = out / f"{f.id}.json"
        wall = json.loads(meta.read_text()).get("notebook_wall_s") if meta.is_file() else None
        took = f", {wall:.0f} s for the whole notebook last time" if wall is not None else ""
        lines += ["", f"## {f.id}", "",
                  f'<a href="{f.id}.png"><img src="{f.id}.png" width="420" alt="{f.id}"></a>', "",
                  f"* **Claim it tests:** {f.claim}", f"* **What it shows:** {f.shows}",
                  f"* **Data:** [{f.id}.csv]({f.id}.csv), [pdf]({f.id}.pdf), [json]({f.id}.json)",
                  f"* **Regenerate:** `{COMMAND} --only {f.id}` (runs `notebooks/{f.notebook}.py`"
                  + (f" with {', '.join(f'{k}={v!r}' for k, v in f.params.items())}" if f.params else "")
                  + f"{took}; redraws every figure of that notebook)"]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    from .cli import _Parser  # the package's one-line usage errors (exit 2)

    p = _Parser(prog=COMMAND, description="Regenerate the paper figures: run each notebook that draws one, "
                "headless (papermill), once.")
    p.add_argument("--smoke", action="store_true",
                   help=f"SMOKE=True: tiny sizes, seconds per notebook; writes to {_rel(SMOKE_OUT)}/ by default, "
                        f"never into {_rel(PAPER_FIGURES)}/")
    p.add_argument("--only", nargs="+", metavar="ID", help="only these figure ids (and so their notebooks)")
    p.add_argument("--list", action="store_true", help="print id, notebook and claim of every figure, run nothing")
    p.add_argument("--readme", action="store_true", help="only rewrite README.md in --out from the registry and the "
                   "jsons there, run nothing")
    p.add_argument("--out", type=Path, help=f"where the figures go (default {_rel(PAPER_FIGURES)}/, with "
                   f"--smoke {_rel(SMOKE_OUT)}/)")
    p.add_argument("--executed", type=Path, help=f"where the executed notebooks go (default "
                   f"{_rel(EXECUTED)}/full or /smoke)")
    p.add_argument("--runs", type=Path, metavar="DIR", help="RUNS_DIR of every notebook: where the runs they "
                   "train are cached and shared (default: each notebook's own, runs/course, reusing what is there); "
                   "a new folder trains everything afresh with the code as it is")
    p.add_argument("--jobs", metavar="N", help="notebooks run at once (docs/ARCHITECTURE.md §10), "
                   "with --smoke only (default: the usable cores with --smoke, else 1)")
    return p


def _rel(path: Path) -> str:
    return str(path.relative_to(notebooks.ROOT))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        figures = select(args.only)
        if args.list:
            for f in figures:
                print(f"{f.id}\t{f.notebook}\t{f.claim}")
            return 0
        out = (args.out or (SMOKE_OUT if args.smoke else PAPER_FIGURES)).resolve()
        if args.readme:
            out.mkdir(parents=True, exist_ok=True)
            (out / "README.md").write_text(readme(out))
            return 0
        if args.smoke and out.is_relative_to(PAPER_FIGURES.resolve()):
            raise ValueError(f"--smoke does not write into {_rel(PAPER_FIGURES)}/ (smoke-sized figures are not the "
                             f"paper's): drop --smoke, or give --out elsewhere")
        jobs = jobs_option(args.jobs) if args.jobs is not None else usable_cores() if args.smoke else 1
        executed = (args.executed or EXECUTED / ("smoke" if args.smoke else "full")).resolve()
        failures = generate(figures, args.smoke, out, executed, jobs, args.runs and args.runs.resolve())
    except ValueError as exc:
        print(f"{COMMAND}: error: {exc}", file=sys.stderr)
        return 2
    if not args.smoke:
        (out / "README.md").parent.mkdir(parents=True, exist_ok=True)
        (out / "README.md").write_text(readme(out))
    for line in failures:
        print(f"{COMMAND}: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
