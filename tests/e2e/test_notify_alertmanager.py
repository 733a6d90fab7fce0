"""The real daemon notifying a real Alertmanager (Debian's ``prometheus-alertmanager``, which
``.ci/run`` installs): the raised alert is active in ``GET /api/v2/alerts`` with its labels,
and gone from it once the clear arrived."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.daemon_process import start_daemon
from tests.e2e.notify_support import Feeder, active_alerts, config, sink_health
from tests.helpers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BINARY = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
AM_CONFIG = """\
route:
  receiver: nobody
  group_wait: 1s
receivers:
  - name: nobody
"""


def wait_until(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    if not Path(BINARY).exists():
        pytest.skip("prometheus-alertmanager is not installed (.ci/run installs it)")
    (tmp_path / "am.yml").write_text(AM_CONFIG)
    port = free_port()
    log = (tmp_path / "am.log").open("wb")
    process = subprocess.Popen(
        [
            BINARY,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until(ready)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def alerts(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        found: list[dict[str, Any]] = json.load(response)
    return [a for a in found if a["labels"].get("alertname") == "slow_rtt"]


def test_alertmanager_shows_the_alert_active_then_resolved(
    tmp_path: Path, alertmanager: str
) -> None:
    sinks = (
        f"[[notify]]\nname = 'am'\nkind = 'alertmanager'\nurl = '{alertmanager}'\n"
        "labels = { team = 'media' }\nresend_interval_s = 1.0\n"
    )
    daemon = start_daemon(tmp_path / "d.log", ["--config", str(config(tmp_path, sinks))])
    feeder = Feeder()
    try:
        feeder.feed(daemon, 300, lambda: len(alerts(alertmanager)) == 1)
        [alert] = alerts(alertmanager)
        assert alert["status"]["state"] == "active"
        assert {k: alert["labels"][k] for k in ("severity", "meeting", "participant", "team")} == {
            "severity": "critical",
            "meeting": "m1",
            "participant": "p1",
            "team": "media",
        }
        assert alert["annotations"]["alert_id"].startswith("slow_rtt:m1/p1:")
        assert alert["generatorURL"].endswith("/api/alerts?meeting=m1")
        wait_until(lambda: sink_health(daemon, "am")["resent"] >= 1)  # posted again meanwhile
        feeder.feed(daemon, 20, lambda: active_alerts(daemon) == 0)
        wait_until(lambda: not alerts(alertmanager))
        health = sink_health(daemon, "am")
        assert (health["sent"], health["failed"], health["firing"]) == (2, 0, 0)
        assert daemon.stop() == 0
    finally:
        daemon.stop()
