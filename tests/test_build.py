"""The compiled build (setup.py, protocol/build.py): which modules, what they may hold, and the
guard against an extension built from another source."""

from __future__ import annotations

import ast
import importlib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from protocol.build import (
    COMPILED_MODULES,
    compiled_modules,
    digest_path,
    refuse_stale,
    source_digest,
    stale_extensions,
)
from tests.helpers import assert_build

ROOT = Path(__file__).resolve().parent.parent


def structs_defined(source: str) -> list[str]:
    """Classes in ``source`` whose bases name a msgspec Struct."""
    return [
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(base).split(".")[-1] == "Struct" for base in node.bases)
    ]


def test_structs_defined_finds_a_struct() -> None:
    source = "import msgspec\nclass A(msgspec.Struct, frozen=True):\n    x: int\nclass B: pass\n"
    assert structs_defined(source) == ["A"]


@pytest.mark.parametrize("path", [name.replace(".", "/") + ".py" for name in COMPILED_MODULES])
def test_a_compiled_module_defines_no_struct(path: str) -> None:
    # mypyc builds a Struct subclass without its class options (frozen, kw_only, gc).
    assert structs_defined((ROOT / path).read_text()) == []


def _checkout(tmp_path: Path) -> Path:
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "protocol").mkdir()
    (tmp_path / "protocol" / "codec.py").write_text("X = 1\n")
    return tmp_path / "protocol" / "codec.py"


def test_an_extension_without_the_digest_of_its_source_is_stale(tmp_path: Path) -> None:
    source = _checkout(tmp_path)
    assert stale_extensions(tmp_path) == []  # the pure build: no extension
    source.with_suffix(EXTENSION_SUFFIXES[0]).write_bytes(b"")
    assert stale_extensions(tmp_path) == [source]
    digest_path(source).write_text(source_digest(source) + "\n")
    assert stale_extensions(tmp_path) == []
    source.write_text("X = 2\n")  # edited after the build
    assert stale_extensions(tmp_path) == [source]
    with pytest.raises(ImportError, match="make compiled"):
        refuse_stale(tmp_path)


def test_an_installed_build_is_not_checked(tmp_path: Path) -> None:
    source = _checkout(tmp_path)
    source.with_suffix(EXTENSION_SUFFIXES[0]).write_bytes(b"")
    (tmp_path / "setup.py").unlink()  # site-packages: no setup.py beside the packages
    assert stale_extensions(tmp_path) == []


def test_the_modules_run_as_built() -> None:
    for name in COMPILED_MODULES:
        importlib.import_module(name)
    assert_build(compiled_modules())
