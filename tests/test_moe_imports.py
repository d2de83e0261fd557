"""The moe package's imports point one way (STYLE.md: kernels import the references, never the other way).

Parsed with ``ast``, so imports inside functions (lazy ones) count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import fedmoe_da.moe

PACKAGE = "fedmoe_da.moe"
MOE_DIR = Path(fedmoe_da.moe.__file__).parent


def _moe_imports(path: Path) -> set[str]:
    """Modules of fedmoe_da.moe that the file imports (anywhere in it), by short name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:                                  # from .x import y / from . import x
                found |= {node.module} if node.module else {a.name for a in node.names}
            elif node.level == 0 and node.module and node.module.startswith(PACKAGE):
                rest = node.module[len(PACKAGE):].lstrip(".")
                found |= {rest.split(".")[0]} if rest else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name[len(PACKAGE) + 1:].split(".")[0] for a in node.names
                      if a.name.startswith(PACKAGE + ".")}
    return {m for m in found if (MOE_DIR / f"{m}.py").exists()}


def import_graph() -> dict[str, set[str]]:
    """module -> the moe modules it imports; __init__ (re-exports only) is left out."""
    return {p.stem: _moe_imports(p) for p in sorted(MOE_DIR.glob("*.py")) if p.stem != "__init__"}


def test_the_graph_parser_sees_lazy_and_absolute_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from .router import z_loss\nimport fedmoe_da.moe.layer\n"
                 "def g():\n    from . import reference\n    from fedmoe_da.moe import backend\n")
    assert _moe_imports(f) == {"router", "layer", "reference", "backend"}


def test_moe_import_graph_is_acyclic():
    graph = import_graph()
    assert {"router", "reference", "triton_dispatch", "backend", "layer"} <= set(graph)
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join(path + (module,))}"
        if module in done:
            return
        for dep in graph[module]:
            visit(dep, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_kernels_import_only_the_references():
    graph = import_graph()
    assert graph["triton_dispatch"] <= {"reference", "router"}
    for low in ("router", "reference", "triton_dispatch"):
        assert not graph[low] & {"backend", "layer"}, f"{low} imports a module above it"


def test_package_init_only_re_exports():
    tree = ast.parse((MOE_DIR / "__init__.py").read_text())
    for node in tree.body:
        is_doc = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        is_all = isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"]
        assert is_doc or is_all or isinstance(node, ast.ImportFrom), ast.dump(node)[:80]
