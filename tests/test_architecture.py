"""The package's import graph: the layers contract holds and no module import cycle exists."""

from __future__ import annotations

import sys

import grimp
import pytest
from importlinter.cli import lint_imports

sys.setrecursionlimit(10_000)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), function-local imports included."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                found.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_import_graph_has_no_cycle() -> None:
    assert _cycles(grimp.build_graph("kelm", cache_dir=None)) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_layers_contract_is_kept() -> None:
    assert lint_imports(no_cache=True) == 0


@pytest.mark.parametrize("module", ["kelm.train", "kelm.kg", "kelm.moe", "kelm.linking"])
def test_lower_layers_import_without_tasks(module: str) -> None:
    """Importing a low layer does not pull in the tasks, the CLI or the app."""
    import subprocess

    upper = ("kelm.tasks", "kelm.cli", "kelm.app")
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith({upper!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
