"""The shape of the code: the import graph has no circle, and the layers point one way.

Read from the source with :mod:`ast`, so that imports under ``TYPE_CHECKING`` and inside
functions count too: a circle that only type checkers see is still a circle for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.floor

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"mlwarden.middleware": ROOT / "middleware", "mlwarden.sidecar": ROOT / "sidecar"}


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((prefix, *parts))] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import module`` resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


GRAPH = {name: _imports(name, path, set(_modules())) for name, path in _modules().items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_module_takes_part_in_an_import_circle():
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_the_middleware_imports_nothing_of_the_sidecar():
    offenders = {
        m: sorted(i for i in deps if i.startswith("mlwarden.sidecar"))
        for m, deps in GRAPH.items()
        if m.startswith("mlwarden.middleware")
    }
    assert {m: d for m, d in offenders.items() if d} == {}


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("mlwarden.sidecar.config", "mlwarden.sidecar.healing"),
        ("mlwarden.sidecar.config", "mlwarden.sidecar.proxy"),
        ("mlwarden.sidecar.config", "mlwarden.sidecar.app"),
        ("mlwarden.sidecar.healing", "mlwarden.sidecar.proxy"),
        ("mlwarden.sidecar.healing", "mlwarden.sidecar.app"),
        ("mlwarden.sidecar.routing", "mlwarden.sidecar.healing"),
        ("mlwarden.sidecar.routing", "mlwarden.sidecar.app"),
        ("mlwarden.sidecar.signals", "mlwarden.sidecar.healing"),
        ("mlwarden.sidecar.signals", "mlwarden.sidecar.routing"),
        ("mlwarden.sidecar.resilience", "mlwarden.sidecar.routing"),
        ("mlwarden.sidecar.resilience", "mlwarden.sidecar.healing"),
        ("mlwarden.sidecar.proxy", "mlwarden.sidecar.app"),
    ],
)
def test_a_lower_layer_imports_nothing_of_a_higher_one(lower: str, higher: str):
    def inside(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    offenders = {
        m: sorted(d for d in deps if inside(d, higher))
        for m, deps in GRAPH.items()
        if inside(m, lower)
    }
    assert {m: d for m, d in offenders.items() if d} == {}
