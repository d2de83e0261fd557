"""The torch.distributed runner (``fl/distributed/``): real torchrun jobs of 3 processes over gloo on loopback.

The oracle is the in-process run of the same command: the same seed must give
byte-identical history.csv, ledger.csv, rejections.csv and summary.json with the
loop engine. The stacked engine trains each rank's clients together, so its
numbers may differ from the in-process run's in the last bits (a client's result
does not depend on who trains beside it beyond float rounding): equal ledgers,
histories within 1e-5. A
rank killed mid-run (``FEDMOE_DA_KILL``: SIGKILL at the start of a
round) must stop the job with one line naming it, and with ``--max-restarts``
the group restarts and resumes from the checkpoint to the same result.
Smoke sizes, 2 rounds: each job takes about 10 s on two busy cores.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from fedmoe_da import cli
from fedmoe_da.fl.distributed import is_control, pack, rank_of, unpack
from fedmoe_da.fl.transport import SERVER

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available() and os.name == "posix"),
                                reason="torchrun jobs here need gloo and POSIX signals")

FLAGS = ["--smoke", "--no-progress", "--backend", "torch", "--rounds", "2", "--dist-timeout", "15", "--engine", "loop"]
CASES = {
    "fedavg": ["--strategy", "fedavg"],
    # A refreshed every round, a quarter of the clients sit out, the screen rejects most P2P experts
    "fedmoe_da": ["--strategy", "fedmoe_da", "--I", "1", "--participation", "0.75", "--p2p-screen", "0.05"],
}
COMPARED = ("history.csv", "ledger.csv", "rejections.csv", "summary.json")


def torchrun(out, flags, nproc=3, env=None, extra=()) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node N [extra] -m fedmoe_da run ... --out OUT``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *extra,
           "-m", "fedmoe_da", "run", *FLAGS, *flags, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**clean, **(env or {})})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process run of each case, through the same CLI."""
    root = tmp_path_factory.mktemp("in_process")
    for name, flags in CASES.items():
        assert cli.main(["run", *FLAGS, *flags, "--out", str(root / name)]) == 0
    return root


def same_files(a, b) -> None:
    for name in COMPARED:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs from the in-process run's"


@needs_gloo
@pytest.mark.parametrize("name", list(CASES))
def test_three_processes_match_in_process(name, reference, tmp_path):
    """Rank 0 the server, ranks 1 and 2 two clients each: identical history, ledger, rejections and summary."""
    proc = torchrun(tmp_path / name, CASES[name])
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_files(tmp_path / name, reference / name)
    stats = re.search(r"^distributed: .*\"ranks\": 3, \"backend\": \"gloo\"", proc.stdout, re.M)
    assert stats, proc.stdout
    if name == "fedmoe_da":   # the screen did reject, and the rejections reached rank 0's files
        assert (tmp_path / name / "rejections.csv").read_text().count("p2p screen") > 5


@needs_gloo
@pytest.mark.equivalence
def test_stacked_engine_across_ranks_matches_in_process(tmp_path):
    import pandas as pd

    flags = [*CASES["fedmoe_da"], "--engine", "stacked", "--dtype", "float64"]   # rounding independent of the CPU
    assert cli.main(["run", *FLAGS, *flags, "--out", str(tmp_path / "one")]) == 0
    proc = torchrun(tmp_path / "three", flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("ledger.csv", "rejections.csv"):
        assert (tmp_path / "three" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    a, b = (pd.read_csv(tmp_path / d / "history.csv") for d in ("one", "three"))
    assert a.columns.equals(b.columns) and len(a) == len(b)
    num = a.select_dtypes("number").columns
    assert ((a[num] - b[num]).abs().fillna(0) <= 1e-9).all().all()


@needs_gloo
def test_killed_rank_stops_the_job_with_one_line(tmp_path):
    """Rank 2 dies (SIGKILL) in round 2: non-zero exit well within the timeout, one line naming rank 2."""
    start = time.monotonic()
    proc = torchrun(tmp_path / "run", CASES["fedavg"], env={"FEDMOE_DA_KILL": "2:2"})
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fedmoe-da: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    # rank 2 is named as dead, or (with the ranks starved of CPU, e.g. all pinned to one core) as silent beside
    # a slow survivor; either way one line, the round, and what is saved
    assert re.match(r"fedmoe-da: error: (.*; )?rank 2 \(clients 1, 3\) (died|stopped answering).* during round 2"
                    r"[,;] .*Round 1 is saved", lines[0]), lines[0]
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not re.search(r'File ".*fedmoe_da/', proc.stderr), proc.stderr   # no worker traceback (torchrun's own only)


@needs_gloo
def test_restart_resumes_from_the_checkpoint(reference, tmp_path):
    """Same kill with --max-restarts 1: the group restarts, resumes from round 1 and ends as the in-process run."""
    proc = torchrun(tmp_path / "run", CASES["fedmoe_da"], env={"FEDMOE_DA_KILL": "2:2"}, extra=["--max-restarts=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 2 was killed: the survivors name it, unless torchrun's agent tore them down first (it restarts the
    # group as soon as it sees the SIGKILL, a race), in which case the agent's own line names it
    assert ("rank 2 (clients 1, 3) died during round 2" in proc.stderr
            or re.search(r"exitcode: -9\) local_rank: 2 ", proc.stderr)), proc.stderr[-3000:]
    assert '"rounds": 1' in proc.stdout   # the second attempt ran round 2 only
    same_files(tmp_path / "run", reference / "fedmoe_da")


# --------------------------------------------------------------------------- the pieces, in process
def test_placement():
    assert [rank_of(k, 3) for k in (SERVER, 0, 1, 2, 3)] == [0, 1, 2, 1, 2]
    assert [rank_of(k, 5) for k in range(6)] == [1, 2, 3, 4, 1, 2]
    assert {rank_of(k, 1) for k in (SERVER, 0, 7)} == {0}
    assert is_control("A[0]") and not any(map(is_control, ["backbone", "head", "gate[1]", "expert[0][3]"]))


def test_pack_round_trip():
    payload = {"w": torch.randn(3, 4), "i": torch.arange(6).reshape(2, 3), "b": torch.tensor([True, False]),
               "h": torch.randn(5, dtype=torch.float64)[1::2], "s": torch.tensor(2.5), "e": torch.empty(0, 7)}
    got, extra = unpack(pack(payload, {"expect": {"w": [3, 4]}}), "cpu")
    assert extra == {"expect": {"w": [3, 4]}}
    assert list(got) == list(payload)
    for name, t in payload.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t)
