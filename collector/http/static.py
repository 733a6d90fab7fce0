"""``GET``/``HEAD`` of the files of ``collector.http.assets``, held in memory.

Each answer names its bytes with a strong ``ETag`` and says ``cache-control: no-cache``: the
URL is stable (``/client/bwmon.js``, not a hashed name), so a browser keeps its copy but asks
each time whether it is still current, and an unchanged file costs a ``304`` without a body.
``access-control-allow-origin: *`` lets a page of any origin ``import`` the module (module
scripts are fetched with CORS). The files are read once, when the routes are built.

An HTML page (the dashboard's ``/``) also carries a ``content-security-policy`` that lets it
load scripts, styles and images from the daemon only and connect to the daemon only (its
``/api`` and ``/subscribe``): the page has no inline script, so an injected one cannot run.
"""

from __future__ import annotations

from collections.abc import Mapping

from collector.http.assets import AssetMissing, LoadedAsset, etag_matches, read_assets
from collector.http.server import HttpRoute, Request, Response
from collector.logs import get_logger

log = get_logger("http.static")

# Inline styles stay allowed: chart code sets element styles and canvas sizes.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


class StaticRoutes:
    """The routes of the assets that could be read; one that could not (a broken
    installation) is logged and answered 404, and the daemon runs on without it: ingest does
    not depend on a file it serves."""

    def __init__(self, assets: Mapping[str, LoadedAsset | AssetMissing] | None = None) -> None:
        self.assets: dict[str, LoadedAsset] = {}
        for path, asset in (assets if assets is not None else read_assets()).items():
            if isinstance(asset, AssetMissing):
                log.error("asset_missing", path=path, error=str(asset))
            else:
                self.assets[path] = asset

    def routes(self) -> dict[str, HttpRoute]:
        return {path: self.serve for path in self.assets}

    def serve(self, request: Request) -> Response:
        asset = self.assets[request.path]
        headers = [
            ("etag", asset.etag),
            ("cache-control", "no-cache"),
            ("access-control-allow-origin", "*"),
            ("x-content-type-options", "nosniff"),
        ]
        if asset.content_type.startswith("text/html"):
            headers.append(("content-security-policy", PAGE_POLICY))
        if etag_matches(request.headers.get("if-none-match", ""), asset.etag):
            return Response(304, b"", asset.content_type, headers)
        return Response(200, asset.body, asset.content_type, headers)
