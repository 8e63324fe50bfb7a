"""The library's shape: entry points import the library, never the other way round, and no module imports itself
back through others (a cycle makes import order matter)."""

from __future__ import annotations

import ast
from pathlib import Path

import stn

SRC = Path(stn.__file__).resolve().parent
# Modules run as commands: nothing in the library may import them.
ENTRY_POINTS = {
    "stn.train",
    "stn.evidence",
    "stn.results.cli",
    "stn.results.__main__",
    "stn.gpu_check.cli",
    "stn.gpu_check.__main__",
    "stn.colocalisation",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """The stn modules `path` imports when it is imported (imports inside functions run later, if ever)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "stn"}


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in SRC.rglob("*.py")}
    return {name: {m for m in top_level_imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_library_module_imports_an_entry_point():
    offenders = {
        name: sorted(imported & ENTRY_POINTS)
        for name, imported in import_graph().items()
        if name not in ENTRY_POINTS and imported & ENTRY_POINTS
    }
    assert offenders == {}


def test_the_modules_import_one_another_without_cycles():
    graph, done, path = import_graph(), set(), []

    def visit(name: str) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        path.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
