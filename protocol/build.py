"""Which modules run compiled, and the guard against a stale build.

``BWMON_COMPILE=1`` compiles ``COMPILED_MODULES`` with mypyc into C extensions (``setup.py``;
``make compiled`` builds them in place in a checkout, each with ``<module>.py.sha256``, the
digest of the source it was built from). Python imports an extension before the source beside
it, so in a checkout an extension built from another source would run other code than the
source says. Importing this module refuses that (``ImportError``): ``protocol`` imports it
first, and ``collector`` imports ``protocol`` first.
"""

from __future__ import annotations

import hashlib
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Final

# What setup.py compiles.
COMPILED_MODULES: Final = (
    "protocol.codec",
    "collector.aggregate.rtc",
    "collector.aggregate.engine",
    "collector.aggregate.quality",
    "collector.ingest.counters",
    "collector.fanout.topics",
)


def digest_path(source: Path) -> Path:
    return source.with_name(source.name + ".sha256")


def source_digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def stale_extensions(root: Path) -> list[Path]:
    """The compiled modules' sources under ``root`` whose extension was built from another
    source, if ``root`` is a checkout (it holds ``setup.py``); elsewhere (a wheel) none."""
    if not (root / "setup.py").is_file():
        return []
    stale = []
    for name in COMPILED_MODULES:
        source = root.joinpath(*name.split(".")).with_suffix(".py")
        built = any(source.with_suffix(suffix).exists() for suffix in EXTENSION_SUFFIXES)
        if not built:
            continue
        digest = digest_path(source)
        if not digest.is_file() or digest.read_text().strip() != source_digest(source):
            stale.append(source)
    return stale


def refuse_stale(root: Path) -> None:
    if stale := stale_extensions(root):
        names = ", ".join(str(path) for path in stale)
        raise ImportError(
            f"compiled from another source than {names}: "
            "`make compiled` builds the extensions again, `make pure` removes them"
        )


def compiled_modules() -> list[str]:
    """The modules of ``COMPILED_MODULES`` imported from a C extension."""
    return [
        name
        for name in COMPILED_MODULES
        if (module := sys.modules.get(name)) is not None
        and not (module.__file__ or "").endswith(".py")
    ]


refuse_stale(Path(__file__).resolve().parent.parent)
