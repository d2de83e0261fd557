"""This package's simulator against Flower's simulation engine on the same workload: seconds per round.

    python3 -m venv .venv-flower && .venv-flower/bin/pip install torch==2.13.0 \\
        && .venv-flower/bin/pip install -e ".[flower]"
    .venv-flower/bin/python benchmarks/vs_flower.py                           # 20 and 100 clients, 5 rounds, 2 repeats
    .venv-flower/bin/python benchmarks/vs_flower.py --clients 20 --rounds 3 --repeats 1 --engine stacked loop
    .venv-flower/bin/python benchmarks/vs_flower.py --threads 2 --out /tmp/vs_flower_t2   # this package on 2 threads

The workload is one and the same on both sides: the package's default config with strategy ``fedavg``
(its model, data, partition, Adam, batch order and local epochs), FedAvg weighted by training-set size,
no evaluation. Flower's side runs Flower's own simulation engine (``flwr.simulation.run_simulation``, Ray
backend, the Message API's ``ServerApp`` with ``flwr.serverapp.strategy.FedAvg(fraction_evaluate=0)``); its
``ClientApp`` trains client ``partition-id`` with this package's ``Trainer`` on that client's data, from the
round's global model, with the same batch-order seed as the simulator. The two global models are compared
after round 1 (only the order of the floating-point sums differs: about 1e-8 with the ``loop`` engine; the
``stacked`` engine's batched products round differently and Adam's normalised steps amplify that within the
round: about 1e-5 at 20 clients, 3e-2 at 4 clients, whose clients take 5x the steps) and after the last round
(amplified further, to about 1e-3 after a few rounds).

Same core budget: both sides are pinned to ``--cores`` (default 0,1) with ``taskset``. Flower gets one CPU
per client actor (so as many actors as cores), one torch thread each; this package runs one process with
``--threads`` torch threads (the config's ``threads``; default 1, so by default it uses one of the cores:
``--threads 2`` lets it use both, as Flower's two actors do). The rows record ``threads`` (torch threads per
process, read inside this package's run) and ``processes`` (1, or Flower's actors).
Runs alternate (package, Flower, package, Flower, ...; with several engines, each engine in turn), each in a
fresh subprocess. Timing:

* this package: rounds timed by hooks around the runner (``sim_throughput.RoundClock``); the runner always
  evaluates every client after a round, so ``s_per_round`` here is local training + communication only
  (``begin_round`` to the end of ``communicate``), evaluation excluded; ``with_eval_s`` is the whole round;
* Flower: a round ends when ``aggregate_train`` returns; round r takes end(r) - end(r-1). ``ray_start_s``
  is the time inside ``ray.init``; round 1 (actors start, each builds the data) is reported apart;
* both: ``s_per_round`` is the median over rounds 2..R, then the median over repeats; ``ratio`` =
  Flower / this package.

Writes ``<out>/vs_flower.csv`` (one row per run), ``<out>/rounds.csv`` and ``<out>/vs_flower.json``
(machine, load averages, versions, config, the ratios).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sim_throughput import Parser, RoundClock, check_args, load_average, machine, make_config, uncommitted  # noqa: E402

MARK = "VS_FLOWER_RESULT "
CONFIG_KEY = "fedmoe-config"   # the ConfigRecord entry carrying the workload's config (JSON) to every ClientApp


def workload(clients: int, rounds: int, engine: str, threads: int = 1):
    """The shared workload: the default config, FedAvg, data read from the repo's data folder; ``threads``: the
    torch threads of this package's run (Flower's actors always train with one, see ``_client_env``)."""
    return make_config(clients, rounds, "fedavg", engine, progress=False, threads=threads,
                       data_dir=str(HERE.parent / "data"))


# --------------------------------------------------------------------------- this package
def run_package(clients: int, rounds: int, engine: str, threads: int, save: Path) -> dict:
    import torch

    from fedmoe_da.fl import simulation

    config = workload(clients, rounds, engine, threads)
    clock = RoundClock()
    clock.install(simulation)
    globals_ = {}   # "round1", "final": the server's global model
    make = simulation.make_strategy

    def keep(*a, **k):
        strategy = make(*a, **k)
        communicate = strategy.communicate

        def snapshot(rnd, *b, **kw):
            out = communicate(rnd, *b, **kw)
            globals_["round1" if rnd == 1 else "final"] = {n: t.clone() for n, t in strategy.server_state.items()}
            return out

        strategy.communicate = snapshot
        return strategy

    simulation.make_strategy = keep
    start = time.perf_counter()
    simulation.simulate(config)
    total = time.perf_counter() - start
    rows = [{**r, "seconds_no_eval": r["train_s"] + r["comm_s"]} for r in clock.rounds()]
    torch.save(globals_, save)
    return {"rounds": [{"round": r["round"], "seconds": r["seconds_no_eval"], "with_eval_s": r["seconds"]}
                       for r in rows],
            "setup_s": total - sum(r["seconds"] for r in rows), "ray_start_s": float("nan"),
            "threads": clock.threads, "processes": 1}


# --------------------------------------------------------------------------- Flower
_ENVS: dict[str, dict] = {}   # per actor process: config JSON -> data, clients, trainer (built on first use)


def _client_env(config_json: str) -> dict:
    if config_json not in _ENVS:
        import torch

        from fedmoe_da import data as data_mod
        from fedmoe_da import models
        from fedmoe_da.config import ExperimentConfig
        from fedmoe_da.fl.client import Trainer

        torch.set_num_threads(1)
        config = ExperimentConfig.from_dict(json.loads(config_json))
        dataset = data_mod.build(config)
        model = models.build(config, dataset.input_shape, dataset.num_classes)
        _ENVS[config_json] = {"config": config, "clients": data_mod.partition(dataset, config),
                              "trainer": Trainer(model, config)}
    return _ENVS[config_json]


def flower_train(msg, context):
    """Flower ClientApp train: client ``partition-id`` trains from the round's global model with the package's
    Trainer."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from fedmoe_da import seeds

    cfg = msg.content["config"]
    env = _client_env(str(cfg[CONFIG_KEY]))
    k, rnd = int(context.node_config["partition-id"]), int(cfg["server-round"])
    c, config = env["clients"][k], env["config"]
    state = {n: t.clone() for n, t in msg.content["arrays"].to_torch_state_dict().items()}
    new, loss = env["trainer"].train(state, c.x_train, c.y_train, seeds.integer_seed(config.seed, "batches", rnd, k))
    reply = RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord({"num-examples": c.num_train,
                                                                              "train_loss": loss})})
    return Message(content=reply, reply_to=msg)


