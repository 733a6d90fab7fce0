"""The shape of ``cli/``: its modules import one another one way (no circle), at the top of
the module (no import inside a function to break a circle), and the ``bwmon bench`` commands
are declared in one module that ``cli.main`` mounts (no module registers itself on import)."""

from __future__ import annotations

import ast
from pathlib import Path

import cli

CLI_DIR = Path(cli.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(CLI_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(CLI_DIR.rglob("*.py"))
    }


def cli_imports(tree: ast.AST, known: set[str]) -> set[str]:
    """The modules of ``cli`` that ``tree`` imports (``from cli.bench import all`` imports
    ``cli.bench.all``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & known


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> modules it imports), None if it has none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        path.append(name)
        for imported in sorted(graph[name]):
            cycle = visit(imported)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle is not None:
            return cycle
    return None


def test_cli_modules_import_each_other_one_way() -> None:
    trees = modules()
    assert {"cli.main", "cli.bench.commands", "cli.bench.harness"} <= trees.keys()
    graph = {name: cli_imports(tree, set(trees)) - {name} for name, tree in trees.items()}
    assert find_cycle(graph) is None
    assert "cli.bench.commands" in graph["cli.main"]
    benchmarks = {name for name in trees if name.startswith("cli.bench.")}
    assert graph["cli.bench.harness"] & benchmarks == set()
    assert graph["cli.bench"] == set()


def test_the_cycle_check_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_cli_modules_import_at_their_top_only() -> None:
    late = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                late += [
                    f"{name}:{inner.lineno}"
                    for inner in ast.walk(node)
                    if isinstance(inner, ast.Import | ast.ImportFrom)
                ]
    assert late == []


def test_bench_commands_are_declared_in_one_module() -> None:
    declaring = set()
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for decorator in node.decorator_list:
                    call = decorator.func if isinstance(decorator, ast.Call) else decorator
                    if isinstance(call, ast.Attribute) and call.attr == "command":
                        declaring.add(name)
    assert declaring == {"cli.main", "cli.bench.commands"}
