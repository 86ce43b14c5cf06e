"""expo/ has no import cycle, counting the imports inside functions too (such an import only hides a
cycle until the function runs). The graph is read from the source with ast, nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `package_dir` (`pkg/__init__.py` is `pkg`)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, wherever the import statement is
    (module level, function body, `if TYPE_CHECKING:`). `from pkg.mod import name` is an edge to
    pkg.mod.name when that is a module, else to pkg.mod; a package's own `__init__` is not an implicit
    edge (every submodule would then "import" its package)."""
    modules = module_names(package_dir)
    top = package_dir.name

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..a import b
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target == top or target.startswith(top + "."):
                    found = known(target)
                    if found and found != name:
                        graph[name].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, modules in sorted order)."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once every edge out of it is checked
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),  # a diamond is no cycle
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ({"a": set(), "b": {"c"}, "c": {"d"}, "d": {"b"}}, ["b", "c", "d", "b"]),
])
def test_find_cycle(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert find_cycle(graph) == expected


def test_the_graph_counts_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("import os\nfrom pkg.sub import b\n\ndef f():\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from pkg.a import f  # in a function\n    return f\n")
    (pkg / "sub" / "c.py").write_text("from . import b\nfrom .. import a\n")
    assert import_graph(pkg) == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(),
                                 "pkg.sub.b": {"pkg.a"}, "pkg.sub.c": {"pkg.sub.b", "pkg.a"}}
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_expo_train_has_no_import_cycle() -> None:
    """run, grpo_training, dpo and validation imported each other (inside functions) before the arm table."""
    graph = import_graph(ROOT / "expo")
    assert "expo.train.arms" in graph["expo.train.run"]  # the graph is the real one
    train = {name: {t for t in targets if t.startswith("expo.train")}
             for name, targets in graph.items() if name.startswith("expo.train")}
    assert find_cycle(train) is None


def test_expo_has_no_import_cycle() -> None:
    graph = import_graph(ROOT / "expo")
    assert len(graph) > 50
    assert find_cycle(graph) is None
