"""A database that hangs: the real daemon writes to MariaDB through a proxy that stops
forwarding (as a stopped server process would: connections stay open, nothing is answered).
``/readyz`` turns 503 within the probe's few seconds, not after a flush's statement timeout,
and 200 again once the database answers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cli.daemon_process import start_daemon
from tests.helpers import CuttableProxy

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status), json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_readyz_says_not_ready_within_seconds_of_a_database_hang(
    tmp_path: Path, database: str
) -> None:
    proxy = CuttableProxy(("127.0.0.1", 3306))
    config = tmp_path / "collector.toml"
    config.write_text(  # the default statement timeout: a flush gives up after 15 s
        "[storage]\nbackend = 'mysql'\nmysql_user = 'root'\n"
        f"mysql_port = {proxy.port}\nmysql_database = '{database}'\n"
        f"state_dir = '{tmp_path}'\n"
    )
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config)])
    try:
        assert readyz(daemon.http_port)[0] == 200
        proxy.hang()
        hung = time.monotonic()
        while (answer := readyz(daemon.http_port))[0] == 200:
            assert time.monotonic() - hung < 30, "still ready"
            time.sleep(0.1)
        noticed = time.monotonic() - hung
        status, body = answer
        assert status == 503
        assert body["reasons"] == [
            "storage: not responding: the database did not answer within 2 s"
        ]
        assert daemon.health()["storage"]["probe_error"] is not None
        proxy.flow()
        deadline = time.monotonic() + 30
        while readyz(daemon.http_port)[0] != 200:
            assert time.monotonic() < deadline, "not ready again"
            time.sleep(0.1)
        assert daemon.health()["storage"]["probe_error"] is None
        assert daemon.stop() == 0
    finally:
        daemon.stop()
        proxy.close()
    # Its 2 s deadline and a 1 s interval, with room for a loaded machine; a flush alone
    # would have taken its 10 s statement timeout + 5 s.
    assert noticed < 10
