"""A real Prometheus (Debian's ``prometheus``) scrapes a real daemon on loopback every second;
PromQL over its HTTP API returns the values the fed frames make; then a screenshot of
Prometheus's graph page, which the README shows (docs/screenshots/prometheus.png).

Slow: Prometheus takes a few seconds to start and a few scrapes to have the series."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cli.daemon_process import DaemonProcess, running_daemon
from tests.e2e.test_quality_metrics import kept_live, write_config
from tests.helpers import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="no prometheus (apt-get install prometheus)"
    ),
]

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "prometheus.png"


@contextmanager
def prometheus(tmp_path: Path, daemon: DaemonProcess) -> Iterator[str]:
    """Prometheus scraping ``daemon`` every second, its data in ``tmp_path``; yields its URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: bwmon\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{daemon.http_port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus did not get ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(url: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant PromQL query: the value of each series, by its labels."""
    with urllib.request.urlopen(
        f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5
    ) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return {
        tuple(sorted(item["metric"].items())): float(item["value"][1])
        for item in body["data"]["result"]
    }


def eventually(url: str, promql: str, expected: dict[tuple[tuple[str, str], ...], float]) -> None:
    deadline = time.monotonic() + 30
    while True:
        got = query(url, promql)
        if got == expected or time.monotonic() > deadline:
            assert got == expected, promql
            return
        time.sleep(0.5)


def test_promql_over_a_real_prometheus_returns_the_fed_values(tmp_path: Path) -> None:
    """PromQL over Prometheus' API gives the fed values; then the screenshot of its graph page
    that the README shows (docs/screenshots/prometheus.png): participants by quality level
    and their median RTT."""
    from cli.bench.chromium import launch_chromium  # Playwright: a dev dependency

    config = write_config(tmp_path)
    with (
        running_daemon(tmp_path / "d.log", ["--config", str(config)]) as daemon,
        kept_live(daemon),
        prometheus(tmp_path, daemon) as url,
    ):
        eventually(url, "sum(bwmon_quality_participants)", {(): 3.0})
        eventually(url, "sum(bwmon_quality_meetings)", {(): 2.0})
        eventually(
            url,
            "sum by (protocol) (bwmon_participants_relayed)",
            {(("protocol", "tcp"),): 1.0, (("protocol", "udp"),): 1.0, (("protocol", "tls"),): 0.0},
        )
        # RTT of 40, 120 and 300 ms: two at or under 150 ms
        eventually(url, 'sum(bwmon_participant_rtt_seconds_bucket{le="0.15"})', {(): 2.0})
        eventually(url, "count(bwmon_alerts_open)", {(): 7.0})
        # the route's and the service's counters grow; only the listed route has its series
        assert query(url, "sum(bwmon_http_service_requests_total)")[()] > 0
        routes = query(url, "count by (route) (bwmon_http_route_sent_bytes_total)")
        assert routes == {(("route", "/listed"),): 1.0}
        time.sleep(10)  # a third of the graphed 30 s
        graph = urllib.parse.urlencode(
            {
                "g0.expr": "sum by (level) (bwmon_quality_participants)",
                "g0.tab": "0",
                "g0.range_input": "30s",
                "g0.stacked": "1",
                "g1.expr": "histogram_quantile(0.5, sum by (le) "
                "(bwmon_participant_rtt_seconds_bucket))",
                "g1.tab": "0",
                "g1.range_input": "30s",
            }
        )
        with launch_chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 1680})
            page.goto(f"{url}/graph?{graph}")
            # Debian's Prometheus serves its classic UI: rickshaw draws each graph as an SVG.
            for index in range(2):
                page.locator(".graph svg").nth(index).wait_for(state="attached", timeout=20_000)
            time.sleep(1)  # the charts' last draw
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))  # the whole page fits: no fixed bar across it
    assert SCREENSHOT.stat().st_size > 10_000
