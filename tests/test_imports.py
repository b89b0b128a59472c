"""The package's import graph (every import, inside functions and under TYPE_CHECKING too): no cycles,
and the leaves import only other leaves. A cycle hidden by a lazy import is still a design bug."""
from __future__ import annotations

import ast
from pathlib import Path

import bezoar

PACKAGE = Path(bezoar.__file__).parent
LEAVES = {"bezoar.errors", "bezoar.hashing", "bezoar.licences", "bezoar.records",
          "bezoar.config_base", "bezoar.llm.endpoints", "bezoar.llm.spec_syntax", "bezoar.verdicts",
          "bezoar.intervals", "bezoar.private_apis"}
"""What every layer may import; they import nothing above them."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the bezoar modules it imports (`from pkg import mod` counts as importing pkg.mod)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                found.append(sorted(component + [node]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_leaves_import_only_leaves():
    graph = import_graph()
    upward = {leaf: sorted(graph[leaf] - LEAVES) for leaf in LEAVES if graph[leaf] - LEAVES}
    assert upward == {}


def test_the_model_layer_imports_nothing_above_it():
    """bezoar.llm (backends, cache, specs) is used by every step; it knows no step, recipe or run."""
    graph = import_graph()
    upward = {name: sorted(d for d in deps if not d.startswith("bezoar.llm") and d not in LEAVES)
              for name, deps in graph.items() if name.startswith("bezoar.llm")}
    assert {name: deps for name, deps in upward.items() if deps} == {}


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
