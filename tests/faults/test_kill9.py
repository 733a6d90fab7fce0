"""kill -9 at random instants under steady load, with streams joining all along: the real daemon
on SQLite and on MariaDB, killed ten times over a minute (a seeded draw of the instants, and of
how many streams joined how long before each), restarted each time on the same state directory
and ports; the stored totals equal, stream by stream, what every stream sent."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from cli.daemon_process import DaemonProcess, start_daemon
from tests.helpers import admin
from tests.rtc_sender import RtcSender, kill, stored_totals, wait_for_streams

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

SEED = 23
KILLS = 10
SPAN_S = 62.0  # kills spread over a minute and more: a minute's rows close under load
STEADY_STREAMS = 100


def mysql_totals(database: str) -> dict[tuple[str, str], tuple[int, int]]:
    rows = admin(
        "SELECT meeting, participant, SUM(audio_bytes_sent), SUM(video_bytes_sent) "
        "FROM rtc_minute GROUP BY meeting, participant",
        database,
    )
    return {(str(m), str(p)): (int(a), int(v)) for m, p, a, v in rows}  # type: ignore[call-overload]


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_kill_9_at_random_instants_loses_and_doubles_nothing(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    draw = random.Random(SEED)
    config = tmp_path / "collector.toml"
    storage = f"[storage]\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n"
    database = ""
    if backend == "mysql":
        database = request.getfixturevalue("database")
        storage += f"backend = 'mysql'\nmysql_user = 'root'\nmysql_database = '{database}'\n"
    config.write_text(storage)
    daemon: DaemonProcess = start_daemon(tmp_path / "daemon-0.log", ["--config", str(config)])
    ports = ["--udp-port", str(daemon.udp_port), "--http-port", str(daemon.http_port)]
    sender = RtcSender(daemon.udp_port, seed=SEED)
    for meeting in range(STEADY_STREAMS // 10):
        sender.join(10, f"steady-{meeting}")
    sender.start()
    started = time.monotonic()
    instants = sorted(draw.uniform(2.0, SPAN_S) for _ in range(KILLS))
    try:
        wait_for_streams(daemon, STEADY_STREAMS)
        for k, at in enumerate(instants):
            sleep_until(started + at - draw.uniform(0.0, 1.5))
            sender.join(draw.randint(2, 10), f"joined-{k}")
            wait_for_streams(daemon, len(sender.streams))  # their first samples applied
            sleep_until(started + at)  # or at once, if the restart took longer
            kill(daemon)
            time.sleep(draw.uniform(0.0, 0.5))  # rounds go to nobody
            daemon = start_daemon(
                tmp_path / f"daemon-{k + 1}.log", ["--config", str(config), *ports]
            )
        sleep_until(started + SPAN_S + 1.0)
        sender.stop()
        sender.resend_last()  # the last totals, in case a datagram of the last round was lost
        daemon.settled_health()
        assert daemon.stop(timeout_s=30) == 0
    finally:
        daemon.stop()
        sender.close()
    span = time.monotonic() - started
    expected = sender.expected()
    stored = stored_totals(tmp_path / "bwmon.db") if backend == "sqlite" else mysql_totals(database)
    wrong = {
        key: (stored.get(key), sent) for key, sent in expected.items() if stored.get(key) != sent
    }
    assert not wrong, f"{len(wrong)} of {len(expected)} streams stored != sent: {wrong}"
    assert set(stored) == set(expected)
    total = sum(a + v for a, v in expected.values())
    print(
        f"{backend}: {KILLS} kills in {span:.0f} s, {len(expected)} streams, {total} bytes, exact"
    )
