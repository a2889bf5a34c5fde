"""The package's layers: no import circle, no private names across modules, and each floor imports
only the floors below it (function-level imports included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lorasearch"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> list[tuple[str, str]]:
    """(module, imported name) for every import of a package module inside ``name``, at any depth."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, "") if sub in MODULES else (target, alias.name))
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return [(m, n) for m, n in found if m in MODULES and m != name]


GRAPH = {name: {m for m, _ in imports_of(name)} for name in MODULES}


def is_facade(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def reachable(start: str, through_facades: bool = True) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen and (through_facades or not is_facade(nxt)):
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_circle():
    # A package's __init__ re-exports its modules, so edges into facades are not dependencies.
    cycles = [m for m in MODULES if not is_facade(m) and m in reachable(m, through_facades=False)]
    assert not cycles, f"modules on an import circle: {cycles}"


def test_no_module_imports_a_private_name_of_another():
    private = [f"{name} imports {what} from {module}" for name in MODULES for module, what in imports_of(name)
               if what.startswith("_") and not what.startswith("__")]
    assert not private, private


def floor(prefix: str) -> list[str]:
    return [m for m in MODULES if m == prefix or m.startswith(prefix + ".")]


@pytest.mark.parametrize("floor_prefix, forbidden", [
    ("lorasearch.search", ("lorasearch.cost", "lorasearch.network", "lorasearch.runs", "lorasearch.evaluate")),
    ("lorasearch.compress", ("lorasearch.export", "lorasearch.runs")),
    ("lorasearch.results", ("lorasearch.runs", "lorasearch.network", "lorasearch.cost", "lorasearch.search")),
    ("lorasearch.train", ("lorasearch.compress", "lorasearch.runs")),
    ("lorasearch.network", ("lorasearch.compress", "lorasearch.runs", "lorasearch.train", "lorasearch.evaluate")),
    ("lorasearch.models", ("lorasearch.network", "lorasearch.compress", "lorasearch.runs")),
])
def test_a_floor_reaches_nothing_above_it(floor_prefix, forbidden):
    for name in floor(floor_prefix):
        above = {m for m in reachable(name) - set(floor(floor_prefix)) if m.startswith(forbidden)}
        assert not above, f"{name} reaches {sorted(above)}"


def test_the_cli_imports_only_the_application_layer_io_and_errors():
    allowed = ("lorasearch.runs", "lorasearch.cli", "lorasearch.io", "lorasearch.errors")
    for name in floor("lorasearch.cli"):
        direct = {m for m in GRAPH[name] if not m.startswith(allowed)}
        assert not direct, f"{name} imports {sorted(direct)}; fix: call lorasearch.runs instead"


def test_every_error_type_lives_in_errors():
    defined = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Warning")) and name != "lorasearch.errors":
                defined.append(f"{name}.{node.name}")
    assert not defined, defined


def test_the_package_root_is_small_and_no_module_name_repeats():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 8, root
    names: dict[str, list[str]] = {}
    for name in MODULES:
        parts = name.split(".")
        if len(parts) > 1 and parts[-1] not in ("__main__",):
            names.setdefault(parts[-1], []).append(name)
    repeated = {short: full for short, full in names.items() if len(full) > 1}
    assert not repeated, repeated


def test_only_the_application_layer_and_above_import_runs():
    allowed = set(floor("lorasearch.runs")) | set(floor("lorasearch.cli")) | {"lorasearch"}
    importers = {name for name in MODULES if any(m.startswith("lorasearch.runs") for m in GRAPH[name])}
    assert importers <= allowed, sorted(importers - allowed)


def test_every_module_imports_first_in_a_fresh_package():
    """Each module imported as the first of the package (the others dropped from sys.modules), so no
    import order hides a circle through a package's __init__."""
    script = (
        "import importlib, sys\n"
        "import torch, transformers, pandas  # third-party modules stay loaded between rounds\n"
        f"for name in {sorted(m for m in set(MODULES) if not m.endswith('__main__'))!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'lorasearch' or m.startswith('lorasearch.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
