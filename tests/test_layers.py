"""The layers of ``collector/``, read from its source with ``ast``: every import statement
counts, also one inside a function or under ``TYPE_CHECKING`` (a lazy import is still a
dependency). ``protocol/``'s own rule is ``tests/protocol/test_purity.py``.

- ``collector/aggregate/`` is pure: it imports the standard library, msgspec and ``protocol``
  only, and of the standard library nothing that waits or reads a clock (no event loop, no
  socket, no ``time``/``datetime``: the engine is given ``now``).
- The parts of ``collector/`` (each subpackage, and each module at its top, such as
  ``collector.wire`` or ``collector.config``) import one another one way: no two parts reach
  each other through their imports, directly or in a circle.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import collector

COLLECTOR_DIR = Path(collector.__file__).parent
ROOT = COLLECTOR_DIR.parent
AGGREGATE_DIR = COLLECTOR_DIR / "aggregate"
AGGREGATE_THIRD_PARTY = {"msgspec", "mypy_extensions", "protocol"}
# What waits, does I/O or reads the clock: the engine is handed ``now`` and returns rows.
AGGREGATE_FORBIDDEN_STDLIB = {
    "asyncio",
    "datetime",
    "os",
    "selectors",
    "socket",
    "ssl",
    "subprocess",
    "threading",
    "time",
}


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    line: int
    module: str  # absolute, relative imports resolved

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.module}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of this repository."""
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path, source: str | None = None) -> list[Import]:
    """Every module ``path`` imports (``from a import b`` names ``a.b`` when that is a module
    of ours, else ``a``), wherever the statement stands."""
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append(Import(path, node.lineno, sub if is_module(sub) else module))
    return list(dict.fromkeys(found))  # ``from a import b, c``: ``a`` once


def part_of(module: str) -> str | None:
    """The part of ``collector`` that ``module`` belongs to (None: outside ``collector``)."""
    parts = module.split(".")
    if parts[0] != "collector":
        return None
    return ".".join(parts[:2])


def dependencies() -> dict[str, dict[str, list[Import]]]:
    """part → part it imports → the imports that make it so."""
    graph: dict[str, dict[str, list[Import]]] = {}
    for path in sorted(COLLECTOR_DIR.rglob("*.py")):
        source = part_of(module_name(path))
        assert source is not None
        edges = graph.setdefault(source, {})
        for found in imports(path):
            target = part_of(found.module)
            if target is not None and target != source:
                edges.setdefault(target, []).append(found)
    return graph


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one node (Tarjan), each
    sorted: the nodes that reach one another through their edges."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_aggregate_imports_no_event_loop_socket_or_clock() -> None:
    files = sorted(AGGREGATE_DIR.rglob("*.py"))
    assert AGGREGATE_DIR / "engine.py" in files
    offenders = []
    for path in files:
        for found in imports(path):
            top = found.module.partition(".")[0]
            if top == "collector":
                allowed = part_of(found.module) == "collector.aggregate"
            elif top in sys.stdlib_module_names:
                allowed = top not in AGGREGATE_FORBIDDEN_STDLIB
            else:
                allowed = top in AGGREGATE_THIRD_PARTY
            if not allowed:
                offenders.append(str(found))
    assert offenders == [], "collector/aggregate/ must stay pure:\n" + "\n".join(offenders)


def test_no_two_parts_of_collector_import_each_other() -> None:
    graph = dependencies()
    assert {"collector.http", "collector.fanout", "collector.wire"} <= graph.keys()
    assert "collector.wire" in graph["collector.fanout"]  # the check sees real edges
    report = []
    for members in circles(graph):
        report.append("a circle between " + ", ".join(members) + ":")
        for source in members:
            for target in members:
                report += [f"  {found}" for found in graph[source].get(target, [])]
    assert report == [], "\n".join(report)


def test_the_checks_see_every_kind_of_import() -> None:
    path = COLLECTOR_DIR / "fanout" / "example.py"  # read from the string, never from disk
    source = (
        "import time\n"
        "from . import hub\n"
        "from ..http.server import Wire\n"
        "from collector import wire\n"
        "from collector.wire import Wire, websocket_frame\n"
        "def later():\n"
        "    from datetime import datetime\n"
    )
    assert [(found.line, found.module) for found in imports(path, source)] == [
        (1, "time"),
        (2, "collector.fanout.hub"),
        (3, "collector.http.server"),
        (4, "collector.wire"),
        (5, "collector.wire"),
        (7, "datetime"),
    ]


def test_a_circle_is_found_and_named() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e"]}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": ["b"], "b": []}) == []
