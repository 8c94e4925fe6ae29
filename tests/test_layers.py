"""The layering rules of the import root (CONTRIBUTING.md, "Layout"), read from the code:
every import statement counts, those under `TYPE_CHECKING` and inside functions too."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "dispatchq"

# Each home, and the homes it may import (besides itself and dispatchq.errors).
ALLOWED: dict[str, set[str]] = {
    "config": {"core", "store"},  # the defaults of settings
    "core": {"config", "nomad", "payload", "store"},
    "nomad": {"config", "core"},
    "payload": {"config", "core", "store"},
    "store": {"config", "core"},
    "broker": {"config", "core", "store", "nomad", "payload", "worker"},
    "producer": {"config", "core", "store", "broker", "nomad", "payload"},
    "worker": {"config", "core", "store", "broker", "nomad", "payload"},
    "tracker": {"config", "core", "store", "broker", "nomad"},
    "notifier": {"config", "core", "store", "payload"},
    "devstack": {"config", "store"},
    "web": {"config", "core", "store", "nomad"},
    "nomadsim": set(),
    "testing": {"config", "core", "store", "producer"},
    # the command line: over everything
    "cli": {"config", "core", "store", "broker", "nomad", "payload", "producer", "worker",
            "tracker", "notifier", "devstack", "nomadsim", "web"},
}  # fmt: skip


def _modules() -> Iterator[tuple[str, Path]]:
    """Every module, those behind the links to worker/, producer/ and config/ included."""
    for folder, _, files in sorted(os.walk(ROOT, followlinks=True)):
        for file in sorted(f for f in files if f.endswith(".py")):
            path = Path(folder, file)
            parts = path.relative_to(ROOT.parent).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(module: str, path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in found if name.startswith("dispatchq.")}


def _home(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = dict(_modules())
GRAPH = {m: {i for i in _imports(m, p) if i in MODULES} for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_the_homes_below_it(module: str) -> None:
    home = _home(module)
    if home not in ALLOWED:
        return  # the root package (the public API) and dispatchq.errors
    allowed = ALLOWED[home] | {home, "errors", ""}
    wrong = sorted(i for i in GRAPH[module] if _home(i) not in allowed)
    assert not wrong, f"{module} ({home}) imports {wrong}"


def test_daemons_never_import_the_callers_library_or_the_cli() -> None:
    for module, imported in GRAPH.items():
        if _home(module) in ("worker", "tracker", "notifier", "broker", "web"):
            assert not {_home(i) for i in imported} & {"producer", "cli"}, module


def test_no_circles() -> None:
    """No module imports itself through others (type-only imports included)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for child in sorted(GRAPH[module]):
            if child.startswith(module + "."):
                continue  # a package importing its own modules (its public names)
            if state.get(child) == 1:
                circle = [*stack[stack.index(child) :], child]
                raise AssertionError(" -> ".join(circle))
            if child not in state:
                visit(child)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
