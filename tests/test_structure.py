"""The package's structure: imports only point one way (no circle), each registry matches its config choices,
every module stays readable (at most 400 lines), ruff finds nothing, and every section of docs/ARCHITECTURE.md
that the code cites exists."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

import fedmoe_da.data.digit_domains as digit_domains
import fedmoe_da.data.partitioners as partitioners
from fedmoe_da import config
from fedmoe_da.data.domains import DOMAIN_TRANSFORMS
from fedmoe_da.fl.registry import STRATEGY_CLASSES
from fedmoe_da.models import MODEL_CLASSES
from fedmoe_da.moe.backend import BACKENDS

PACKAGE = Path(__file__).parents[1] / "fedmoe_da"
ROOT = PACKAGE.parent
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    """Module -> every fedmoe_da module it imports, at module level or inside a function."""
    g = nx.DiGraph()
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    for name, path in modules.items():
        g.add_node(name)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name and not name.startswith(t + "."):
                    g.add_edge(name, t)
    return g


def test_the_import_graph_has_no_circle():
    g = import_graph()
    # a package's __init__ re-exports its modules: edges from a package to its own submodules are not circles
    g.remove_edges_from([(u, v) for u, v in list(g.edges) if v.startswith(u + ".")])
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import circles: {cycles[:5]}"


def test_the_layers_point_down():
    """config < data < moe < models < fl < results < viz < cli (docs/ARCHITECTURE.md §1)."""
    order = ["fedmoe_da.rules", "fedmoe_da.config_files", "fedmoe_da.config", "fedmoe_da.seeds", "fedmoe_da.data",
             "fedmoe_da.moe", "fedmoe_da.models", "fedmoe_da.fl", "fedmoe_da.results", "fedmoe_da.viz", "fedmoe_da.cli"]
    layer = lambda m: max((i for i, p in enumerate(order) if m == p or m.startswith(p + ".")), default=None)  # noqa: E731
    wrong = [(u, v) for u, v in import_graph().edges if layer(u) is not None and layer(v) is not None
             and layer(v) > layer(u)]
    assert not wrong, f"imports pointing up the layers: {wrong}"


def test_each_choice_list_is_its_registry():
    assert config.STRATEGIES == tuple(STRATEGY_CLASSES)
    assert config.PARTITIONS == partitioners.PARTITIONERS
    assert config.DOMAINS == tuple(DOMAIN_TRANSFORMS)
    assert config.DIGIT_DOMAINS == digit_domains.DIGIT_DOMAINS
    assert config.MODELS == tuple(MODEL_CLASSES)
    assert config.BACKENDS == tuple(BACKENDS)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines()))
            > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by idea): {long}"


def cited_sources() -> list[Path]:
    """Every file of the project that may cite docs/ARCHITECTURE.md."""
    files = [ROOT / "README.md", ROOT / "Makefile"]
    for folder in ("fedmoe_da", "tests", "benchmarks", "notebooks", "paper_figures", "docs"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".toml")]
    return [p for p in files if p.is_file()]


def test_every_architecture_section_cited_exists():
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", doc, flags=re.M)}
    assert sections == set(range(1, len(sections) + 1)), f"sections are not numbered 1..n: {sorted(sections)}"
    cites, stale = [], []
    for path in cited_sources():
        text = path.read_text()
        cites += [(path.name, int(n)) for n in re.findall(r"§(\d+)", text)]   # § is only used for its sections
        stale += [path.name for _ in re.findall(r"DESIGN(?:\.md)? (?:section )?\d", text)]
    assert cites, "the code cites no section: the regular expression is broken"
    missing = [(f, n) for f, n in cites if n not in sections]
    assert not missing, f"citations of sections docs/ARCHITECTURE.md does not have: {missing}"
    assert not stale, f"files citing DESIGN (not in the repository; cite docs/ARCHITECTURE.md §N): {stale}"


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff is not installed (pip install -e '.[dev]')")
def test_ruff_finds_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    ruff = str(ruff) if ruff.exists() else shutil.which("ruff")
    result = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
