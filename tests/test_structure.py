"""The package's structure: imports only point one way (no circle), each registry matches its config choices."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import fedmoe_da.data.digit_domains as digit_domains
import fedmoe_da.data.partitioners as partitioners
from fedmoe_da import config
from fedmoe_da.data.domains import DOMAIN_TRANSFORMS
from fedmoe_da.fl.strategies import STRATEGY_CLASSES
from fedmoe_da.models import MODEL_CLASSES
from fedmoe_da.moe.backend import BACKENDS

PACKAGE = Path(__file__).parents[1] / "fedmoe_da"


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
    order = ["fedmoe_da.rules", "fedmoe_da.config", "fedmoe_da.seeds", "fedmoe_da.data", "fedmoe_da.moe",
             "fedmoe_da.models", "fedmoe_da.fl", "fedmoe_da.results", "fedmoe_da.viz", "fedmoe_da.cli"]
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
