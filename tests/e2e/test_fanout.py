"""Two real daemons share one real Redis: frames go to daemon A, a subscriber on daemon B sees
A's meetings (snapshot, then deltas); Redis restarts mid-run, and the subscriber ends with the
state of a fresh snapshot. A daemon killed with SIGKILL: its meetings leave every subscriber's
view."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from cli.daemon_process import DaemonProcess, running_daemon
from protocol.subscribe import Delta, Snapshot, Subscribe, TopicMirror, server_json_decoder
from tests.helpers import RedisServer, free_port, redis_server

pytestmark = pytest.mark.e2e

_json = msgspec.json.Encoder()


def config(tmp_path: Path, name: str, redis_port: int, prefix: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        "[storage]\nbackend = 'none'\n"
        f"[fanout]\nredis_url = 'redis://127.0.0.1:{redis_port}/0'\n"
        f"redis_key_prefix = '{prefix}'\nredis_retry_max_s = 1.0\n"
    )
    return path


@contextmanager
def on_redis(tmp_path: Path, *names: str) -> Iterator[tuple[RedisServer, list[DaemonProcess]]]:
    """A Redis server of the test's own, and a daemon per name sharing it (one key prefix)."""
    redis_port = free_port()
    prefix = f"bwmon-test-{secrets.token_hex(4)}"
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(redis_port))
        daemons = [
            stack.enter_context(
                running_daemon(
                    tmp_path / f"{name}.log",
                    ["--config", str(config(tmp_path, name, redis_port, prefix))],
                )
            )
            for name in names
        ]
        yield redis, daemons


