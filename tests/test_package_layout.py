"""The package's layering: no import cycles between its modules and no oversized modules.

Imports are read from the source (module level *and* inside functions: a function-level import
is still a dependency, only a deferred one). An edge ``a -> b`` is recorded for the module that
an import statement names: ``from keras_relaxeq.zoo import registry`` names the submodule
``keras_relaxeq.zoo.registry``; ``from keras_relaxeq.zoo import load`` names the package
``keras_relaxeq.zoo`` (its ``__init__``). A package ``__init__`` that re-exports its own
submodules is not a cycle with them, so edges from a package to its own submodules are kept,
and an edge from a submodule to its own parent package is the only kind left out (it is
Python's normal "import the sibling through the package" idiom only when the package is
being initialised, which the re-export edges already cover).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_relaxeq"

#: modules allowed above the size limit, with the reason
LARGE_MODULES: dict[str, str] = {}
MAX_LINES = 620


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(base: str, names, modules) -> set[str]:
    out = set()
    for name in names:
        candidate = f"{base}.{name}"
        out.add(candidate if candidate in modules else base)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: set[str] = set()
            if isinstance(node, ast.Import):
                targets = {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = mod if is_package else mod.rsplit(".", 1)[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rsplit(".", 1)[0]
                    base = f"{pkg}.{node.module}" if node.module else pkg
                else:
                    base = node.module or ""
                targets = _resolve(base, [a.name for a in node.names], modules)
            for target in targets:
                while target and target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target not in modules or target == mod:
                    continue
                if mod.startswith(target + "."):
                    continue  # a submodule importing its own parent package
                graph[mod].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_cycle_finder_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_package_import_graph_has_no_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles between package modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cli_is_imported_by_no_package_module():
    users = sorted(m for m, deps in import_graph().items() if "keras_relaxeq.cli" in deps)
    assert not users, f"the CLI is the top of the import graph; these modules import it: {users}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_size(name):
    lines = len(_modules()[name].read_text().splitlines())
    if name in LARGE_MODULES:
        return
    assert lines <= MAX_LINES, f"{name} has {lines} lines (limit {MAX_LINES}); split it along its concerns"


def test_test_files_have_unique_names():
    """The test folders have no ``__init__.py``: pytest imports test files by basename, so two files with one name
    in different folders stop the collection of the whole suite."""
    seen = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
