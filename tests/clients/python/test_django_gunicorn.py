"""Django behind a real gunicorn, counted by ``RouteMiddleware`` and ``BwmonWSGIMiddleware``,
its emitter sending to a real daemon: the daemon stores per route template exactly the requests,
status classes and body bytes the HTTP client saw — path converters, an ``include()``, a
``re_path``, a streaming response, a ``FileResponse`` through gunicorn's ``wsgi.file_wrapper``,
a 304 of ``@etag``, a HEAD (Django makes the body, gunicorn drops it: 0 bytes out), an upload, a
view that raises, an unmatched path."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.daemon_process import DaemonProcess
from tests.clients.python.wsgi_harness import (
    Tally,
    gunicorn,
    request,
    start_test_daemon,
    stored_totals,
    wait_for_samples,
)

pytestmark = pytest.mark.e2e

APP = "tests.clients.python.django_site.wsgi:application"
FILE_BYTES = 70_000


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    process = start_test_daemon(tmp_path)
    try:
        yield process
    finally:
        process.stop()


def test_django_under_gunicorn_the_daemon_stores_what_the_client_sent_and_received(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    served = tmp_path / "served.bin"
    served.write_bytes(random.Random(4).randbytes(FILE_BYTES))
    env = {"BWMON_TEST_UDP_PORT": str(daemon.udp_port), "BWMON_TEST_FILE": str(served)}
    tally = Tally()
    args = ["--worker-class", "gthread", "--threads", "4"]
    with gunicorn(APP, tmp_path, args, env) as server:
        port = server.port

        def check(method: str, path: str, route: str, status: int, body: bytes = b"") -> bytes:
            answer = request(port, method, path, body)
            assert answer.status == status, (path, answer.body[:200])
            tally.add(route, method, status, len(body), len(answer.body))
            return answer.body

        assert check("GET", "/items/3/?size=777", "/items/<int:pk>/", 200) == b"D" * 777
        assert check("GET", "/items/4/", "/items/<int:pk>/", 200) == b"E" * 10
        assert check("HEAD", "/items/5/?size=5000", "/items/<int:pk>/", 200) == b""
        order = check("GET", "/api/orders/abc-1/", "/api/orders/<slug:ref>/", 200)
        assert order == b"order abc-1" * 10
        answer = request(
            port, "GET", "/api/orders/abc-1/", headers={"If-None-Match": '"order-abc-1"'}
        )
        assert (answer.status, answer.body) == (304, b"")
        tally.add("/api/orders/<slug:ref>/", "GET", 304, 0, 0)
        check("GET", "/archive/2026/", "^archive/(?P<year>[0-9]{4})/$", 200)
        assert len(check("GET", "/stream/?chunks=30", "/stream/", 200)) > 30 * 50
        assert len(check("GET", "/file/", "/file/", 200)) == FILE_BYTES
        upload = random.Random(5).randbytes(50_000)
        assert check("POST", "/upload/", "/upload/", 200, upload) == b"50000"
        check("GET", "/boom/", "/boom/", 500)
        check("GET", "/no/such/page", "<unmatched>", 404)

        wait_for_samples()
        assert server.stop() == 0

    assert stored_totals(daemon, tmp_path) == tally.totals
