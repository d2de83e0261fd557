"""Checkpoint and resume: a run stopped at any point and resumed gives the uninterrupted run's folder, byte for byte.

In-process tests stop a run with an exception at a chosen point (every strategy);
subprocess tests kill ``python -m fedmoe_da run`` for real: SIGKILL at a
chosen point, SIGKILL and SIGINT from outside while it runs.
"""
from __future__ import annotations

import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedmoe_da import cli
from fedmoe_da.config import ConfigError, ExperimentConfig
from fedmoe_da.fl import checkpoint
from fedmoe_da.fl import simulation as sim
from fedmoe_da.fl.run_folder import HISTORY, RunFolder
from fedmoe_da.pool import PoolFailed
from fedmoe_da.results import compare

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SAME_BYTES = ("history.csv", "ledger.csv", "rejections.csv", "aggregation.csv", "clients.csv", "summary.json")


class Stop(Exception):
    """Stands for a crash inside the run."""


def smoke(**changes) -> ExperimentConfig:
    return ExperimentConfig(progress=False, backend="torch", seed=0).smoke().replace(
        **{"rounds": 3, "participation": 0.5, "I": 2, **changes})


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same run: every table and every refresh's matrices/round<r>.npz byte for byte."""
    refreshes = [sorted(p.name for p in (f / "matrices").glob("*")) if (f / "matrices").exists() else []
                 for f in (a, b)]
    assert refreshes[0] == refreshes[1], "matrices/ holds other files"
    for name in SAME_BYTES + tuple(f"matrices/{n}" for n in refreshes[0]):
        assert (a / name).exists() == (b / name).exists(), name
        if (a / name).exists():
            assert filecmp.cmp(a / name, b / name, shallow=False), f"{name} differs"


def stop_at(monkeypatch, rnd: int, point: str) -> None:
    """Raise Stop in round ``rnd``: 'appended' after its history rows (checkpoint still rnd-1), 'saved' after its
    checkpoint."""
    if point == "appended":
        append = RunFolder.append

        def hooked(self, name, rows):
            append(self, name, rows)
            if name == HISTORY and int(rows["round"].iloc[0]) == rnd:
                raise Stop

        monkeypatch.setattr(RunFolder, "append", hooked)
    else:
        save = checkpoint.save

        def hooked(folder, r, *args):
            save(folder, r, *args)
            if r == rnd:
                raise Stop

        monkeypatch.setattr(checkpoint, "save", hooked)


# --------------------------------------------------------------------------- in process: every strategy
CASES = [  # (strategy, config changes, stop round, stop point)
    ("fedmoe_da", {}, 2, "appended"),                                       # round 2 uses the rows of round 1's A
    ("fedmoe_da", {}, 3, "appended"),                                       # a refresh round is redone
    ("fedmoe_da", {"proxy": "gate_delta", "gate_init": "per_client", "sync": "refresh"}, 2, "saved"),
    ("fedmoe_da", {"fedmoe_backbone": "local", "checkpoint_every": 2}, 3, "appended"),  # resumes from round 2
    ("fedavg", {}, 2, "appended"),
    ("fedprox", {}, 1, "saved"),
    ("fedper", {}, 2, "appended"),
    ("fedrep", {}, 2, "appended"),
    ("ditto", {}, 2, "appended"),
    ("local", {}, 1, "appended"),
]


@pytest.mark.parametrize("strategy,changes,rnd,point", CASES,
                         ids=[f"{s}-{'-'.join(c) or 'default'}-{r}-{p}" for s, c, r, p in CASES])
def test_stopped_then_resumed_equals_uninterrupted(tmp_path, monkeypatch, strategy, changes, rnd, point):
    cfg = smoke(strategy=strategy, **changes)
    full = sim.simulate(cfg.replace(out=str(tmp_path / "full")))
    with monkeypatch.context() as m:
        stop_at(m, rnd, point)
        with pytest.raises(Stop):
            sim.simulate(cfg.replace(out=str(tmp_path / "cut")))
    resumed = sim.resume(tmp_path / "cut")
    assert_same_run(tmp_path / "full", tmp_path / "cut")
    pd.testing.assert_frame_equal(resumed.history, full.history)
    pd.testing.assert_frame_equal(resumed.ledger, full.ledger)
    pd.testing.assert_frame_equal(resumed.aggregation, full.aggregation)
    assert resumed.summary == full.summary and sorted(resumed.matrices) == sorted(full.matrices)


def test_checkpoint_is_plain_data_loaded_weights_only(tmp_path):
    """Only tensors, lists, dicts, ints, floats, strings, None; the participants RNG round-trips."""
    out = tmp_path / "run"
    sim.simulate(smoke(strategy="fedmoe_da", rounds=2, out=str(out)))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert set(ckpt) == {"format", "round", "config", "states", "strategy", "rng", "files"}
    assert ckpt["round"] == 2 and ckpt["format"] == checkpoint.FORMAT and ckpt["config"]["out"] == str(out)
    assert {"server_state", "server_version", "held", "A", "pool", "version", "server_gates", "initial_gates",
            "client_rows"} <= set(ckpt["strategy"])
    assert ckpt["files"]["history.csv"] == (out / "history.csv").stat().st_size

    def walk(x):
        if isinstance(x, dict):
            assert all(isinstance(k, (str, int)) for k in x)
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x is None or isinstance(x, (torch.Tensor, bool, int, float, str)), type(x)

    walk(ckpt)
    # the sampler's state: a JSON string that gives back the same stream
    rng = np.random.default_rng(123)
    rng.random(7)
    again = np.random.default_rng()
    again.bit_generator.state = json.loads(json.dumps(rng.bit_generator.state))
    assert (again.random(5) == rng.random(5)).all()


