"""The build, for setuptools: the ingest hot path compiled when it can be, pure Python otherwise.

The modules of ``COMPILED_MODULES`` (protocol/build.py: decoding and aggregation) are compiled
with mypyc into C extensions, from the same type-checked source, when mypyc (a build
requirement, pyproject.toml) and a C compiler with Python's headers are there: the daemon takes
more frames per second (docs/BENCHMARKS.md). Without them, when compiling fails, or with
``BWMON_PURE=1``, the build is pure Python: the same behaviour, slower. Either way the build
writes ``protocol/_built.py``, the record of what it made and why, which the daemon logs at
start and shows in ``/healthz`` (``build``, ``build_reason``). A pure build also removes the
extensions an earlier build left in its tree.

The files the daemon serves that live outside the package (``collector/http/assets.py``: the
browser client, ``clients/browser/bwmon.js``) are copied into it, so a wheel holds them; an
editable install reads them from the checkout.

``pip install .`` builds a wheel this way; ``make`` installs the checkout editable and builds
the extensions in place (``setup.py build_ext --inplace``). The compiled modules must define no
msgspec Struct: mypyc does not keep a Struct's class options (``frozen``, ``kw_only``, ``gc``);
tests/test_build.py checks it.
"""

import contextlib
import importlib.util
import io
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py


def by_path(name: str, path: str) -> ModuleType:
    """A module of the project by its path (stdlib only): nothing is installed yet."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = by_path("bwmon_build", "protocol/build.py")
SOURCES = Path(".")  # setuptools runs this file from the project's root


def why_pure() -> str | None:
    """Why this build cannot be compiled, before trying: None if it can be tried."""
    if os.environ.get("BWMON_PURE") == "1":
        return "BWMON_PURE=1"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed (it comes with mypy, a build requirement)"
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC")
    if compiler and shutil.which(shlex.split(compiler)[0]) is None:
        return f"no C compiler ({compiler} not found)"
    if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
        return "no Python headers (Python.h; a python3-dev package has them)"
    return None


def said(made: str, reason: str | None) -> None:
    print(f"bwmon: the {made} build" + (f" ({reason})" if reason else ""), file=sys.stderr)


def pure(root: Path, reason: str | None) -> None:
    """Make ``root`` a pure build: no extension of the compiled modules, the record saying
    why."""
    for module in build.COMPILED_MODULES:
        for path in build.extension_paths(root, module):
            path.unlink()
    build.write_record(root, "pure", reason, SOURCES)
    said("pure", reason)


def failure(exc: Exception) -> str:
    """What failed, in a line (the compiler printed its own errors)."""
    detail = exc.args[0] if exc.args else exc
    if isinstance(detail, subprocess.CalledProcessError):
        return f"{detail.cmd[0]} exited with status {detail.returncode}"
    return str(exc)[:200]


class BuildExtensions(build_ext):
    """Compile, or fall back to pure Python when compiling fails; write the record."""

    def run(self) -> None:
        root = SOURCES if self.inplace or self.editable_mode else Path(self.build_lib)
        if not self.extensions:  # pure from the start (``make pure`` runs this)
            pure(root, PURE_REASON)
            return
        try:
            super().run()
        except Exception as exc:  # the compiler's error, already printed above
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            pure(root, f"compiling failed: {failure(exc)}")
            return
        build.write_record(root, "compiled", None, SOURCES)
        said("compiled", None)


class BuildPackages(build_py):
    """Copy the served files kept outside the package (collector/http/assets.py: the browser
    client) into it; write the record of a pure build, where no ``build_ext`` runs. An
    editable install copies nothing: the daemon reads those files from the checkout."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            assets = by_path("bwmon_assets", "collector/http/assets.py")
            for asset in assets.ASSETS.values():
                if asset.source is not None:
                    target = Path(self.build_lib, "collector", asset.packaged)
                    self.mkpath(str(target.parent))
                    self.copy_file(asset.source, str(target))
        if not self.distribution.has_ext_modules():
            pure(SOURCES if self.editable_mode else Path(self.build_lib), PURE_REASON)


PURE_REASON = why_pure()
extensions = []
if PURE_REASON is None:
    from mypyc.build import mypycify

    said_by_mypyc = io.StringIO()
    try:
        with contextlib.redirect_stdout(said_by_mypyc), contextlib.redirect_stderr(said_by_mypyc):
            extensions = mypycify(
                [str(build.source_path(SOURCES, module)) for module in build.COMPILED_MODULES],
                opt_level="3",
                separate=True,
            )
    except (Exception, SystemExit) as exc:  # mypyc exits on an error of its own
        errors = [line for line in said_by_mypyc.getvalue().splitlines() if ": error:" in line]
        PURE_REASON = f"mypyc failed: {(errors[0] if errors else str(exc))[:200]}"
    finally:
        print(said_by_mypyc.getvalue(), end="", file=sys.stderr)

setup(
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExtensions, "build_py": BuildPackages},
)
