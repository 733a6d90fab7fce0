"""The dashboard's files (``collector/http/ui/``) as the daemon serves them, on real loopback
sockets: ``/`` and every file under ``/ui/`` with its type, a strong ETag, ``304`` for a
current copy and the page's content security policy; an unknown file and every way out of
the folder (``..``, encoded or not) a 404; the folder listed with its subfolders, hidden
files left out."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from collector.http.assets import PACKAGE_DIR, dashboard_assets, etag_of
from collector.http.server import HttpServer, HttpSettings
from collector.http.static import StaticRoutes
from tests.collector.test_http_post import request

UI = PACKAGE_DIR / "http" / "ui"


@pytest.fixture
async def port(nursery: trio.Nursery) -> int:
    http = HttpServer(StaticRoutes().routes(), {}, HttpSettings())
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http.serve, listeners)
    bound: int = listeners[0].socket.getsockname()[1]
    return bound


async def test_the_page_is_served_at_the_root_with_its_policy(port: int) -> None:
    page = (UI / "index.html").read_bytes()
    answer = await request(port, "GET", "/")
    assert (answer.status, answer.body) == (200, page)
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["etag"] == etag_of(page)
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["x-content-type-options"] == "nosniff"
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert b"<script>" not in page  # no inline script: the policy allows none
    assert (await request(port, "GET", "/ui/index.html")).body == page


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/table.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
    ],
)
async def test_every_file_has_its_type_an_etag_and_a_304(
    port: int, path: str, content_type: str
) -> None:
    body = (UI / path.removeprefix("/ui/")).read_bytes()
    answer = await request(port, "GET", path)
    assert (answer.status, answer.body, answer.headers["content-type"]) == (200, body, content_type)
    assert "content-security-policy" not in answer.headers
    etag = answer.headers["etag"]
    cached = await request(port, "GET", path, headers=[("if-none-match", etag)])
    assert (cached.status, cached.body, cached.headers["etag"]) == (304, b"", etag)
    head = await request(port, "HEAD", path)
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", str(len(body)))


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/",
        "/ui",
        "/ui/../pyproject.toml",
        "/ui/../assets.py",
        "/ui/%2e%2e/assets.py",
        "/ui/..%2fassets.py",
        "/ui/%2e%2e%2f%2e%2e%2fsetup.py",
        "/ui//etc/passwd",
        "/ui/./app.js",
        "/ui/APP.JS",
        "/index.html",
    ],
)
async def test_an_unknown_file_or_a_way_out_of_the_folder_is_a_404(port: int, path: str) -> None:
    answer = await request(port, "GET", path)
    assert answer.status == 404, path
    assert b"import" not in answer.body


def test_the_folder_is_listed_with_subfolders_and_without_hidden_files(tmp_path: Path) -> None:
    ui = tmp_path / "http" / "ui"
    (ui / "vendor").mkdir(parents=True)
    (ui / "index.html").write_text("<!doctype html>")
    (ui / "app.js").write_text("")
    (ui / "vendor" / "lib.min.js").write_text("")
    (ui / "vendor" / "LICENSE.txt").write_text("")
    (ui / ".app.js.swp").write_text("")
    (ui / "notes.md").write_text("")  # not a type the daemon serves
    (ui / "__pycache__").mkdir()
    (ui / "__pycache__" / "x.js").write_text("")
    found = dashboard_assets(tmp_path)
    assert sorted(found) == [
        "/",
        "/ui/app.js",
        "/ui/index.html",
        "/ui/vendor/LICENSE.txt",
        "/ui/vendor/lib.min.js",
    ]
    assert found["/"] == found["/ui/index.html"]
    assert found["/ui/vendor/lib.min.js"].packaged == "http/ui/vendor/lib.min.js"
    assert dashboard_assets(tmp_path / "elsewhere") == {}


def test_the_checkout_serves_every_dashboard_module() -> None:
    found = dashboard_assets()
    for name in ("index.html", "app.css", "app.js", "live.js", "api.js", "table.js", "format.js"):
        assert f"/ui/{name}" in found
