"""The imports draw the architecture: no import circle in falrt, the server's planes import
only downwards, only the edges know the wire format, and no server module grows too big.

Read from the source (every `import` statement, those under TYPE_CHECKING and inside
functions included), so a circle hidden in a function body counts too.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
# The repository's folders and the names they import as (pyproject's package-dir).
PACKAGES = {"falrt": ROOT / "falrt", "falrt.shim": ROOT / "shim", "falrt.cli": ROOT / "cli"}
# The server's layers, lowest first: a module may import its own layer and those below
# (`webhooks` only keeps an old import path of `verify` working; `metrics` is beside the
# state it reads, below the planes that report events to it; so is `tracing`; `files`, the
# file store's rules, is below the planes that will keep payloads in it; `gc_tuning` sets
# the process's collector and imports nothing of falrt).
LAYERS = [("tasks", "webhooks", "gc_tuning"), ("state", "metrics", "tracing"), ("files",),
          ("fleet",),
          ("queue",),
          ("control",),
          ("api", "http"), ("main",)]
MAX_SERVER_LINES = 450


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if not name.startswith("falrt.v1"):  # generated code
                found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The falrt modules `name` imports (a `from package import module` names the module)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, node, is_package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def _absolute(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def circle(edges: dict[str, set[str]]) -> list[str]:
    """A circle of imports ([] when there is none)."""
    try:
        list(TopologicalSorter(edges).static_order())
    except CycleError as exc:
        return list(exc.args[1])
    return []


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["falrt", "server"] or len(parts) < 3:
        return None
    return next(n for n, names in enumerate(LAYERS) if parts[2] in names)


def test_nothing_in_falrt_imports_in_a_circle() -> None:
    assert circle(graph()) == []


def test_the_server_planes_import_only_their_own_layer_or_lower_ones() -> None:
    upward = []
    for module, targets in graph().items():
        own = layer(module)
        if own is None:
            continue
        upward += [f"{module} -> {target}" for target in sorted(targets)
                   if (other := layer(target)) is not None and other > own]
    assert upward == []


def test_only_the_servers_edges_import_generated_code() -> None:
    wire = []
    for name, path in modules().items():
        own = layer(name)
        if own is None or LAYERS[own][0] in ("api", "main"):
            continue
        imported = imports(name, path, {"falrt.v1": path, "grpc": path})
        wire += [f"{name} -> {module}" for module in sorted(imported)]
    assert wire == []


def test_no_server_module_is_longer_than_the_limit() -> None:
    long = {name: n for name, path in modules().items() if layer(name) is not None
            and (n := len(path.read_text().splitlines())) > MAX_SERVER_LINES}
    assert long == {}


def test_a_circle_is_found_when_there_is_one() -> None:
    assert set(circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == {"a", "b", "c"}
    assert circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_every_package_is_in_the_installed_package_list() -> None:
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    folders = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert folders - listed == set()
