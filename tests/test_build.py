"""The build (setup.py, protocol/build.py): which modules are compiled, what they may hold, the
pure fallback and its reason, which build runs, and the check against a stale checkout."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

import pytest

import protocol.build
from protocol.build import (
    COMPILED_MODULES,
    RECORD,
    RECORD_MODULE,
    compiled_modules,
    extension_paths,
    running_build,
    source_path,
    stale_message,
    stale_sources,
    write_record,
)
from tests.helpers import assert_build

ROOT = Path(__file__).resolve().parent.parent
HEADERS = Path(sysconfig.get_paths()["include"], "Python.h").is_file()


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


def test_the_modules_run_as_built() -> None:
    for name in COMPILED_MODULES:
        importlib.import_module(name)
    assert_build(compiled_modules())
    build = running_build()
    assert build.compiled == compiled_modules()
    if build.compiled:
        assert (build.name, build.reason) == ("compiled", None)
    else:
        assert build.name == "pure"
        assert build.reason


def test_a_pure_build_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol.build, "compiled_modules", list)
    record = ModuleType(RECORD_MODULE)
    record.BUILD, record.REASON = "pure", "no C compiler (gcc not found)"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, RECORD_MODULE, record)
    assert running_build() == protocol.build.Build("pure", "no C compiler (gcc not found)", [])
    record.BUILD, record.REASON = "compiled", None  # type: ignore[attr-defined]
    assert "no extension loaded" in (running_build().reason or "")
    monkeypatch.setattr(protocol.build, "compiled_modules", lambda: ["protocol.codec"])
    assert running_build().name == "partial"


def _checkout(root: Path) -> Path:
    """A checkout of stubs under ``root``: setup.py, protocol/build.py, a module for each
    compiled one; returns the source of the first."""
    shutil.copy(ROOT / "setup.py", root / "setup.py")
    for module in (*COMPILED_MODULES, "protocol.build"):
        source = source_path(root, module)
        source.parent.mkdir(parents=True, exist_ok=True)
        for package in (source.parent, *source.parent.parents):
            if package == root:
                break
            (package / "__init__.py").touch()
        source.write_text("X: int = 1\n")
    shutil.copy(ROOT / "protocol" / "build.py", root / "protocol" / "build.py")
    return source_path(root, COMPILED_MODULES[0])


def _built(source: Path) -> None:
    """As if ``source``'s module had been compiled in place."""
    source.with_suffix(EXTENSION_SUFFIXES[0]).write_bytes(b"")


def test_an_extension_built_from_another_source_is_stale(tmp_path: Path) -> None:
    source = _checkout(tmp_path)
    assert stale_sources(tmp_path) == []  # pure: no extension
    _built(source)
    assert stale_sources(tmp_path) == [source]  # no record of its source
    write_record(tmp_path, "compiled", None, tmp_path)
    assert stale_sources(tmp_path) == []
    source.write_text("X: int = 2\n")  # edited after the build
    assert stale_sources(tmp_path) == [source]
    assert "`make compiled`" in stale_message([source])
    write_record(tmp_path, "pure", "BWMON_PURE=1", tmp_path)  # a pure record: no digest
    source.write_text("X: int = 1\n")
    assert stale_sources(tmp_path) == [source]


def test_an_installed_build_is_not_checked(tmp_path: Path) -> None:
    source = _checkout(tmp_path)
    _built(source)
    (tmp_path / "setup.py").unlink()  # site-packages: no setup.py beside the packages
    assert stale_sources(tmp_path) == []


def _build_in_place(root: Path, **env: str) -> dict[str, object]:
    """``setup.py build_ext --inplace`` in ``root`` with ``env``; the record it wrote."""
    done = subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"],
        cwd=root,
        env={k: v for k, v in os.environ.items() if k not in ("CC", "BWMON_PURE")} | env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    record: dict[str, object] = {}
    exec((root / RECORD).read_text(), record)
    assert f"bwmon: the {record['BUILD']} build" in done.stderr
    return record


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"BWMON_PURE": "1"}, "BWMON_PURE=1"),
        ({"CC": "/nonexistent/cc"}, "no C compiler (/nonexistent/cc not found)"),
        pytest.param(  # a compiler that fails: mypyc runs first
            {"CC": "false"},
            "compiling failed: false exited with status 1",
            marks=pytest.mark.skipif(not HEADERS, reason="no Python headers: it would not try"),
        ),
    ],
)
def test_a_build_that_cannot_compile_is_pure_and_says_why(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    source = _checkout(tmp_path)
    _built(source)  # left by an earlier build
    record = _build_in_place(tmp_path, **env)
    assert record["BUILD"] == "pure"
    assert str(record["REASON"]).startswith(reason)
    assert record["SOURCES"] == {}
    for module in COMPILED_MODULES:
        assert extension_paths(tmp_path, module) == []
    assert stale_sources(tmp_path) == []


def test_the_client_middlewares_run_as_the_daemon_does() -> None:
    """The Python client's WSGI and ASGI middlewares (clients/python/setup.py) are built beside
    the daemon's modules, compiled or pure with them."""
    for name in COMPILED_MODULES:
        importlib.import_module(name)
    import bwmon_client.asgi
    import bwmon_client.wsgi

    for module in (bwmon_client.wsgi, bwmon_client.asgi):
        compiled = not (module.__file__ or "").endswith(".py")
        expected = os.environ.get("BWMON_EXPECT_BUILD")
        if expected is not None:
            assert compiled == (expected == "compiled"), module.__name__
        assert compiled == bool(compiled_modules()), module.__name__


CC = (sysconfig.get_config_var("CC") or "cc").split()[0]


@pytest.mark.skipif(
    not HEADERS or importlib.util.find_spec("mypyc") is None or shutil.which(CC) is None,
    reason="the client's build would not try mypyc here",
)
def test_a_client_source_mypyc_refuses_builds_the_client_pure(tmp_path: Path) -> None:
    """mypyc exits on an error of its own: the client's build (clients/python/setup.py) then
    says so and builds pure, as the daemon's does, instead of failing."""
    client = ROOT / "clients" / "python"
    copy = tmp_path / "python"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.so", ".mypy_cache")
    shutil.copytree(client, copy, ignore=ignore)
    wsgi = copy / "bwmon_client" / "wsgi.py"
    wsgi.write_text(wsgi.read_text() + '\n\nREFUSED: int = "not an int"\n')
    env = {k: v for k, v in os.environ.items() if k != "BWMON_PURE"}
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bwmon-client: the pure build (mypyc failed" in done.stderr, done.stderr[-2000:]
    assert list((copy / "bwmon_client").glob("*.so")) == []
