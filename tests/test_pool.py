"""The run pool (``fedmoe_da/pool.py``, docs/ARCHITECTURE.md §10): same files as one process, failures named,
finished runs skipped, bad --jobs refused, Ctrl-C leaves resumable folders."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import smoke_runs

from fedmoe_da import cli, results
from fedmoe_da.pool import PoolFailed, Task, parse_jobs, run_pool

STRATEGIES = "fedmoe_da,fedavg,local"
SAME = ("history.csv", "ledger.csv", "rejections.csv", "aggregation.csv", "clients.csv", "summary.json")


def _compare(out: Path, jobs: int, *extra: str) -> int:
    return cli.main(["compare", "--smoke", "--no-progress", "--strategies", STRATEGIES, "--out", str(out),
                     "--jobs", str(jobs), *extra])


def _files(out: Path) -> dict[str, bytes]:
    """Every file the comparison's results are made of (config.json records out and progress: left out)."""
    found = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    return {k: v for k, v in found.items() if Path(k).name in SAME + ("comparison.csv", "comparison.md")
            or k.startswith(tuple(f"{s}/seed0/matrices/" for s in STRATEGIES.split(",")))}


def test_two_workers_write_the_files_of_one_process_and_a_rerun_skips_finished_runs(tmp_path, capsys):
    assert _compare(tmp_path / "one", 1) == 0
    assert _compare(tmp_path / "two", 2) == 0
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) >= 3 * len(SAME) + 2 and any("/matrices/" in k for k in one), sorted(one)
    assert one.keys() == two.keys()
    assert [k for k in one if one[k] != two[k]] == []
    history = tmp_path / "two" / "fedavg" / "seed0" / "history.csv"
    stamp = history.stat().st_mtime_ns
    capsys.readouterr()
    assert _compare(tmp_path / "two", 2) == 0                # finished runs are read back, not run again
    assert history.stat().st_mtime_ns == stamp
    assert _files(tmp_path / "two") == two


def _fails_on_x(text: str) -> int:
    return int(text)


def test_a_failed_task_is_named_and_the_others_finish():
    tasks = [Task("good", _fails_on_x, ("3",)), Task("bad", _fails_on_x, ("x",), context="config: c.json"),
             Task("also good", _fails_on_x, ("4",))]
    for jobs in (1, 2):
        with pytest.raises(PoolFailed) as info:
            run_pool(tasks, jobs, progress=False)
        assert info.value.failures == ["bad: failed (ValueError: invalid literal for int() with base 10: 'x'); "
                                       "config: c.json"]
        assert info.value.results == [3, None, 4]
    assert run_pool(tasks[::2], 2, progress=False) == [3, 4]


def test_compare_names_a_failed_run_finishes_the_others_and_exits_1(tmp_path, monkeypatch, capsys):
    real = results.run_or_load

    def broken(config):
        if config.strategy == "fedavg":
            raise RuntimeError("first line\nthe last line")
        return real(config)

    monkeypatch.setattr(results, "run_or_load", broken)   # --jobs 1: in this process, so the patch holds
    assert _compare(tmp_path, 1) == 1
    err = capsys.readouterr().err.splitlines()
    assert f"fedmoe-da: fedavg seed 0: failed (RuntimeError: the last line); config: " \
           f"{tmp_path / 'fedavg' / 'seed0' / 'config.json'}" in err
    assert err[-1].startswith("fedmoe-da: error: 1 of 3 runs failed")
    assert (tmp_path / "local" / "seed0" / "summary.json").is_file()


@pytest.mark.parametrize("jobs", ["0", "-1", "x", "1.5", ""])
def test_bad_jobs_is_one_line_before_any_work(jobs, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _compare(tmp_path / "out", jobs)   # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "must be an integer >= 1" in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        parse_jobs(jobs)
    assert parse_jobs("2") == 2


def test_ctrl_c_stops_every_worker_and_a_rerun_finishes(tmp_path):
    argv = [sys.executable, "-m", "fedmoe_da", "compare", "--smoke", "--rounds", "12", "--no-progress",
            "--strategies", "fedavg,local", "--out", str(tmp_path), "--jobs", "2"]
    proc = subprocess.Popen(argv, env=smoke_runs.ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/seed0/checkpoint.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; run the same fedmoe-da compare command again" in err and "Traceback" not in err, err
    time.sleep(0.5)
    assert workers and not [w for w in workers if _alive(w)], workers
    done = subprocess.run(argv, env=smoke_runs.ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all((tmp_path / s / "seed0" / "summary.json").is_file() for s in ("fedavg", "local"))


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")
