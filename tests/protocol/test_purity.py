"""protocol/ imports msgspec and the standard library only: emitters install nothing else."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import protocol

PROTOCOL_DIR = Path(protocol.__file__).parent
ALLOWED = {"msgspec", "protocol"}


def imported_modules(tree: ast.AST) -> list[str]:
    modules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
    return modules


def test_protocol_imports_only_msgspec_and_the_standard_library() -> None:
    files = sorted(PROTOCOL_DIR.rglob("*.py"))
    assert PROTOCOL_DIR / "codec.py" in files
    offenders = []
    for path in files:
        for module in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            top = module.partition(".")[0]
            if top not in ALLOWED and top not in sys.stdlib_module_names:
                offenders.append(f"{path.relative_to(PROTOCOL_DIR)}: {module}")
    assert offenders == []


def test_the_check_catches_an_outside_import() -> None:
    tree = ast.parse("import trio\nfrom collector.app import x\nfrom . import codec\n")
    modules = imported_modules(tree)
    assert modules == ["trio", "collector.app"]