def run_flower(clients: int, rounds: int, cpus: int, save: Path) -> dict:
    import ray
    import torch
    import vs_flower  # this file as a module: Ray's actors import flower_train from it by name
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedmoe_da import data as data_mod
    from fedmoe_da import models, seeds
    from fedmoe_da.fl.state import get_state

    config = workload(clients, rounds, "loop")
    dataset = data_mod.build(config)
    torch.manual_seed(seeds.integer_seed(config.seed, "init", 0))   # the simulator's initial model
    initial = get_state(models.build(config, dataset.input_shape, dataset.num_classes))
    marks: dict[str, list[float]] = {"begin": [], "end": []}
    ray_start = []
    ray_init = ray.init

    def timed_init(*a, **k):
        t = time.perf_counter()
        out = ray_init(*a, **k)
        ray_start.append(time.perf_counter() - t)
        return out

    ray.init = timed_init

    class TimedFedAvg(FedAvg):
        def configure_train(self, *a, **k):
            marks["begin"].append(time.perf_counter())
            return super().configure_train(*a, **k)

        def aggregate_train(self, server_round, *a, **k):
            out = super().aggregate_train(server_round, *a, **k)
            marks["end"].append(time.perf_counter())
            if server_round == 1 and out[0] is not None:
                globals_["round1"] = {n: t.clone() for n, t in out[0].to_torch_state_dict().items()}
            return out

    globals_: dict[str, dict] = {}   # "round1", "final": the global model
    server = ServerApp()

    @server.main()
    def _main(grid, context):
        strategy = TimedFedAvg(fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=rounds,
                                train_config=ConfigRecord({CONFIG_KEY: json.dumps(config.to_dict())}))
        globals_["final"] = {n: t.clone() for n, t in result.arrays.to_torch_state_dict().items()}

    client = ClientApp()
    client.train()(vs_flower.flower_train)
    start = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cpus, "num_gpus": 0}})
    if len(marks["end"]) != rounds or "final" not in globals_:
        raise RuntimeError(f"Flower finished {len(marks['end'])} of {rounds} rounds")
    torch.save(globals_, save)
    ends = marks["end"]
    rows = [{"round": r + 1, "seconds": ends[r] - (marks["begin"][0] if r == 0 else ends[r - 1]),
             "with_eval_s": float("nan")} for r in range(rounds)]
    return {"rounds": rows, "setup_s": marks["begin"][0] - start,
            "ray_start_s": ray_start[0] if ray_start else float("nan"),
            "threads": 1, "processes": cpus}   # _client_env sets one torch thread per actor; one actor per CPU