@contextmanager
def emitting(
    daemon: DaemonProcess, seconds: float, meetings: int = 3, seed: int = 1
) -> Iterator[None]:
    command = [sys.executable, "-m", "cli.main", "emit", "--udp-port", str(daemon.udp_port)]
    command += ["--meetings", str(meetings), "--participants", "2", "--duration", str(seconds)]
    command += ["--seed", str(seed)]
    command += ["--http-routes", "0", "--loss", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.kill()
        process.wait()


async def next_update(ws: WebSocketConnection, mirror: TopicMirror) -> Snapshot | Delta:
    """Read until the next snapshot or delta of the mirror's topic, apply it; resubscribe on a
    gap as a client must."""
    with trio.fail_after(20):
        while True:
            message = server_json_decoder.decode(await ws.get_message())
            if isinstance(message, Snapshot | Delta) and message.topic == mirror.topic:
                resume = mirror.receive(message)
                if resume is not None:
                    await ws.send_message(_json.encode(resume).decode())
                return message


async def fresh_snapshot(port: int, topic: str) -> Snapshot:
    async with open_websocket_url(f"ws://127.0.0.1:{port}/subscribe") as ws:
        await ws.send_message(_json.encode(Subscribe(topic=topic)).decode())
        with trio.fail_after(10):
            message = server_json_decoder.decode(await ws.get_message())
        await ws._stream.aclose()
    assert isinstance(message, Snapshot)
    return message


@pytest.mark.slow
async def test_a_subscriber_on_b_follows_meetings_on_a_through_a_redis_restart(
    tmp_path: Path,
) -> None:
    with on_redis(tmp_path, "a", "b") as (redis, (a, b)), emitting(a, seconds=60):
        mirror = TopicMirror("meetings")
        async with open_websocket_url(f"ws://127.0.0.1:{b.http_port}/subscribe") as ws:
            await ws.send_message(_json.encode(Subscribe(topic="meetings")).decode())
            first = await next_update(ws, mirror)
            assert isinstance(first, Snapshot)
            deltas = 0
            while len(mirror.entities) < 3 or deltas < 3:
                deltas += isinstance(await next_update(ws, mirror), Delta)
            assert all(m["participants"] == 2 for m in mirror.entities.values())
            epoch = mirror.epoch

            redis.restart()

            while mirror.epoch == epoch or len(mirror.entities) < 3:
                await next_update(ws, mirror)
            for _ in range(3):  # deltas flow again under the new epoch
                assert isinstance(await next_update(ws, mirror), Delta)
            fresh = await fresh_snapshot(b.http_port, "meetings")
            while mirror.seq is not None and mirror.seq < fresh.seq:
                await next_update(ws, mirror)
            assert (mirror.epoch, mirror.seq) == (fresh.epoch, fresh.seq)
            assert mirror.entities == fresh.entities
            await ws._stream.aclose()
        health_a, health_b = a.health(), b.health()
    assert health_a["fanout"]["channel"] == health_b["fanout"]["channel"] == "redis"
    assert health_a["fanout"]["epoch"] == health_b["fanout"]["epoch"] == fresh.epoch
    assert health_b["aggregate"]["meetings"] == 0  # B aggregated nothing itself
    assert health_b["fanout"]["snapshots_sent"] >= 2


def live_meetings(daemon: DaemonProcess) -> set[str]:
    """The meetings live on any daemon, as this one's ``/api/meetings`` has them."""
    url = f"http://127.0.0.1:{daemon.http_port}/api/meetings"
    with urllib.request.urlopen(url, timeout=5) as response:
        return set(json.load(response)["meetings"])


@pytest.mark.slow
async def test_a_killed_daemons_meetings_leave_the_subscribers_view(tmp_path: Path) -> None:
    with (
        on_redis(tmp_path, "a", "b") as (_, (a, b)),
        emitting(a, seconds=60, meetings=3, seed=1),
        emitting(b, seconds=60, meetings=2, seed=2),
    ):
        mirror = TopicMirror("meetings")
        async with open_websocket_url(f"ws://127.0.0.1:{b.http_port}/subscribe") as ws:
            await ws.send_message(_json.encode(Subscribe(topic="meetings")).decode())
            while len(mirror.entities) < 5:
                await next_update(ws, mirror)
            everyone = set(mirror.entities)
            # Both daemons' API answers from the shared state, as /subscribe does.
            assert live_meetings(a) == live_meetings(b) == everyone

            a.process.kill()  # SIGKILL: nothing of A's is removed by A
            a.process.wait()
            killed = trio.current_time()
            with trio.fail_after(20):  # the daemon TTL (10 s), a keeper period (3.3 s), a read
                while len(mirror.entities) != 2:
                    await next_update(ws, mirror)
            of_b = set(mirror.entities)
            assert of_b < everyone
            assert b.health()["aggregate"]["meetings"] == 2
            assert live_meetings(b) == of_b
            assert trio.current_time() - killed > 5  # removed when presumed dead, not before
            fresh = await fresh_snapshot(b.http_port, "meetings")
            while mirror.seq is not None and mirror.seq < fresh.seq:
                await next_update(ws, mirror)
            assert (mirror.seq, mirror.entities) == (fresh.seq, fresh.entities)
            assert set(fresh.entities) == of_b
            await ws._stream.aclose()
        redis_health = b.health()["fanout"]["redis"]
    assert redis_health["daemons_reaped"] == 1
    assert redis_health["entities_reaped"] >= 3  # A's meetings (and any open alert of A's)


def readiness(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{daemon.http_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


async def test_while_redis_is_down_a_subscriber_sees_its_daemons_meetings_live(
    tmp_path: Path,
) -> None:
    with (
        on_redis(tmp_path, "a") as (redis, (a,)),
        emitting(a, seconds=60, meetings=3, seed=3),
    ):
        mirror = TopicMirror("meetings")
        async with open_websocket_url(f"ws://127.0.0.1:{a.http_port}/subscribe") as ws:
            await ws.send_message(_json.encode(Subscribe(topic="meetings")).decode())
            while len(mirror.entities) < 3:
                await next_update(ws, mirror)
            shared = mirror.epoch

            redis.stop()
            while mirror.epoch == shared or len(mirror.entities) < 3:
                await next_update(ws, mirror)
            local = mirror.epoch
            assert a.health()["fanout"]["redis"]["mode"] == "local"
            status, body = readiness(a)
            assert status == 503
            assert (
                "channel: redis unreachable: serving this daemon's meetings only"
                in (body["reasons"])
            )
            fresh = await fresh_snapshot(a.http_port, "meetings")  # served without Redis
            assert fresh.epoch == local
            assert set(fresh.entities) == set(mirror.entities)

            redis.start()  # empty: the daemon sends everything to it
            while mirror.epoch == local or len(mirror.entities) < 3:
                await next_update(ws, mirror)
            assert mirror.epoch not in (shared, local)
            fresh = await fresh_snapshot(a.http_port, "meetings")
            while mirror.seq is not None and mirror.seq < fresh.seq:
                await next_update(ws, mirror)
            assert (mirror.epoch, mirror.seq) == (fresh.epoch, fresh.seq)
            assert set(mirror.entities) == set(fresh.entities)
            await ws._stream.aclose()
        health = a.health()["fanout"]
        assert readiness(a)[0] == 200
    assert (health["redis"]["mode"], health["redis"]["fallbacks"]) == ("redis", 1)
    assert health["epoch"] == fresh.epoch