def test_checkpoint_every(tmp_path, monkeypatch):
    """checkpoint_every=2 saves rounds 0 (the start), 2 and 4 of 5; 0 saves none."""
    saved = []
    save = RunFolder.save_checkpoint

    def spy(self, payload):
        saved.append(payload["round"])
        save(self, payload)

    monkeypatch.setattr(RunFolder, "save_checkpoint", spy)
    sim.simulate(smoke(strategy="fedavg", rounds=5, checkpoint_every=2, out=str(tmp_path / "two")))
    sim.simulate(smoke(strategy="fedavg", rounds=2, checkpoint_every=0, out=str(tmp_path / "never")))
    assert saved == [0, 2, 4] and not (tmp_path / "never" / "checkpoint.pt").exists()


def test_resuming_a_finished_run_reads_it_back(tmp_path, monkeypatch):
    out = tmp_path / "run"
    full = sim.simulate(smoke(strategy="fedmoe_da", out=str(out)))
    monkeypatch.setattr(sim, "_simulate", lambda *a: pytest.fail("a finished run is not run again"))
    again = sim.resume(out)
    assert again.summary == full.summary and again.run_dir == str(out)
    pd.testing.assert_frame_equal(again.history, full.history, check_dtype=False)


def test_resume_refusals_are_one_line(tmp_path, monkeypatch, capsys):
    """No folder, no checkpoint (checkpoint_every=0), another config, flags beside --resume: exit 2, one line."""
    never, run = tmp_path / "never", tmp_path / "run"
    with monkeypatch.context() as m:
        stop_at(m, 2, "appended")
        for cfg in (smoke(strategy="fedavg", checkpoint_every=0, out=str(never)),
                    smoke(strategy="fedavg", out=str(run))):
            with pytest.raises(Stop):
                sim.simulate(cfg)

    with pytest.raises(ConfigError, match="has no checkpoint.pt"):
        sim.resume(never)
    with pytest.raises(ConfigError, match=r"config\.lr is 0\.003 there, 0\.1 here"):
        sim.simulate(smoke(strategy="fedavg", out=str(run), lr=0.1), resume=True)
    with pytest.raises(ConfigError, match="resuming needs the run folder"):
        sim.simulate(smoke(strategy="fedavg"), resume=True)
    for argv, says in ((["run", "--resume", str(tmp_path / "nothing")], "has no config.json"),
                       (["run", "--resume", str(never)], "has no checkpoint.pt"),
                       (["run", "--resume", str(run), "--rounds", "5"], "--rounds cannot be given with it"),
                       (["run", "--resume", str(run), "--smoke"], "--smoke cannot be given with it")):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert cli.main(["run", "--resume", str(run), "--no-progress"]) == 0   # the run itself was fine


