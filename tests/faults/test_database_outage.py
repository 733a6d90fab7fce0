"""The real daemon writing to the real MariaDB through a TCP proxy that the test cuts for 60 s:
rows wait (memory, then spool) and arrive exactly once, with every byte emit sent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.daemon_process import start_daemon
from tests.helpers import CuttableProxy, admin

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

OUTAGE_S = 60


def test_a_60_s_database_outage_loses_and_doubles_nothing(tmp_path: Path, database: str) -> None:
    proxy = CuttableProxy(("127.0.0.1", 3306))
    config = tmp_path / "collector.toml"
    config.write_text(
        "[storage]\nbackend = 'mysql'\nmysql_user = 'root'\n"
        f"mysql_port = {proxy.port}\nmysql_database = '{database}'\n"
        f"state_dir = '{tmp_path}'\nflush_interval_s = 0.5\nretry_max_s = 2.0\n"
        "statement_timeout_s = 3.0\nqueue_max_rows = 5\n"
    )
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config)])
    try:
        command = [
            sys.executable, "-m", "cli.main", "emit", "--json", "--udp-port", str(daemon.udp_port),
            "--meetings", "4", "--participants", "3", "--interval", "0.5",
            "--duration", str(OUTAGE_S + 15),
        ]  # fmt: skip
        sender = subprocess.Popen(command, stdout=subprocess.PIPE)
        time.sleep(5)
        proxy.cut()
        time.sleep(OUTAGE_S)
        during = daemon.health()["storage"]
        proxy.restore()
        out, _ = sender.communicate(timeout=60)
        sent = json.loads(out)
        assert daemon.stop(timeout_s=30) == 0
    finally:
        daemon.stop()
        proxy.close()
    assert during["failed_flushes"] > 0
    assert during["rows_spooled"] > 0  # over queue_max_rows: the spool took them
    duplicates = admin(
        "SELECT meeting, participant, connection, minute, COUNT(*) FROM rtc_minute "
        "GROUP BY meeting, participant, connection, minute HAVING COUNT(*) > 1",
        database,
    )
    assert duplicates == []
    ((streams, minutes, stored),) = admin(
        "SELECT COUNT(DISTINCT participant), COUNT(DISTINCT minute), "
        "SUM(audio_bytes_sent + video_bytes_sent) FROM rtc_minute",
        database,
    )
    assert streams == 12
    assert isinstance(minutes, int)
    assert minutes >= 2
    assert isinstance(stored, float | int)
    assert float(stored) == sent["rtc_bytes_sent"] > 0
