"""What a page of another origin does with the daemon, in the real (system) Chromium: it imports
``/client/bwmon.js`` straight from the daemon (a module script needs CORS), and posts frames to
``POST /ingest`` as the client's last flush does: ``fetch`` with ``keepalive`` as a simple
request (the token in the first ``hello``), one that needs a preflight (an ``Authorization``
header), and ``navigator.sendBeacon``; the page reads the answers, ``retry-after`` included."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.daemon_process import DaemonProcess, running_daemon

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PAGE = """<!doctype html><meta charset="utf-8"><title>another origin</title>
<script type="module">
const daemon = "http://127.0.0.1:%(port)d";
const frame = (p, q) => ({t: "rtc", m: "page", p, c: "pc-1", q, ts: 1764338400000 + q});
window.result = (async () => {
  const out = {};
  const module = await import(daemon + "/client/bwmon.js");
  out.imported = typeof module.createMonitor;
  const hello = {t: "hello", boot: "page-boot", kind: "browser", token: "any"};
  let answer = await fetch(daemon + "/ingest", {
    method: "POST", keepalive: true, body: JSON.stringify([hello, frame("simple", 0)]),
  });
  out.simple = [answer.status, await answer.json()];
  answer = await fetch(daemon + "/ingest", {
    method: "POST", keepalive: true,
    headers: {authorization: "Bearer any", "content-type": "application/json"},
    body: JSON.stringify([frame("preflighted", 0)]),
  });
  out.preflighted = [answer.status, await answer.json()];
  // Over the source's allowance (3 frames): 429, and when to retry.
  const late = JSON.stringify([frame("late", 0)]);
  answer = await fetch(daemon + "/ingest", {method: "POST", body: late});
  out.limited = [answer.status, answer.headers.get("retry-after"), await answer.json()];
  out.beacon = navigator.sendBeacon(daemon + "/ingest", late);
  return out;
})();
</script>
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[storage]\nbackend = 'none'\nstate_dir = '{tmp_path}'\n"
        "[limits]\nsource_frames_per_s = 0.01\nsource_burst_frames = 3\n"
    )
    with running_daemon(tmp_path / "daemon.log", ["--config", str(config)]) as process:
        yield process


@pytest.fixture
def page_server(daemon: DaemonProcess) -> Iterator[str]:
    """A server of the page on another origin (``localhost``, where the daemon is
    ``127.0.0.1``); its URL."""
    page = (PAGE % {"port": daemon.http_port}).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_of_another_origin_imports_the_module_and_posts(
    daemon: DaemonProcess, page_server: str
) -> None:
    from cli.bench.chromium import launch_chromium

    with launch_chromium() as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text))
        page.goto(page_server)
        result = page.evaluate("window.result")
        page.close()
    assert result["imported"] == "function", errors
    assert result["simple"] == [200, {"accepted": 2, "rejected": 0, "errors": []}]
    assert result["preflighted"] == [200, {"accepted": 1, "rejected": 0, "errors": []}]
    assert result["beacon"] is True
    status, retry_after, answer = result["limited"]
    assert (status, retry_after) == (429, "1")
    assert answer["errors"][0]["reason"] == "rate_limited"

    deadline = time.monotonic() + 10
    while (counted := daemon.health()["ingest"]["http"])["messages"] < 4:
        assert time.monotonic() < deadline, counted  # the beacon is sent in the background
        time.sleep(0.05)
    assert counted["frames_accepted"] == 3
    assert counted["rejected_by_reason"] == {"rate_limited": 2}  # the late frame, twice
    assert daemon.health()["http"]["requests_by_status"]["204"] == 1  # the one preflight
