"""A relative ``storage.state_dir`` means the same directory to ``bwmon serve`` and ``bwmon
export``: the one beside the configuration file, whatever directory each command runs in."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from cli.daemon_process import start_daemon
from tests.helpers import bwmon

pytestmark = pytest.mark.e2e


def test_serve_and_export_run_from_different_directories_use_one_database(
    tmp_path: Path,
) -> None:
    etc, serve_dir, export_dir = tmp_path / "etc", tmp_path / "run", tmp_path / "home"
    for directory in (etc, serve_dir, export_dir):
        directory.mkdir()
    config = etc / "collector.toml"
    config.write_text("[storage]\nstate_dir = 'state'\n")
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config)], cwd=serve_dir)
    try:
        now_ms = time.time() * 1000
        lines = [
            {
                "t": "rtc",
                "m": "here",
                "p": "alice",
                "c": "pc-1",
                "q": q,
                "ts": now_ms + q,
                "vob": 1000 * (q + 1),
            }
            for q in range(3)
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            payload = "\n".join(json.dumps(line) for line in lines).encode()
            udp.sendto(payload, ("127.0.0.1", daemon.udp_port))
        deadline = time.monotonic() + 10
        while daemon.health()["ingest"]["udp"]["frames_accepted"] < 3:
            assert time.monotonic() < deadline, daemon.health()["ingest"]
            time.sleep(0.05)
    finally:
        assert daemon.stop() == 0  # closes the open minute and writes its row
    assert (etc / "state" / "bwmon.db").is_file()
    assert list(serve_dir.iterdir()) == []
    result = bwmon("export", "rtc", "--config", str(config), "-f", "ndjson", cwd=export_dir)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(row["meeting"], row["participant"]) for row in rows] == [("here", "alice")]
    assert list(export_dir.iterdir()) == []
