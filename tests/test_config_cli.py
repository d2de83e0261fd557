"""Config validation and the command line, through the real entry points.

Every bad value must raise ConfigError with one line naming the field and the
value; the CLI must turn it into exit code 2 and one line on stderr, never a
traceback. Subprocess runs get OMP_NUM_THREADS=1 (tiny models; immune to a
busy second core).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedmoe_da import cli, simulate
from fedmoe_da.config import ConfigError, ExperimentConfig, describe_fields

VENV_BIN = Path(sys.executable).parent
CONSOLE = VENV_BIN / "fedmoe-da"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- config
BAD = [
    ("strategy", "nope"), ("dataset", "nope"), ("partition", "nope"), ("model", "nope"), ("backend", "nope"),
    ("optimizer", "rmsprop"), ("fedmoe_backbone", "p2p"), ("domains", ("original", "nope")),
    ("domains", ("rotate", "rotate")), ("domains", ()), ("top_k", 9), ("top_k", 0), ("P", -1), ("tau", 0),
    ("tau", -0.5), ("tau", float("nan")), ("I", 0), ("alpha", 0), ("alpha", -1.0), ("rounds", 0), ("rounds", 2.0),
    ("participation", 0.0), ("participation", 1.5), ("num_clients", 0), ("num_clients", True),
    ("test_fraction", 1.0), ("domain_purity", 0.0), ("min_samples", 0), ("max_samples", 1), ("num_experts", 0),
    ("batch_size", 0), ("local_epochs", 0), ("lr", 0.0), ("momentum", 1.0), ("mu", -0.1), ("lb_coef", -1.0),
    ("capacity_factor", 0.0), ("seed", -1), ("device", "tpu"), ("shards_per_client", 0),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_invalid_value_raises_one_line_config_error(field, value):
    changes = {field: value}
    if field == "top_k":
        changes["num_experts"] = 4
    config = ExperimentConfig().replace(**changes)
    with pytest.raises(ConfigError) as info:
        config.validate()
    msg = str(info.value)
    assert "\n" not in msg
    shown = repr(tuple(value)) if field == "domains" else repr(value)
    assert f"config.{field}={shown}" in msg, msg


def test_top_k_message_names_the_limit():
    with pytest.raises(ConfigError, match=r"config\.top_k=9 is invalid: .*num_experts \(4\)"):
        ExperimentConfig(top_k=9, num_experts=4).validate()


def test_unknown_field_in_replace_and_from_dict():
    with pytest.raises(ConfigError, match="unknown config field 'colour'") as info:
        ExperimentConfig().replace(colour="red")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="'nope'"):
        ExperimentConfig.from_dict({"rounds": 3, "nope": 1})


def test_more_clients_than_samples_is_config_error():
    with pytest.raises(ConfigError, match="config.num_clients=100000 is invalid") as info:
        simulate(ExperimentConfig(progress=False, backend="torch").smoke().replace(num_clients=100000))
    assert "\n" not in str(info.value)


def test_defaults_and_smoke_are_valid_and_round_trip():
    for config in (ExperimentConfig(), ExperimentConfig().smoke()):
        assert config.validate() is config
        assert ExperimentConfig.from_dict(config.to_dict()) == config
    s = ExperimentConfig().smoke()
    assert s.num_clients <= 4 and s.rounds <= 2 and s.top_k <= s.num_experts <= 4


def test_every_field_is_documented():
    docs = describe_fields()
    missing = [f.name for f in dataclasses.fields(ExperimentConfig) if not docs.get(f.name)]
    assert not missing


# --------------------------------------------------------------------------- CLI: bad values
def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmoe_da", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--top-k", "9", "--num-experts", "4"], ["top_k=9"]),
    (["--tau", "0"], ["tau=0"]),
    (["--clients", "100000", "--smoke"], ["num_clients=100000"]),
])
def test_cli_bad_value_exits_2_with_one_line(tmp_path, args, needles):
    assert_one_line_error(run_cli("run", *args, "--out", str(tmp_path / "o"), "--no-progress", cwd=tmp_path),
                          *needles)
    assert not (tmp_path / "o").exists(), "nothing is written for a bad config"


def in_process(capsys, *args: str) -> tuple[int, str]:
    """cli.main in this process: (exit code, stderr); argparse's SystemExit counts as an exit code."""
    try:
        code = cli.main(list(args))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args", [["--strategy", "nope"], ["--top-k", "abc"]])
def test_cli_argparse_error_is_one_line(capsys, tmp_path, args):
    code, err = in_process(capsys, "run", *args, "--out", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("max_samples", ["5", "20"])
def test_cli_tiny_max_samples_is_one_line_error(capsys, tmp_path, monkeypatch, max_samples):
    monkeypatch.chdir(tmp_path)
    code, err = in_process(capsys, "run", "--smoke", "--max-samples", max_samples, "--no-progress",
                           "--out", str(tmp_path / "o"))
    assert code == 2 and "max_samples" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_gpu_is_one_line_error(capsys, tmp_path):
    code, err = in_process(capsys, "run", "--smoke", "--device", "cuda", "--no-progress",
                           "--out", str(tmp_path / "o"))
    assert code == 2 and "device" in err and len(err.strip().splitlines()) == 1


def test_cli_failed_download_is_one_line_error(capsys, tmp_path, monkeypatch):
    from fedmoe_da.data import real

    def offline(url, dest):
        raise OSError("network is unreachable")

    monkeypatch.setattr(real, "fetch", offline)
    monkeypatch.chdir(tmp_path)
    code, err = in_process(capsys, "run", "--smoke", "--dataset", "mnist", "--no-progress",
                           "--out", str(tmp_path / "o"))
    assert code == 2 and "download" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- CLI: real runs
def test_console_script_run_smoke(tmp_path):
    assert CONSOLE.is_file() and os.access(CONSOLE, os.X_OK)
    out = tmp_path / "run"
    proc = subprocess.run([str(CONSOLE), "run", "--smoke", "--backend", "torch", "--no-progress", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "final personalised accuracy" in proc.stdout and str(out) in proc.stdout
    for name in ("config.json", "history.csv", "ledger.csv", "rejections.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert pd.read_csv(out / "history.csv")["strategy"].unique().tolist() == ["fedmoe_da"]


def test_compare_smoke_writes_table_and_plot(tmp_path):
    out = tmp_path / "cmp"
    proc = run_cli("compare", "--smoke", "--backend", "torch", "--no-progress", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    table = pd.read_csv(out / "comparison.csv")
    assert table["strategy"].tolist() == ["fedmoe_da", "fedavg", "local"]
    local = table.set_index("strategy").loc["local"]
    assert local["server_MB"] == 0 and local["p2p_MB"] == 0
    assert table.set_index("strategy").loc["fedavg", "server_vs_fedavg"] == pytest.approx(1.0)
    md = (out / "comparison.md").read_text()
    assert md.startswith("| strategy |") and all(s in md for s in ("fedmoe_da", "fedavg", "local"))
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    for s in ("fedmoe_da", "fedavg", "local"):
        assert (out / s / "seed0" / "history.csv").is_file()
    assert "server vs FedAvg" in proc.stdout
