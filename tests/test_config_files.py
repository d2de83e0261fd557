"""Config files: ``--config FILE`` (JSON, TOML, or a run folder's config.json) and its precedence.

The documented order: the defaults, then the file, then ``--smoke`` shrinks the
sizes, then the flags given on the command line win. Bad files are covered by
the error catalogue in test_config_cli.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmoe_da import cli
from fedmoe_da.config import ConfigError, ExperimentConfig, read_config_file

FIELDS = {"dataset": "digits", "strategy": "fedavg", "rounds": 5, "num_clients": 10, "P": 3, "tau": 0.5, "alpha": 1,
          "domains": ["rotate", "blur"], "min_correlation": 0.2}
TOML = 'dataset = "digits"\nstrategy = "fedavg"\nrounds = 5\nnum_clients = 10\nP = 3\ntau = 0.5\nalpha = 1\n' \
       'domains = ["rotate", "blur"]\nmin_correlation = 0.2\n'


def config_of(*argv: str) -> ExperimentConfig:
    return cli._config(cli._parser().parse_args(list(argv)))[0]


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(TOML)
    (tmp_path / "c.json").write_text(json.dumps(FIELDS))
    return tmp_path


@pytest.mark.parametrize("name", ["c.toml", "c.json"])
def test_json_and_toml_files_give_the_same_config(files, name):
    expected = ExperimentConfig(**{**FIELDS, "domains": ("rotate", "blur")}, out=str(Path("runs") / "run"))
    assert config_of("run", "--config", name) == expected
    assert ExperimentConfig.from_file(files / name) == expected.replace(out=None)


def test_precedence_defaults_then_file_then_smoke_then_flags(files):
    from_file = config_of("run", "--config", "c.toml")
    assert (from_file.rounds, from_file.num_clients, from_file.P, from_file.batch_size) == (5, 10, 3, 16)
    smoke = config_of("run", "--config", "c.toml", "--smoke")
    assert (smoke.rounds, smoke.num_clients, smoke.P, smoke.tau, smoke.strategy) == (2, 4, 3, 0.5, "fedavg"), \
        "--smoke shrinks the file's sizes and keeps everything else"
    flags = config_of("run", "--smoke", "--config", "c.toml", "--rounds", "3", "--P", "1", "--strategy", "local")
    assert (flags.rounds, flags.num_clients, flags.P, flags.strategy) == (3, 4, 1, "local"), "explicit flags win"
    (files / "out.toml").write_text('out = "elsewhere"\n')
    assert config_of("run", "--config", "out.toml").out == "elsewhere"
    assert config_of("run", "--config", "out.toml", "--out", "mine").out == "mine"
    assert not (files / "elsewhere").exists() and not (files / "runs").exists()


def test_run_folder_file_is_read_and_its_extras_returned(tmp_path):
    config = ExperimentConfig(rounds=3, domains=("noise",))
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": config.to_dict(), "strategies": ["fedavg", "local"], "seeds": 2,
                                "versions": {"torch": "x"}}))
    fields, extras = read_config_file(path)
    assert ExperimentConfig.from_dict(fields) == config
    assert extras == {"strategies": ["fedavg", "local"], "seeds": 2}
    path.write_text(json.dumps({"config": config.to_dict(), "extra": 1}))
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        read_config_file(path)


def test_compare_takes_strategies_and_seeds_from_a_compare_folder_file(files, monkeypatch):
    import fedmoe_da

    seen = {}

    def fake_compare(config, strategies, seeds, jobs):
        seen.update(config=config, strategies=strategies, seeds=seeds)
        raise ConfigError("stop here")

    monkeypatch.setattr(fedmoe_da, "compare", fake_compare)
    (files / "cmp.json").write_text(json.dumps({"config": {"rounds": 4}, "strategies": ["fedavg", "local"],
                                                "seeds": 2, "versions": {}}))
    assert cli.main(["compare", "--config", "cmp.json"]) == 2
    assert seen["strategies"] == ("fedavg", "local") and seen["seeds"] == 2 and seen["config"].rounds == 4
    assert cli.main(["compare", "--config", "cmp.json", "--strategies", "fedprox", "--seeds", "1"]) == 2
    assert seen["strategies"] == ("fedprox",) and seen["seeds"] == 1


def test_a_run_folder_config_reproduces_the_run(tmp_path, monkeypatch, capsys):
    """`run --config runs/x/config.json --out runs/x2` repeats run x exactly, without --smoke."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--smoke", "--backend", "torch", "--no-progress", "--out", "runs/x"]) == 0
    assert cli.main(["run", "--config", "runs/x/config.json", "--out", "runs/x2"]) == 0
    capsys.readouterr()
    x, x2 = tmp_path / "runs" / "x", tmp_path / "runs" / "x2"
    first, second = (json.loads((d / "config.json").read_text())["config"] for d in (x, x2))
    assert {**first, "out": None} == {**second, "out": None}
    assert second["rounds"] == 2 and second["num_clients"] == 4, "the file holds the smoke sizes"
    for name in ("history.csv", "ledger.csv"):
        assert (x / name).read_text() == (x2 / name).read_text(), name
