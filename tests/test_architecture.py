"""The shape of peerproxyd/ (docs/architecture.md): no import circles, sans-IO stays sans-IO.

The import graph is read from the source with `ast`, so every import statement counts: at
module level, deferred inside a function, and under `if TYPE_CHECKING:` (a circle hidden
by a deferred or type-only import is still a circle between the two concepts).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "peerproxyd"

SANS_IO = ("peerproxyd.protocol", "peerproxyd.signaling.messages", "peerproxyd.trust.viewer_auth",
           "peerproxyd.rtc.sdp_restart")
"""Modules (or packages) that do no IO: bytes or text in, values out."""
IO_LIBRARIES = ("asyncio", "aiohttp", "aiortc", "aioice", "libdatachannel", "redis", "zeroconf")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imported(module: str, path: Path) -> set[str]:
    """Every module `module` imports by any statement (absolute names, ours and others')."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                names.add(sub if sub in MODULES else source)
    return names


IMPORTS = {module: _imported(module, path) for module, path in MODULES.items()}


def _edges(module: str) -> set[str]:
    """Our modules whose code runs when `module` is imported: each one it names, and the
    packages (`__init__.py`) above those, unless `module` is inside that package already."""
    edges = set()
    for name in IMPORTS[module]:
        while name in MODULES and name != "peerproxyd":
            if name != module and not module.startswith(name + "."):
                edges.add(name)
            name = name.rpartition(".")[0]
    return edges


GRAPH = {module: _edges(module) for module in MODULES}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component (Tarjan), as a path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle(graph, component) for component in components]


def _circle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside it."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no circle through {start}")  # pragma: no cover


def test_the_graph_sees_every_kind_of_import() -> None:
    """Module level, deferred and TYPE_CHECKING imports all make edges (cli.py has each)."""
    assert "peerproxyd.device.daemon" in GRAPH["peerproxyd.cli"]  # TYPE_CHECKING and deferred
    assert "peerproxyd.client.native" in GRAPH["peerproxyd.cli"]  # deferred, in a function
    assert "peerproxyd.errors" in GRAPH["peerproxyd.cli"]  # module level
    assert len(MODULES) > 50


def test_find_cycles_names_the_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    if cycles := find_cycles(GRAPH):
        pytest.fail("import circles in peerproxyd/:\n" + "\n".join(" -> ".join(c) for c in cycles))


def _reachable(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


@pytest.mark.parametrize("module", sorted(
    m for m in MODULES if any(m == s or m.startswith(s + ".") for s in SANS_IO)))
def test_sans_io_modules_import_no_io_library(module: str) -> None:
    """Nothing a sans-IO module loads (itself or any of our modules it imports) imports an
    event loop, a network library or a WebRTC stack."""
    found = sorted(
        f"{source} imports {name}"
        for source in _reachable(module)
        for name in IMPORTS[source]
        if name.split(".")[0] in IO_LIBRARIES
    )
    if found:
        pytest.fail(f"{module} is sans-IO, but " + "; ".join(found))


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize(("package", "forbidden"), [
    ("peerproxyd.device", "peerproxyd.client"),  # the two ends share tunnel/, protocol/, rtc/
    ("peerproxyd.client", "peerproxyd.device"),
    ("peerproxyd.protocol", "peerproxyd.tunnel"),  # the core knows nothing of its shells
    ("peerproxyd.tunnel", "peerproxyd.rtc"),  # the shell moves messages of any data channel
    ("peerproxyd.signaling", "peerproxyd.device"),  # the server runs without a device
])
def test_layers(package: str, forbidden: str) -> None:
    found = sorted(f"{m} -> {d}" for m in MODULES if _inside(m, package)
                   for d in GRAPH[m] if _inside(d, forbidden))
    if found:
        pytest.fail(f"{package} must not import {forbidden}: " + "; ".join(found))
