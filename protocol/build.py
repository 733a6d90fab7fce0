"""Which modules run compiled, which build this is, and whether a checkout's build is stale.

setup.py compiles ``COMPILED_MODULES`` (decoding and aggregation) with mypyc into C extensions
when it can, and builds pure Python when it cannot (mypyc missing, no C compiler or no Python
headers, compiling failed) or is told not to (``BWMON_PURE=1``). Either way it writes the
record ``protocol/_built.py`` (``write_record``): the build it made, why it is pure, and the
digest of each compiled module's source. ``running_build`` says which build runs — from the
modules Python loaded and that record, reading no file of its own — for the daemon's log at
start and ``/healthz``.

In a checkout the extensions sit beside their sources (``make`` builds them in place), and
Python imports an extension before the source beside it: after an edit it would run other code
than the source says. ``stale_sources`` finds that by hashing the sources, so it runs where a
check belongs, never at import: ``bwmon serve`` refuses to start and a test session stops before
its first test (tests/conftest.py); ``make`` builds again when a compiled source changes.

Standard library only: setup.py loads this file by its path, before anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib
import runpy
import sys
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType
from typing import Final

# What setup.py compiles.
COMPILED_MODULES: Final = (
    "protocol.codec",
    "collector.aggregate.rtc",
    "collector.aggregate.engine",
    "collector.aggregate.quality",
    "collector.ingest.counters",
    "collector.fanout.topics",
    "collector.aggregate.census",
)
# The record of the build, under the root of the packages (generated: not in git).
RECORD: Final = "protocol/_built.py"
RECORD_MODULE: Final = "protocol._built"
# The root of the packages this module was imported from: a checkout or site-packages.
ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Build:
    """The build that runs: ``name`` is ``compiled`` (every module of ``COMPILED_MODULES``
    from its C extension), ``pure`` (none) or ``partial``; ``reason`` says why it is not
    compiled (None when it is); ``compiled``: the modules that run compiled."""

    name: str
    reason: str | None
    compiled: list[str]


def source_path(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def extension_paths(root: Path, module: str) -> list[Path]:
    """The files of ``module``'s C extension under ``root`` that exist: the module and the
    library mypyc puts beside it (``<module>__mypyc``)."""
    source = source_path(root, module)
    stems = (source.with_suffix(""), source.with_name(source.stem + "__mypyc"))
    return [
        path
        for stem in stems
        for suffix in EXTENSION_SUFFIXES
        if (path := stem.with_name(stem.name + suffix)).exists()
    ]


def write_record(root: Path, name: str, reason: str | None, sources: Path) -> None:
    """Write the record of a build made under ``root`` (``compiled`` or ``pure``, and why),
    with the digests of the compiled modules' sources under ``sources`` when compiled."""
    digests = (
        {module: source_digest(source_path(sources, module)) for module in COMPILED_MODULES}
        if name == "compiled"
        else {}
    )
    (root / RECORD).write_text(
        '"""The build setup.py made here (protocol/build.py). Generated; not in git."""\n\n'
        f"BUILD = {name!r}\n"
        f"REASON: str | None = {reason!r}\n"
        f"SOURCES: dict[str, str] = {digests!r}\n"
    )


def compiled_modules() -> list[str]:
    """The modules of ``COMPILED_MODULES`` imported from a C extension."""
    return [
        name
        for name in COMPILED_MODULES
        if (module := sys.modules.get(name)) is not None
        and not (module.__file__ or "").endswith(".py")
    ]


def _record() -> ModuleType | None:
    try:
        return importlib.import_module(RECORD_MODULE)
    except ModuleNotFoundError:
        return None


def running_build() -> Build:
    """The build that runs, by the compiled modules imported (import them first: the daemon
    has) and the record of the build."""
    compiled = compiled_modules()
    if len(compiled) == len(COMPILED_MODULES):
        return Build("compiled", None, compiled)
    if compiled:
        return Build("partial", f"only {', '.join(compiled)} loaded compiled", compiled)
    record = _record()
    if record is None:
        reason = "not built: `make` or `pip install .` compiles it"
    elif record.BUILD == "pure":
        reason = record.REASON
    else:
        reason = "built compiled, but no extension loaded (built for another Python?)"
    return Build("pure", reason, compiled)


def stale_sources(root: Path = ROOT) -> list[Path]:
    """The compiled modules' sources under ``root`` whose extension beside them was built from
    another source, if ``root`` is a checkout (it holds ``setup.py``); elsewhere (a wheel)
    none. Hashes the sources: for a start or a test session, never for an import."""
    if not (root / "setup.py").is_file():
        return []
    record = root / RECORD
    built = runpy.run_path(str(record)).get("SOURCES", {}) if record.is_file() else {}
    return [
        source
        for module in COMPILED_MODULES
        if extension_paths(root, module)
        and built.get(module) != source_digest(source := source_path(root, module))
    ]


def stale_message(stale: list[Path]) -> str:
    names = ", ".join(str(path) for path in stale)
    return (
        f"the compiled modules were built from another source than {names}: "
        "`make compiled` builds them again, `make pure` removes them"
    )
