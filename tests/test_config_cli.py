"""Config validation and the command line, through the real entry points.

Every bad value must raise ConfigError with one line naming the field and the
value; the CLI must turn it into exit code 2 and one line on stderr, never a
traceback. Subprocess runs get OMP_NUM_THREADS=1 (tiny models; immune to a
busy second core).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedmoe_da import cli, simulate
from fedmoe_da import config as config_module
from fedmoe_da.config import (
    COMPARE_STRATEGIES,
    DATASETS,
    DIGIT_DOMAINS,
    DOMAINS,
    STRATEGIES,
    ConfigError,
    ExperimentConfig,
    describe_fields,
    reference_table,
)
from fedmoe_da.results import folder_name
from fedmoe_da.rules import Bool, Choice

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
    # wrong Python types from the API
    ("participation", "0.5"), ("device", None), ("out", 123), ("out", ""), ("rounds", 2.0), ("num_clients", True),
    ("lr", "0.1"), ("progress", "yes"), ("domains", "rotate"), ("dataset", None), ("max_samples", 3.0),
    # too large, infinite or NaN
    ("seed", 2**63), ("seed", 2**70), ("num_experts", 2**64), ("alpha", math.inf), ("lr", math.inf),
    ("tau", math.inf), ("tau", math.nan), ("mu", math.inf), ("capacity_factor", math.inf), ("device", "cudax"),
    # fields for the baselines and FedMoE-DA's options
    ("proxy", "nope"), ("gate_init", "nope"), ("sync", "nope"), ("min_correlation", 1.0),
    ("min_correlation", -1.5), ("min_correlation", math.nan), ("ditto_lambda", -0.1), ("ditto_lambda", math.inf),
    ("head_epochs", -1), ("threads", 0), ("domains", ("rotate",)),
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
    assert f"config.{field}={getattr(config, field)!r} is invalid: must be" in msg, msg


def test_message_says_what_is_allowed():
    cases = {"seed": (2**70, "an integer in [0, 2**63)"), "alpha": (math.inf, "a finite number > 0"),
             "participation": ("0.5", "a finite number in (0, 1]"), "device": (None, "'cpu', 'cuda'"),
             "min_correlation": (1.0, "None or a finite number in [-1, 1)"),
             "strategy": ("x", "one of " + ", ".join(STRATEGIES)), "num_experts": (2**64, "below 2**63")}
    for field, (value, allowed) in cases.items():
        with pytest.raises(ConfigError, match=f"config.{field}=.* is invalid: must be .*{re.escape(allowed)}"):
            ExperimentConfig().replace(**{field: value}).validate()


def test_domains_are_checked_against_the_dataset():
    assert ExperimentConfig(dataset="digit_domains", domains=("mnist", "synth")).validate()
    assert ExperimentConfig(dataset="digit_domains").validate().domain_names() == DIGIT_DOMAINS
    assert ExperimentConfig().validate().domain_names() == DIGIT_DOMAINS          # the default dataset's own
    assert ExperimentConfig(dataset="digits").validate().domain_names() == DOMAINS
    assert ExperimentConfig(domains=["mnist", "synth"]).domains == ("mnist", "synth")   # JSON lists become tuples
    with pytest.raises(ConfigError, match=r"config\.domains=\('rotate',\) is invalid: .*mnist, usps, mnistm, synth"):
        ExperimentConfig(dataset="digit_domains", domains=("rotate",)).validate()
    with pytest.raises(ConfigError, match=r"config\.domains=\('usps',\) is invalid: .*original, rotate"):
        ExperimentConfig(dataset="digits", domains=("usps",)).validate()


def test_out_must_be_a_usable_folder_and_validate_creates_nothing(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, fragment in [(a_file, "exists and is not a directory"), (a_file / "sub", "is a file, not a directory")]:
        with pytest.raises(ConfigError, match=f"config.out=.* is invalid: .*{fragment}") as info:
            ExperimentConfig(out=str(out)).validate()
        assert "\n" not in str(info.value)
    new = tmp_path / "a" / "b" / "c"
    ExperimentConfig(out=str(new)).validate()
    ExperimentConfig(out=str(tmp_path)).validate()
    assert not (tmp_path / "a").exists(), "validate() must not create the folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_out_in_an_unwritable_folder_is_invalid(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError, match="config.out=.* is invalid: .*not writable"):
            ExperimentConfig(out=str(locked / "run")).validate()
        with pytest.raises(ConfigError, match="config.out=.* is invalid: .*cannot write"):
            ExperimentConfig(out=str(locked)).validate()
    finally:
        locked.chmod(0o700)


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
    for config in (ExperimentConfig(), ExperimentConfig().smoke(),
                   ExperimentConfig(dataset="digits", domains=("rotate", "blur"))):
        assert config.validate() is config
        assert ExperimentConfig.from_dict(config.to_dict()) == config
        assert ExperimentConfig.from_dict(json.loads(config.to_json())) == config
    s = ExperimentConfig().smoke()
    assert s.num_clients <= 4 and s.rounds <= 2 and s.top_k <= s.num_experts <= 4


SIZES = {"num_clients": 4, "max_samples": 400, "d_model": 16, "expert_hidden": 16, "num_experts": 4,
         "moe_layers": 1, "rounds": 2, "local_epochs": 1, "min_samples": 4}


def test_smoke_shrinks_only_sizes():
    asked = ExperimentConfig(P=8, I=5, tau=0.3, rounds=10, lr=0.01, strategy="fedavg", top_k=3, proxy="domain",
                             alpha=0.1, batch_size=32, seed=7)
    small = asked.smoke()
    changed = {f.name for f in dataclasses.fields(asked) if getattr(small, f.name) != getattr(asked, f.name)}
    assert changed <= set(SIZES) | {"top_k"}, changed - set(SIZES)
    assert (small.P, small.I, small.tau, small.lr, small.strategy, small.proxy) == (8, 5, 0.3, 0.01, "fedavg", "domain")
    assert all(getattr(small, name) <= cap for name, cap in SIZES.items())
    assert small.top_k == 3 <= small.num_experts == 4
    tiny = ExperimentConfig(num_clients=2, rounds=1, max_samples=300, num_experts=2, top_k=2).smoke()
    assert (tiny.num_clients, tiny.rounds, tiny.max_samples, tiny.top_k) == (2, 1, 300, 2), "smaller sizes are kept"
    assert ExperimentConfig(rounds="x").smoke().rounds == "x", "a bad value is left for validate() to name"
    for name, cap in SIZES.items():
        assert f"{name} {cap}" in ExperimentConfig.smoke.__doc__, f"smoke()'s docstring must say what {name} becomes"


def test_every_field_is_documented_and_has_a_rule():
    docs = describe_fields()
    missing = [f.name for f in dataclasses.fields(ExperimentConfig) if not docs.get(f.name)]
    assert not missing
    assert all("\n" not in d for d in docs.values()), "field docstrings are one line"
    assert all("rule" in f.metadata for f in dataclasses.fields(ExperimentConfig))
    table = reference_table()
    assert all(f"`{f.name}`" in table for f in dataclasses.fields(ExperimentConfig))


def test_choice_rules_use_the_module_constants():
    """Each choice list is a module constant (one place), e.g. STRATEGIES, which other tests tie to registries."""
    constants = [v for v in vars(config_module).values() if isinstance(v, tuple)]
    for f in dataclasses.fields(ExperimentConfig):
        rule = f.metadata["rule"]
        if isinstance(rule, Choice):
            assert any(rule.options is c for c in constants), f.name
    assert config_module.field_rule("strategy").options is STRATEGIES
    assert config_module.field_rule("dataset").options is DATASETS
    assert STRATEGIES == ("fedmoe_da", "fedavg", "fedprox", "fedper", "fedrep", "ditto", "local")
    assert "digit_domains" in DATASETS and DIGIT_DOMAINS == ("mnist", "usps", "mnistm", "synth")


# --------------------------------------------------------------------------- CLI: flags from the dataclass
def subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", ["run", "compare"])
def test_every_field_is_a_flag_with_its_docstring_default_and_choices(command):
    docs = describe_fields()
    actions = {a.dest: a for a in subparser(command)._actions}
    for f in dataclasses.fields(ExperimentConfig):
        if command == "compare" and f.name == "strategy":
            assert f.name not in actions, "compare takes --strategies"
            continue
        action, rule = actions[f.name], f.metadata["rule"]
        assert cli.flag_name(f.name) in action.option_strings, f.name
        assert docs[f.name].replace("%", "%%") in action.help, f.name
        assert f"default: {f.default}" in action.help and rule.describe() in action.help, f.name
        if isinstance(rule, Choice):
            assert action.choices is rule.options, f.name
        if isinstance(rule, Bool):
            assert "--no-" + cli.flag_name(f.name)[2:] in action.option_strings, f.name
    assert actions["strategy" if command == "run" else "strategies"]
    if command == "run":
        assert actions["strategy"].choices == STRATEGIES
    assert actions["dataset"].choices == DATASETS


def test_help_lists_every_flag_and_the_precedence(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    for f in dataclasses.fields(ExperimentConfig):
        assert cli.flag_name(f.name) in out, f.name
    assert "Precedence: the defaults, then --config FILE, then --smoke" in out


def test_flags_aliases_and_types(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = cli._parser().parse_args([
        "run", "--clients", "3", "--P", "2", "--tau", "0.5", "--I", "2", "--no-progress", "--out", "o",
        "--dataset", "digits", "--domains", "rotate,blur", "--max-samples", "none", "--capacity-factor", "1.5",
        "--min-correlation", "0",
        "--fedmoe-backbone", "local", "--proxy", "gate_delta", "--seed", "9223372036854775807", "--threads", "2"])
    config, _ = cli._config(args)
    assert (config.num_clients, config.P, config.tau, config.I) == (3, 2, 0.5, 2)
    assert config.progress is False and config.out == "o"
    assert config.domains == ("rotate", "blur") and config.max_samples is None and config.capacity_factor == 1.5
    assert (config.min_correlation, config.fedmoe_backbone, config.proxy) == (0.0, "local", "gate_delta")
    assert config.threads == 2
    assert config.seed == 2**63 - 1
    assert cli._config(cli._parser().parse_args(["run", "--progress"]))[0].progress is True
    assert cli._config(cli._parser().parse_args(["compare"]))[0].out == str(Path("runs") / "compare")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()


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


# Every kind of bad input: argv -> a fragment of the one-line message. {tmp} is the test's folder (the cwd),
# {file} an existing file, {locked} a folder nobody may write; config files are written by `bad_inputs`.
CATALOGUE = [
    (["run", "--seed", "1180591620717411303424"],
     "config.seed=1180591620717411303424 is invalid: must be an integer in [0, 2**63)"),
    (["run", "--seed", "2**70"], "argument --seed: config.seed='2**70' is invalid"),
    (["run", "--seed", "-1"], "config.seed=-1"),
    (["run", "--alpha", "inf"], "config.alpha=inf is invalid: must be a finite number > 0"),
    (["run", "--lr", "inf"], "config.lr=inf"),
    (["run", "--lr", "nan"], "config.lr=nan"),
    (["run", "--tau", "0"], "config.tau=0.0"),
    (["run", "--rounds", "2.5"], "argument --rounds: config.rounds='2.5' is invalid: must be an integer >= 1"),
    (["run", "--rounds", "0"], "config.rounds=0"),
    (["run", "--num-clients", "0"], "config.num_clients=0"),
    (["run", "--participation", "1.5"], "config.participation=1.5"),
    (["run", "--max-samples", "abc"], "argument --max-samples: config.max_samples='abc'"),
    (["run", "--strategy", "nope"], "argument --strategy: invalid choice: 'nope'"),
    (["run", "--proxy", "nope"], "argument --proxy: invalid choice"),
    (["run", "--device", "tpu"], "config.device='tpu'"),
    (["run", "--threads", "0"], "config.threads=0"),
    (["run", "--dataset", "digits", "--domains", "rotate,rotate"], "config.domains=('rotate', 'rotate') is invalid"),
    (["run", "--domains", ""], "config.domains=()"),
    (["run", "--dataset", "digit_domains", "--domains", "rotate"], "mnist, usps, mnistm, synth"),
    (["run", "--min-correlation", "1"],
     "config.min_correlation=1.0 is invalid: must be None or a finite number in [-1, 1)"),
    (["run", "--ditto-lambda", "-1"], "config.ditto_lambda=-1.0"),
    (["run", "--top-k", "9", "--num-experts", "4"], "num_experts (4)"),
    (["run", "--colour", "red"], "unrecognized arguments: --colour"),
    (["run", "--out", "{file}"], "config.out='{file}' is invalid: it exists and is not a directory"),
    (["run", "--out", "{file}/run"], "is a file, not a directory"),
    (["run", "--out", "{locked}/run"], "is not writable"),
    (["run", "--config", "{tmp}/missing.json"], "config file '{tmp}/missing.json' cannot be read"),
    (["run", "--config", "{tmp}/colour.json"], "unknown config field 'colour'"),
    (["run", "--config", "{tmp}/rounds0.toml"], "config.rounds=0"),
    (["run", "--config", "{tmp}/rounds_text.toml"], "config.rounds='3' is invalid: must be an integer >= 1"),
    (["run", "--config", "{tmp}/broken.json"], "is not valid JSON"),
    (["run", "--config", "{tmp}/broken.toml"], "is not valid TOML"),
    (["run", "--config", "{tmp}/list.json"], "must hold a table of config fields"),
    (["run", "--config", "{tmp}/c.yaml"], "must end in .json or .toml"),
    (["run", "--config", "{tmp}/compare.json"], "compare folder"),
    (["compare", "--strategies", "fedavg,fedavg"], "fedavg,fedavg"),
    (["compare", "--strategies", "nope"], "config.strategy='nope'"),
    (["compare", "--strategies", "fedmoe_da:P=-1"], "config.P=-1"),
    (["compare", "--seeds", "0"], "seeds=0"),
    (["compare", "--strategy", "fedavg"], "unrecognized arguments: --strategy"),
]


@pytest.fixture
def bad_inputs(tmp_path, monkeypatch):
    """The catalogue's files in a fresh cwd; returns how to fill in the placeholders."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    (tmp_path / "locked").mkdir(mode=0o500)
    files = {"colour.json": '{"colour": "red"}', "rounds0.toml": "rounds = 0\n", "rounds_text.toml": 'rounds = "3"\n',
             "broken.json": "{", "broken.toml": "rounds = = 1", "list.json": "[1, 2]", "c.yaml": "rounds: 1",
             "compare.json": json.dumps({"config": {"rounds": 1}, "strategies": ["fedavg"], "seeds": 1,
                                         "versions": {}})}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    yield {"tmp": str(tmp_path), "file": str(tmp_path / "file"), "locked": str(tmp_path / "locked")}
    (tmp_path / "locked").chmod(0o700)


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.parametrize("argv,fragment", CATALOGUE, ids=[" ".join(a) for a, _ in CATALOGUE])
def test_bad_input_catalogue(capsys, tmp_path, bad_inputs, argv, fragment):
    if "{locked}" in " ".join(argv) and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    argv = [a.format(**bad_inputs) for a in argv]
    before = tree(tmp_path)
    code, err = in_process(capsys, *argv, "--no-progress")
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment.format(**bad_inputs) in lines[0], lines[0]
    assert tree(tmp_path) == before, "nothing is written for bad input"


