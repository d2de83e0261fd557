"""Packaging: environment.yml follows pyproject.toml, and the README's example runs."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).parents[1]
CONDA_NAMES = {"torch": "pytorch"}   # pip name -> conda-forge name where they differ


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("dev", "notebooks"):
        reqs += project["optional-dependencies"][extra]
    out = {}
    for r in reqs:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", r).groups()
        out[CONDA_NAMES.get(name.lower(), name.lower())] = spec.replace(" ", "")
    return out


def _conda_requirements() -> tuple[dict[str, str], list[str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
            continue
        name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", dep).groups()
        conda[name.lower()] = spec.replace(" ", "")
    return conda, pip


def test_environment_yml_matches_pyproject():
    conda, pip = _conda_requirements()
    conda.pop("python"), conda.pop("pip")
    assert conda == _pyproject_requirements()
    triton = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["triton"]
    assert [p.replace(" ", "") for p in pip] == [t.replace(" ", "") for t in triton] + ["-e."]


def test_readme_example_runs():
    """The README's Python example, executed as written."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert 0.0 <= result.summary["final_acc_mean"] <= 1.0
    assert result.summary["server_bytes"] > 0 and result.summary["p2p_bytes"] > 0


def test_readme_results_blocks_are_the_committed_files():
    """Every results block of the README is a verbatim copy of the committed file a command wrote."""
    from fedmoe_da.results import readme_blocks

    blocks = readme_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has no results block"
    for source, body in blocks.items():
        path = ROOT / source
        assert path.exists(), f"{source} (named by a README results block) is not committed"
        assert body == path.read_text().strip("\n"), f"README block of {source} differs: run `make results`"


@pytest.mark.equivalence   # make test reruns it on the kernels of a CPU without AVX-512: another machine
def test_committed_smoke_comparison_reproduces(tmp_path):
    """A rerun of the committed smoke comparison (results/compare_smoke: the command in its config.json
    'command') falls within its band: accuracies within 3 standard errors of the seeds' spread, integer data
    exact (fedmoe_da/reproduce.py). ``make results`` checks the full-size comparison the same way."""
    import json

    import pandas as pd

    from fedmoe_da.reproduce import check

    committed = ROOT / "results" / "compare_smoke"
    saved = json.loads((committed / "config.json").read_text())
    out = tmp_path / "rerun"
    cmd = [sys.executable, "-m", "fedmoe_da", "compare", "--smoke", "--seeds", str(saved["seeds"]),
           "--strategies", ",".join(saved["strategies"]), "--out", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, timeout=600)
    rerun = json.loads((out / "config.json").read_text())
    assert rerun["config"] | {"out": None} == saved["config"] | {"out": None}, "the rerun's config differs"
    rows, problems = check(pd.read_csv(committed / "comparison.csv"), pd.read_csv(out / "comparison.csv"))
    assert not problems, "\n".join(problems) + "\n" + rows.to_string()
