"""The files the daemon serves as they are, each at a fixed URL path: the browser client
(``/client/bwmon.js``) and the dashboard (``/`` and everything under ``/ui/``).

``ASSETS`` maps each URL path to an ``Asset``: where the file sits inside the ``collector``
package, its content type, and, for a file kept elsewhere in the repository, that source.
The build copies such sources into the package (setup.py reads ``ASSETS`` for it), so an
installed daemon (a wheel, ``pip install``) has them; a checkout run in place (``make``, an
editable install) has no copy and reads the source itself, so it serves what the checkout
holds. ``read_assets`` reads every file once, at start (or says which it could not find): no
request reads the disk.

The dashboard's files live inside the package, in ``collector/http/ui/`` (package data: a
wheel holds them as they are). ``dashboard_assets`` lists that folder when the daemon starts:
each file is served at ``/ui/<its path in the folder>`` and ``index.html`` at ``/`` too. Only
the files listed are routes, so no other path under ``/ui/`` (``..``, an unknown name) reaches
the disk: it is a 404.

Standard library only: setup.py loads this module by its path, before anything is installed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PACKAGE_DIR: Final = Path(__file__).resolve().parent.parent  # collector/
CHECKOUT_DIR: Final = PACKAGE_DIR.parent  # the repository, when run from a checkout


@dataclass(frozen=True, slots=True)
class Asset:
    """``packaged``: the file's path inside the ``collector`` package; ``source``: its path
    in the repository when it lives outside the package (the build copies it in)."""

    packaged: str
    content_type: str
    source: str | None = None


ASSETS: Final = {
    "/client/bwmon.js": Asset(
        "http/files/bwmon.js", "text/javascript; charset=utf-8", "clients/browser/bwmon.js"
    ),
}


UI_DIR: Final = "http/ui"  # inside the package
UI_PREFIX: Final = "/ui/"
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
}


def dashboard_assets(package_dir: Path = PACKAGE_DIR) -> dict[str, Asset]:
    """The files of ``collector/http/ui/`` (hidden ones and those of a type not in
    ``CONTENT_TYPES`` left out), each at ``/ui/<path>``, and ``index.html`` also at ``/``."""
    root = package_dir / UI_DIR
    found: dict[str, Asset] = {}
    if not root.is_dir():
        return found
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root)
        content_type = CONTENT_TYPES.get(file.suffix)
        if not file.is_file() or content_type is None:
            continue
        if any(part.startswith((".", "_")) for part in relative.parts):
            continue
        name = relative.as_posix()
        found[UI_PREFIX + name] = Asset(f"{UI_DIR}/{name}", content_type)
    index = found.get(UI_PREFIX + "index.html")
    if index is not None:
        found["/"] = index
    return found


class AssetMissing(OSError):
    """An asset is neither in the package nor in the checkout: a broken installation."""


@dataclass(frozen=True, slots=True)
class LoadedAsset:
    body: bytes
    content_type: str
    etag: str  # strong: a hash of the bytes, so it changes exactly when they do


def read_assets(
    assets: dict[str, Asset] | None = None,
    package_dir: Path = PACKAGE_DIR,
    checkout_dir: Path = CHECKOUT_DIR,
) -> dict[str, LoadedAsset | AssetMissing]:
    """Every asset (by default ``ASSETS`` and the dashboard's), read now (``read_asset``), or
    why it could not be."""
    if assets is None:
        assets = {**ASSETS, **dashboard_assets(package_dir)}
    loaded: dict[str, LoadedAsset | AssetMissing] = {}
    for path, asset in assets.items():
        try:
            loaded[path] = read_asset(path, asset, package_dir, checkout_dir)
        except AssetMissing as exc:
            loaded[path] = exc
    return loaded


def read_asset(path: str, asset: Asset, package_dir: Path, checkout_dir: Path) -> LoadedAsset:
    """The packaged copy if there is one, else the source in the checkout; ``AssetMissing``
    names the paths tried."""
    tried = [package_dir / asset.packaged]
    if asset.source is not None:
        tried.append(checkout_dir / asset.source)
    for file in tried:
        if file.is_file():
            body = file.read_bytes()
            return LoadedAsset(body, asset.content_type, etag_of(body))
    raise AssetMissing(f"{path}: none of {', '.join(map(str, tried))} exists")


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``etag`` (RFC 9110 §13.1.2: ``*``, or a list
    of tags compared weakly, so ``W/"x"`` matches ``"x"``)."""
    value = if_none_match.strip()
    if value == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in value.split(","))