def test_a_run_whose_every_update_was_discarded_exits_1(capsys, tmp_path, monkeypatch):
    import fedmoe_da

    summary = {"final_acc_mean": 0.1, "final_acc_std": 0.0, "final_acc_worst10": 0.1, "best_acc_mean": 0.1,
               "best_round": 1, "server_bytes": 0, "p2p_bytes": 0, "local_updates": 8, "discarded_updates": 8}
    result = type("Result", (), {"summary": summary, "run_dir": str(tmp_path / "o")})
    monkeypatch.setattr(fedmoe_da, "simulate", lambda config: result)
    code, err = in_process(capsys, "run", "--smoke", "--lr", "1e3", "--out", str(tmp_path / "o"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "all 8 local updates were discarded" in err and "learning rate" in err and "lr=1000.0" in err
    summary["discarded_updates"] = 7
    code, err = in_process(capsys, "run", "--smoke", "--out", str(tmp_path / "o"))
    assert code == 0 and err == ""


def test_cli_checksum_error_is_one_line_error(capsys, tmp_path, monkeypatch):
    from fedmoe_da.data import real

    def corrupt(url, dest):
        raise real.ChecksumError(f"downloaded {dest} has md5 0, expected 1")

    monkeypatch.setattr(real, "fetch", corrupt)
    monkeypatch.chdir(tmp_path)
    code, err = in_process(capsys, "run", "--smoke", "--dataset", "mnist", "--no-progress",
                           "--out", str(tmp_path / "o"))
    assert code == 2 and "md5" in err and len(err.strip().splitlines()) == 1


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
    assert table["strategy"].tolist() == list(COMPARE_STRATEGIES)
    local = table.set_index("strategy").loc["local"]
    assert local["server_MB"] == 0 and local["p2p_MB"] == 0
    assert table.set_index("strategy").loc["fedavg", "server_vs_fedavg"] == pytest.approx(1.0)
    md = (out / "comparison.md").read_text()
    assert md.startswith("| strategy |") and all(s in md for s in ("fedmoe_da", "fedavg", "local"))
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    for s in COMPARE_STRATEGIES:
        assert (out / folder_name(s) / "seed0" / "history.csv").is_file()
    assert "vs FedAvg" in proc.stdout
