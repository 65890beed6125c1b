"""The library's shape, checked from its source: phases import only earlier phases, no import circle,
and the product never imports the demo world (DESIGN.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "datacomp_ops"
# The pipeline's phases in order: a module may import its own phase and earlier ones. `embedded` (the
# stand-ins the product runs by default) sits before the pool, whose metadata pass runs them.
PHASES = ("core", "crawl", "download", "embedded", "pool", "filtering", "training", "evaluation", "ui")
# the package's top level (the command line, the stage registry) runs every phase
TOP = len(PHASES)
# The demo world: the demo and the tests import it; of the product, only the command line, whose
# `datacomp synthetic` and `--serve` make and serve it.
DEMO = "synthetic"
DEMO_ENTRY = {"datacomp_ops.cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every datacomp_ops module `name` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from pkg import module` names a module; `from module import name` names the module
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _phase(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in PHASES + (DEMO,)) else ""


def _rank(module: str) -> int:
    phase = _phase(module)
    return PHASES.index(phase) if phase in PHASES else TOP


def test_every_module_belongs_to_a_phase_or_the_demo_or_the_top(graph):
    top = sorted(m for m in graph if _phase(m) == "" and m != "datacomp_ops")
    assert top == ["datacomp_ops.cli", "datacomp_ops.stages"]
    assert {_phase(m) for m in graph} - {""} == set(PHASES) | {DEMO}


def test_no_phase_imports_a_later_one(graph):
    upward = sorted(f"{m} imports {d}" for m, deps in graph.items() if _phase(m) != DEMO
                    for d in deps if _phase(d) != DEMO and _rank(d) > _rank(m))
    assert upward == []


def test_the_product_never_imports_the_demo_world(graph):
    leaks = sorted(f"{m} imports {d}" for m, deps in graph.items() if _phase(m) != DEMO and m not in DEMO_ENTRY
                   for d in deps if _phase(d) == DEMO)
    assert leaks == []


def test_no_import_circle(graph):
    """Tarjan's strongly connected components over every import, lazy ones included."""
    index, low, on_stack, stack, circles = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == []


def test_only_the_layout_names_the_storage_roots_folders():
    """Every path on storage is built by core/layout.py: no other product module joins a top folder's
    name (a renamed folder would otherwise be missed in one place and split the data)."""
    from datacomp_ops.core import layout

    folders = {layout.CRAWLS, layout.POOL, layout.SUBSETS, layout.RUNS, layout.DATASETS, layout.LEADERBOARD,
               layout.EVAL_INDEX, layout.SYNTHETIC, layout.EXTERNAL, "requeue", "staging", "reports"}
    found = []
    for name, path in _modules().items():
        if name == "datacomp_ops.core.layout" or _phase(name) == DEMO:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "join":
                found += [f"{name}:{node.lineno} joins {a.value!r}" for a in node.args
                          if isinstance(a, ast.Constant) and a.value in folders]
            if isinstance(node, ast.JoinedStr):  # f"{root}/subsets/..."
                found += [f"{name}:{node.lineno} spells {v.value!r}" for v in node.values
                          if isinstance(v, ast.Constant) and any(f"/{f}/" in f"{v.value}/" for f in folders)]
    assert found == []