# --------------------------------------------------------------------------- driver
def child(args) -> None:
    save = Path(args.save)
    if args.side == "flower":
        got = run_flower(args.clients, args.rounds, args.cpus, save)
    else:
        got = run_package(args.clients, args.rounds, args.engine, args.threads, save)
    print(MARK + json.dumps(got), flush=True)


def max_abs_diff(a: Path, b: Path, key: str) -> float:
    """Largest |difference| between two saved global models (``key``: round1 or final)."""
    import torch

    x, y = torch.load(a)[key], torch.load(b)[key]
    if set(x) != set(y):
        raise RuntimeError(f"the global models differ in their tensors: {sorted(set(x) ^ set(y))}")
    return max(float((x[n].float() - y[n].float()).abs().max()) for n in x)


def run_child(side: str, engine: str, n: int, args, save: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--clients", str(n), "--rounds", str(args.rounds),
           "--engine", engine, "--cpus", str(len(args.cores.split(","))), "--threads", str(args.threads),
           "--save", str(save)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", args.cores] + cmd
    threads = str(args.threads if side == "package" else 1)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "FLWR_TELEMETRY_ENABLED": "0"}   # Flower otherwise posts events over the network from each run
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr.strip().splitlines() or ["?"])[-15:])
        sys.exit(f"{side} with {n} clients failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(MARK):])


def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--engine", nargs="+", default=None,
                    help="this package's engines (default: the config's default; 'loop' without the field)")
    ap.add_argument("--cores", default="0,1", help="CPU list both sides are pinned to (taskset -c)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of this package's run (>= 1); Flower's actors keep one each")
    ap.add_argument("--out", default="benchmarks/results/vs_flower")
    ap.add_argument("--child", choices=("package", "flower"), help=argparse.SUPPRESS)
    ap.add_argument("--cpus", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    check_args(args)
    if args.child:
        args.side, args.clients, args.engine = args.child, args.clients[0], args.engine[0]
        return child(args)

    import importlib.metadata as md

    import pandas as pd

    from fedmoe_da.fl.run_folder import versions

    try:
        flwr_version, ray_version = md.version("flwr"), md.version("ray")
    except md.PackageNotFoundError:
        sys.exit("Flower is not installed in this interpreter: run this script with .venv-flower/bin/python "
                 "(see the module docstring)")
    info = {"machine": machine(), "load_before": load_average(), "cores": args.cores,
            "args": {k: v for k, v in vars(args).items() if k not in ("child", "cpus", "save")},
            "versions": {**versions(), "flwr": flwr_version, "ray": ray_version}, "uncommitted": uncommitted(),
            "config": workload(args.clients[0], args.rounds, args.engine[0], args.threads).to_dict()}
    print(f"{info['machine']['cpu']}, {info['machine']['cores']} cores, pinned to {args.cores}; this package "
          f"{args.threads} torch thread(s), Flower one per actor; Flower {flwr_version}, Ray {ray_version}; "
          f"load average {info['load_before']}", flush=True)
    runs, rounds = [], []
    sides = [("package", e) for e in args.engine] + [("flower", "-")]
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            for rep in range(args.repeats):
                saved = {}
                for side, engine in sides:   # alternating: package (each engine), Flower, package, Flower, ...
                    load = load_average()
                    saved[(side, engine)] = Path(tmp) / f"{side}_{engine}.pt"
                    got = run_child(side, engine if side == "package" else args.engine[0], n, args,
                                    saved[(side, engine)])
                    steady = got["rounds"][1:]
                    row = {"clients": n, "side": side, "engine": engine, "repeat": rep,
                           "s_per_round": statistics.median(r["seconds"] for r in steady),
                           "with_eval_s": statistics.median(r["with_eval_s"] for r in steady),
                           "first_round_s": got["rounds"][0]["seconds"], "setup_s": got["setup_s"],
                           "ray_start_s": got["ray_start_s"], "threads": got["threads"],
                           "processes": got["processes"], "load1_before": load[0],
                           "load1_after": load_average()[0]}
                    runs.append(row)
                    rounds += [{"clients": n, "side": side, "engine": engine, "repeat": rep, **r}
                               for r in got["rounds"]]
                    print(f"{n:4d} clients, repeat {rep}, {side:>7s} {engine:>7s}: {row['s_per_round']:.3f} s/round "
                          f"(round 1 {row['first_round_s']:.2f} s, setup {row['setup_s']:.2f} s, Ray start "
                          f"{row['ray_start_s']:.2f} s), {row['processes']} process(es) x {row['threads']} "
                          f"thread(s), load {load[0]:.2f}", flush=True)
                flower = saved[("flower", "-")]
                for side, engine in sides[:-1]:
                    diff = {key: max_abs_diff(saved[(side, engine)], flower, key) for key in ("round1", "final")}
                    runs[-len(sides) + sides.index((side, engine))].update(
                        {"round1_max_abs_diff_vs_flower": diff["round1"],
                         "final_max_abs_diff_vs_flower": diff["final"]})
                    print(f"     global model, {engine} vs Flower: max |diff| {diff['round1']:.1e} after round 1, "
                          f"{diff['final']:.1e} after round {args.rounds} (Adam amplifies rounding differences)")
    df = pd.DataFrame(runs)
    med = df.groupby(["clients", "side", "engine"])["s_per_round"].median()
    ratios = []
    for n in args.clients:
        for engine in args.engine:
            pkg, flw = med[(n, "package", engine)], med[(n, "flower", "-")]
            ratios.append({"clients": n, "engine": engine, "package_threads": args.threads,
                           "package_s_per_round": pkg, "flower_s_per_round": flw, "ratio": flw / pkg})
            print(f"{n:4d} clients: this package ({engine}, {args.threads} thread(s)) {pkg:.3f} s/round, Flower "
                  f"{flw:.3f} s/round: {flw / pkg:.1f}x", flush=True)
    info["ratios"], info["load_after"] = ratios, load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "vs_flower.csv", index=False)
    pd.DataFrame(rounds).to_csv(out / "rounds.csv", index=False)
    (out / "vs_flower.json").write_text(json.dumps(info, indent=2, default=str))
    print(f"wrote {out}/vs_flower.csv, rounds.csv, vs_flower.json; load average {info['load_after']}")


if __name__ == "__main__":
    main()
