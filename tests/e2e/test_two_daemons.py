"""Two real daemons on one Redis and one MariaDB database, each receiving half of the participants
of the same meetings (what a load balancer that hashes sources does): the ``meetings`` topic and
``/api/meetings`` on either daemon show every meeting whole; ``kill -9`` of one daemon removes its
part only; after its restart (from its checkpoint) the stored rows hold every byte sent, counted
from each stream's first sample. Real epoch clock values throughout."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from cli.daemon_process import DaemonProcess, start_daemon
from protocol import Frame, RtcSample, encode_msgpack
from tests.e2e.test_fanout import fresh_snapshot
from tests.helpers import admin, free_port, redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEETINGS = ("standup", "review")
PEOPLE = ("p0", "p1", "p2", "p3")
ON_A = frozenset({"p0", "p1"})  # the others reach daemon B
ROUNDS = 50
INTERVAL_S = 0.2
BYTES_PER_SAMPLE = 20_000  # 800 kbit/s at one sample per 0.2 s


def config(tmp_path: Path, name: str, database: str, redis_port: int) -> Path:
    path = tmp_path / f"{name}.toml"
    (tmp_path / name).mkdir(exist_ok=True)
    path.write_text(
        f"[storage]\nbackend = 'mysql'\nstate_dir = '{tmp_path / name}'\n"
        f"mysql_user = 'root'\nmysql_database = '{database}'\nflush_interval_s = 0.5\n"
        f"[fanout]\nredis_url = 'redis://127.0.0.1:{redis_port}/0'\n"
        "redis_key_prefix = 'two-daemons'\nredis_retry_max_s = 1.0\n"
    )
    return path


def sample(meeting: str, participant: str, q: int) -> RtcSample:
    """The ``q``-th sample (from 0) of a stream: its counters are what it sent so far, and the
    first one already carries a sample's worth (media flowed before the first getStats)."""
    sent = BYTES_PER_SAMPLE * (q + 1)
    return RtcSample(
        meeting=meeting,
        participant=participant,
        connection=f"pc-{meeting}-{participant}",
        seq=q,
        client_ts=time.time() * 1000,
        video_bytes_sent=sent,
        video_packets_sent=20 * (q + 1),
        video_bytes_received=sent // 2,
        video_packets_received=10 * (q + 1),
        rtt_ms=30.0,
    )


async def send_rounds(a: DaemonProcess, b: DaemonProcess, sent: trio.Event) -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        for q in range(ROUNDS):
            for daemon, people in ((a, ON_A), (b, set(PEOPLE) - ON_A)):
                frames: list[Frame] = [sample(m, p, q) for m in MEETINGS for p in sorted(people)]
                await sock.sendto(encode_msgpack(frames), ("127.0.0.1", daemon.udp_port))
            await trio.sleep(INTERVAL_S)
    sent.set()


def api_meetings(daemon: DaemonProcess) -> dict[str, Any]:
    url = f"http://127.0.0.1:{daemon.http_port}/api/meetings"
    with urllib.request.urlopen(url, timeout=5) as response:
        meetings: dict[str, Any] = json.load(response)["meetings"]
    return meetings


def participants(meetings: dict[str, Any]) -> dict[str, int]:
    return {m: fields["participants"] for m, fields in meetings.items()}


async def meetings_of(*daemons: DaemonProcess) -> list[dict[str, Any]]:
    """The ``meetings`` topic as a new subscriber of each daemon gets it."""
    return [(await fresh_snapshot(d.http_port, "meetings")).entities for d in daemons]


def whole(meetings: dict[str, Any]) -> bool:
    """Every meeting with its four participants and their bitrate (800 kbit/s each)."""
    return participants(meetings) == dict.fromkeys(MEETINGS, 4) and all(
        abs(m["up_bps"] - 3_200_000) < 0.1 * 3_200_000 for m in meetings.values()
    )


async def test_two_daemons_show_split_meetings_whole_and_store_every_byte(
    tmp_path: Path, database: str
) -> None:
    redis_port = free_port()
    with redis_server(redis_port):
        a = start_daemon(
            tmp_path / "a.log", ["--config", str(config(tmp_path, "a", database, redis_port))]
        )
        b = start_daemon(
            tmp_path / "b.log", ["--config", str(config(tmp_path, "b", database, redis_port))]
        )
        restarted: DaemonProcess | None = None
        try:
            sent = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_rounds, a, b, sent)
                # While the media flows: every meeting whole, on either daemon, both ways
                # (four participants at 800 kbit/s each, merged from both daemons' parts).
                with trio.fail_after(ROUNDS * INTERVAL_S):
                    while not all(map(whole, await meetings_of(a, b))):  # noqa: ASYNC110
                        await trio.sleep(0.5)
                for daemon in (a, b):
                    assert participants(api_meetings(daemon)) == dict.fromkeys(MEETINGS, 4)
                await sent.wait()
            await trio.sleep(1.5)  # a flush and a checkpoint of everything sent

            a.process.kill()  # SIGKILL: A removes nothing itself
            a.process.wait()
            with trio.fail_after(25):  # the daemon TTL (10 s), a keeper period, a read
                while participants((await meetings_of(b))[0]) != {  # noqa: ASYNC110 - polled
                    m: 2 for m in MEETINGS
                }:
                    await trio.sleep(0.5)
            assert participants(api_meetings(b)) == dict.fromkeys(MEETINGS, 2)
            assert b.health()["fanout"]["redis"]["daemons_reaped"] == 1

            restarted = start_daemon(
                tmp_path / "a2.log", ["--config", str(config(tmp_path, "a", database, redis_port))]
            )
            assert any(e.get("event") == "checkpoint_restored" for e in restarted.log_events())
        finally:
            for running in (restarted, b, a):
                if running is not None:
                    assert running.stop() in (0, -9)

    rows = await trio.to_thread.run_sync(
        admin,
        "SELECT meeting, participant, SUM(video_bytes_sent), SUM(video_bytes_received) "
        "FROM rtc_minute GROUP BY meeting, participant",
        database,
    )
    stored = {(m, p): (float(str(up)), float(str(down))) for m, p, up, down in rows}
    every_byte = BYTES_PER_SAMPLE * ROUNDS
    assert stored == {(m, p): (every_byte, every_byte // 2) for m in MEETINGS for p in PEOPLE}
