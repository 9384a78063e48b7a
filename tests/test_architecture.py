"""Dependencies flow one way, like the data: common <- ingest <- detector <- (health, plant) <- alerts <- deploy.

Camera health (health/) and the plant outputs (plant/) read what the detector produces and are read by
nothing but alerts (health's state, for suspect alerts) and deploy (the command line); neither imports the other.

Reads every module's imports (function-local ones included) with ``ast``; no module is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# each layer and the layers it may import (its own modules aside)
MAY_IMPORT: dict[str, frozenset[str]] = {
    "common": frozenset(),
    "ingest": frozenset({"common"}),
    "detector": frozenset({"common", "ingest"}),
    "health": frozenset({"common", "ingest", "detector"}),
    "plant": frozenset({"common", "ingest", "detector"}),
    "alerts": frozenset({"common", "ingest", "detector", "health"}),
    "deploy": frozenset({"common", "ingest", "detector", "health", "plant", "alerts"}),
}
LAYERS = tuple(MAY_IMPORT)

pytestmark = pytest.mark.unit


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "linewatch." + ".".join(parts)


def _imports(path: Path, name: str | None = None) -> set[str]:
    """Absolute linewatch module names imported anywhere in ``path`` (relative imports resolved)."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("linewatch.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def _layer(module: str) -> str:
    return module.split(".")[1]


def _allowed(importer: str, imported: str) -> bool:
    return _layer(importer) == _layer(imported) or _layer(imported) in MAY_IMPORT[_layer(importer)]


def test_every_layer_imports_only_layers_below_it() -> None:
    wrong = sorted(f"{a} imports {b}" for a, deps in _graph().items() for b in deps if not _allowed(a, b))
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_no_module_import_cycles() -> None:
    graph = _graph()
    # a package's __init__ importing its own submodules is not a cycle of meaning; drop those edges
    edges = {a: {b for b in deps if not b.startswith(a + ".")} for a, deps in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "module import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    module = tmp_path / "x.py"
    module.write_text("def f():\n    from linewatch.deploy.cli import main\n    from .wire import decode\n")
    assert _imports(module, "linewatch.ingest.x") >= {"linewatch.deploy.cli", "linewatch.ingest.wire"}