def test_checkpoint_from_a_file_runs_no_code(tmp_path):
    """A checkpoint.pt holding an object is refused by weights_only: nothing runs, one-line ConfigError."""
    out = tmp_path / "run"
    sim.simulate(smoke(strategy="fedavg", rounds=1, out=str(out)))
    marker = tmp_path / "pwned"
    torch.save({"format": checkpoint.FORMAT, "x": Evil(str(marker))}, out / "checkpoint.pt")
    (out / "summary.json").unlink()
    with pytest.raises(ConfigError, match="checkpoint.pt cannot be read"):
        sim.resume(out)
    assert not marker.exists()


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous checkpoint whole and no temporary file."""
    folder = RunFolder(tmp_path)
    folder.save_checkpoint({"round": 1})

    def dies(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        folder.save_checkpoint({"round": 2})
    assert folder.load_checkpoint() == {"round": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_compare_resumes_an_unfinished_run(tmp_path, monkeypatch):
    """compare: the finished run is read back, the stopped one continues from its checkpoint; the same table."""
    cfg = smoke(rounds=3)
    table_full, _ = compare(cfg.replace(out=str(tmp_path / "full")), ("fedavg", "fedmoe_da"))
    with monkeypatch.context() as m:
        append = RunFolder.append

        def hooked(self, name, rows):   # fedmoe_da stops in round 2
            append(self, name, rows)
            if name == HISTORY and "fedmoe_da" in str(self.path) and int(rows["round"].iloc[0]) == 2:
                raise Stop

        m.setattr(RunFolder, "append", hooked)
        with pytest.raises(PoolFailed, match=r"fedmoe_da seed 0: failed \(Stop\)"):   # fedavg finished
            compare(cfg.replace(out=str(tmp_path / "cut")), ("fedavg", "fedmoe_da"))
    restored, simulated = [], []
    restore, run = checkpoint.restore, sim._simulate
    monkeypatch.setattr(checkpoint, "restore", lambda folder, *a: (restored.append(folder.path.parent.name),
                                                                   restore(folder, *a))[1])
    monkeypatch.setattr(sim, "_simulate", lambda config, *a: (simulated.append(config.strategy), run(config, *a))[1])
    table, _ = compare(cfg.replace(out=str(tmp_path / "cut")), ("fedavg", "fedmoe_da"))
    assert simulated == ["fedmoe_da"] and restored == ["fedmoe_da"]
    pd.testing.assert_frame_equal(table, table_full)
    for label in ("fedavg", "fedmoe_da"):
        assert_same_run(tmp_path / "full" / label / "seed0", tmp_path / "cut" / label / "seed0")


# --------------------------------------------------------------------------- subprocesses: kill -9 and Ctrl-C
# The child is `python -m fedmoe_da run ...` with a hook: 'appended' / 'saved' sends itself a signal at that
# point of round r (deterministic); 'slow' sleeps after each round's history rows, for a signal from outside.
HOOK = """
import os, signal, sys, time
from fedmoe_da import cli
from fedmoe_da.fl import checkpoint, run_folder
point, rnd, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
if point in ("appended", "slow"):
    append = run_folder.RunFolder.append
    def hooked(self, name, rows):
        append(self, name, rows)
        if name == run_folder.HISTORY and point == "slow":
            time.sleep(0.5)
        elif name == run_folder.HISTORY and int(rows["round"].iloc[0]) == rnd:
            os.kill(os.getpid(), sig)
    run_folder.RunFolder.append = hooked
else:
    save = checkpoint.save
    def hooked(folder, r, *args):
        save(folder, r, *args)
        if r == rnd:
            os.kill(os.getpid(), sig)
    checkpoint.save = hooked
sys.exit(cli.main(sys.argv[4:]))
"""


def run_args(strategy: str, out: Path) -> list[str]:
    return ["run", "--smoke", "--backend", "torch", "--no-progress", "--strategy", strategy, "--participation", "0.5",
            "--I", "2", "--rounds", "4", "--out", str(out)]


def child(point: str, rnd: int, sig: str, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOOK, point, str(rnd), sig, *argv], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted CLI run of each strategy (in process: the same argv)."""
    base = tmp_path_factory.mktemp("uninterrupted")
    for strategy in ("fedmoe_da", "fedavg"):
        assert cli.main(run_args(strategy, base / strategy)) == 0
    return base


@pytest.mark.parametrize("strategy,point,rnd", [("fedmoe_da", "appended", 3), ("fedmoe_da", "saved", 1),
                                                ("fedavg", "appended", 2)])
def test_kill9_then_resume_is_byte_identical(tmp_path, uninterrupted, strategy, point, rnd):
    out = tmp_path / "run"
    proc = child(point, rnd, "SIGKILL", run_args(strategy, out))
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    rows = pd.read_csv(out / "history.csv")["round"].max()
    assert rows == rnd and checkpoint.saved_round(out) == (rnd if point == "saved" else rnd - 1)
    assert cli.main(["run", "--resume", str(out)]) == 0
    assert_same_run(uninterrupted / strategy, out)


def wait_for_round(out: Path, rnd: int, proc: subprocess.Popen, clients: int = 4) -> None:
    """Until history.csv holds round ``rnd``'s rows (header + rnd * clients lines)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "history.csv").exists() and len((out / "history.csv").read_text().splitlines()) > rnd * clients:
            return
        time.sleep(0.02)
    pytest.fail(f"round {rnd} never appeared (exit code {proc.poll()})")


def test_kill9_from_outside_then_resume_in_a_subprocess(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = child("slow", 0, "SIGKILL", run_args("fedmoe_da", out))
    wait_for_round(out, 2, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (out / "summary.json").exists()
    done = subprocess.run([sys.executable, "-m", "fedmoe_da", "run", "--resume", str(out), "--no-progress"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"run folder: {out}" in done.stdout
    assert_same_run(uninterrupted / "fedmoe_da", out)


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = child("slow", 0, "SIGINT", run_args("fedavg", out))
    wait_for_round(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert f"continue with: fedmoe-da run --resume {out}" in stderr
    assert re.search(r"round [12] is saved", stderr), stderr   # the signal lands in round 2 (after its rows)
    assert cli.main(["run", "--resume", str(out)]) == 0
    assert_same_run(uninterrupted / "fedavg", out)


def test_ctrl_c_in_compare_says_to_run_it_again(tmp_path, monkeypatch, capsys):
    from fedmoe_da import results

    def interrupted(config, resume=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "simulate", interrupted)
    # in-process (--jobs 1), where the patched simulate runs; tests/test_pool.py interrupts worker processes
    assert cli.main(["compare", "--smoke", "--no-progress", "--jobs", "1", "--out", str(tmp_path / "cmp")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run the same fedmoe-da compare command again" in err
