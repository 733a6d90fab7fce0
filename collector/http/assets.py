"""The files the daemon serves as they are, each at a fixed URL path: the browser client
(``/client/bwmon.js``), and any other static file (the dashboard's) the same way.

``ASSETS`` maps each URL path to an ``Asset``: where the file sits inside the ``collector``
package, its content type, and, for a file kept elsewhere in the repository, that source.
The build copies such sources into the package (setup.py reads ``ASSETS`` for it), so an
installed daemon (a wheel, ``pip install``) has them; a checkout run in place (``make``, an
editable install) has no copy and reads the source itself, so it serves what the checkout
holds. ``read_assets`` reads every file once, at start (or says which it could not find): no
request reads the disk.

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


class AssetMissing(OSError):
    """An asset is neither in the package nor in the checkout: a broken installation."""


@dataclass(frozen=True, slots=True)
class LoadedAsset:
    body: bytes
    content_type: str
    etag: str  # strong: a hash of the bytes, so it changes exactly when they do


def read_assets(
    assets: dict[str, Asset] = ASSETS,
    package_dir: Path = PACKAGE_DIR,
    checkout_dir: Path = CHECKOUT_DIR,
) -> dict[str, LoadedAsset | AssetMissing]:
    """Every asset, read now (``read_asset``), or why it could not be."""
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
