"""The layout of the zoo, export and testing packages and the CLI: imports flow one way (cli -> zoo ->
testing / export), modules stay small, and the documented examples name catalogue entries."""

import ast
import re
from pathlib import Path

import keras_relaxeq.zoo
from keras_relaxeq.zoo import registry

PACKAGE = Path(keras_relaxeq.zoo.__file__).resolve().parents[1]
AREA = ("keras_relaxeq.cli", "keras_relaxeq.zoo", "keras_relaxeq.export", "keras_relaxeq.testing",
        "keras_relaxeq.utils")


def _modules() -> dict:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _import_graph(mods: dict) -> dict:
    """``{module: {keras_relaxeq modules it imports}}``, function-level imports included."""

    def known(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(known(a.name) for a in node.names if a.name.startswith("keras_relaxeq"))
            elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith(
                    "keras_relaxeq"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    targets.add(full if full in mods else known(node.module))
        targets.discard(None)
        targets.discard(mod)
        graph[mod] = targets
    return graph


def _in_area(mod: str) -> bool:
    return any(mod == a or mod.startswith(a + ".") for a in AREA)


def test_imports_flow_one_way():
    graph = _import_graph(_modules())
    for mod, targets in graph.items():
        if _in_area(mod) and mod != "keras_relaxeq.cli":
            assert "keras_relaxeq.cli" not in targets, f"{mod} imports keras_relaxeq.cli"
        if mod.startswith(("keras_relaxeq.testing", "keras_relaxeq.export")):
            assert not any(t.startswith("keras_relaxeq.zoo") for t in targets), f"{mod} imports the zoo"
    area = {m: {t for t in ts if _in_area(t)} for m, ts in graph.items() if _in_area(m)}
    # no cycle: repeatedly drop modules that import nothing left in the area
    while area:
        leaves = [m for m, ts in area.items() if not ts & set(area)]
        assert leaves, f"import cycle among {sorted(area)}"
        for m in leaves:
            del area[m]


def test_modules_stay_small():
    for mod, path in _modules().items():
        if _in_area(mod):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            assert lines <= 600, f"{mod} has {lines} lines"


def test_documented_examples_name_catalogue_entries():
    names = set(registry.load_index().names())
    quoted = set(re.findall(r'"([a-z0-9_]+_[a-z0-9]+_[a-z0-9]+)"', keras_relaxeq.zoo.__doc__))
    assert quoted and quoted <= names, sorted(quoted - names)
