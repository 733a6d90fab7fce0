"""Redis restarts under subscribers: two real daemons share a Redis of the test's own, both take
UDP frames all along, and 30 WebSocket subscribers (half on each daemon, each on ``meetings``
and on one ``meeting:<id>``) stay connected while Redis is killed and started again three times.
After each restart every subscriber follows the daemons to their new epoch; at the end every
subscriber's copy of each topic equals a fresh snapshot at the same position, no subscriber was
disconnected or got an error, and both daemons are alive with no error in their logs."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from trio_websocket import open_websocket_url

from cli.daemon_process import DaemonProcess, running_daemon
from protocol.subscribe import (
    Delta,
    Entities,
    Snapshot,
    Subscribe,
    SubscribeError,
    TopicMirror,
    server_json_decoder,
)
from tests.helpers import RedisServer, free_port, redis_server, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

SUBSCRIBERS = 30
RESTARTS = 3
MEETINGS = {"a": 4, "b": 3}  # meetings emitted to each daemon
HISTORY = 256  # positions a subscriber remembers, to compare with a later fresh snapshot

_json = msgspec.json.Encoder()


@contextmanager
def two_daemons_on_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, list[DaemonProcess]]]:
    redis_port = free_port()
    prefix = f"bwmon-faults-{secrets.token_hex(4)}"
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(redis_port))
        daemons = []
        for name in MEETINGS:
            config = tmp_path / f"{name}.toml"
            config.write_text(
                "[storage]\nbackend = 'none'\n"
                f"[fanout]\nredis_url = 'redis://127.0.0.1:{redis_port}/0'\n"
                f"redis_key_prefix = '{prefix}'\nredis_retry_max_s = 1.0\n"
            )
            daemons.append(
                stack.enter_context(
                    running_daemon(tmp_path / f"{name}.log", ["--config", str(config)])
                )
            )
        yield redis, daemons


@contextmanager
def udp_load(daemons: list[DaemonProcess]) -> Iterator[None]:
    """``bwmon emit`` over UDP to each daemon for as long as the test runs."""
    processes = []
    for seed, (daemon, meetings) in enumerate(zip(daemons, MEETINGS.values(), strict=True)):
        command = [
            sys.executable, "-m", "cli.main", "emit", "--udp-port", str(daemon.udp_port),
            "--meetings", str(meetings), "--participants", "3", "--interval", "0.5",
            "--duration", "300", "--seed", str(seed + 1), "--http-routes", "0", "--loss", "0",
        ]  # fmt: skip
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
    try:
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


class Subscriber:
    """One ``/subscribe`` session: a mirror per topic kept by the rules of PROTOCOL.md §12.5,
    the recent states it held by position, and the epochs it went through."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.port = port
        self.mirrors = {topic: TopicMirror(topic) for topic in topics}
        self.history: dict[tuple[str, str, int], Entities] = {}
        self.epochs: dict[str, list[str]] = {topic: [] for topic in topics}
        self.errors: list[SubscribeError] = []
        self.resubscribed = 0

    async def follow(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read until cancelled; a closed connection ends the test (it must never happen)."""
        async with open_websocket_url(f"ws://127.0.0.1:{self.port}/subscribe") as ws:
            for topic in self.mirrors:
                await ws.send_message(_json.encode(Subscribe(topic=topic)).decode())
            task_status.started()
            try:
                while True:
                    message = server_json_decoder.decode(await ws.get_message())
                    if isinstance(message, SubscribeError):
                        self.errors.append(message)
                    elif isinstance(message, Snapshot | Delta) and message.topic in self.mirrors:
                        mirror = self.mirrors[message.topic]
                        resume = mirror.receive(message)
                        if resume is not None:
                            self.resubscribed += 1
                            await ws.send_message(_json.encode(resume).decode())
                        else:
                            self._remember(mirror)
            finally:
                with trio.CancelScope(shield=True):
                    await ws._stream.aclose()

    def _remember(self, mirror: TopicMirror) -> None:
        assert mirror.epoch is not None
        assert mirror.seq is not None
        epochs = self.epochs[mirror.topic]
        if not epochs or epochs[-1] != mirror.epoch:
            epochs.append(mirror.epoch)
        self.history[(mirror.topic, mirror.epoch, mirror.seq)] = {
            entity: dict(fields) for entity, fields in mirror.entities.items()
        }
        if len(self.history) > HISTORY:
            del self.history[next(iter(self.history))]

    def passed(self, topic: str, epoch: str, seq: int) -> bool:
        """Whether the subscriber held ``topic`` at that position, or went beyond it."""
        mirror = self.mirrors[topic]
        return (topic, epoch, seq) in self.history or (
            mirror.epoch == epoch and mirror.seq is not None and mirror.seq > seq
        )

    def on_epoch(self, epoch: str) -> bool:
        return all(mirror.epoch == epoch for mirror in self.mirrors.values())


async def fresh_snapshot(port: int, topic: str) -> Snapshot:
    async with open_websocket_url(f"ws://127.0.0.1:{port}/subscribe") as ws:
        await ws.send_message(_json.encode(Subscribe(topic=topic)).decode())
        with trio.fail_after(10):
            while True:
                message = server_json_decoder.decode(await ws.get_message())
                if isinstance(message, Snapshot):
                    break
        await ws._stream.aclose()
    return message


async def agrees_with_a_fresh_snapshot(subscriber: Subscriber, topic: str) -> None:
    """The subscriber held, at the position of a fresh snapshot, the snapshot's entities. A
    subscriber that jumped over that position (a resynchronisation) is asked again."""
    for _ in range(5):
        fresh = await fresh_snapshot(subscriber.port, topic)
        await wait_for(partial(subscriber.passed, topic, fresh.epoch, fresh.seq), timeout_s=30)
        held = subscriber.history.get((topic, fresh.epoch, fresh.seq))
        if held is not None:
            assert held == fresh.entities, topic
            return
    raise AssertionError(f"{topic}: never at the position of a fresh snapshot")


def all_on(subscribers: list[Subscriber], epoch: str) -> bool:
    return all(subscriber.on_epoch(epoch) for subscriber in subscribers)


async def health(daemon: DaemonProcess) -> dict[str, Any]:
    return await trio.to_thread.run_sync(daemon.health)


async def shared_epoch(daemons: list[DaemonProcess], other_than: str | None) -> str:
    """Wait until both daemons are back on Redis, on one epoch other than ``other_than``."""
    with trio.fail_after(60):
        while True:
            fanouts = [(await health(daemon))["fanout"] for daemon in daemons]
            epochs = {fanout["epoch"] for fanout in fanouts}
            modes = {fanout["redis"]["mode"] for fanout in fanouts}
            if modes == {"redis"} and len(epochs) == 1 and other_than not in epochs:
                (epoch,) = epochs
                return str(epoch)
            await trio.sleep(0.2)


async def test_every_subscriber_resyncs_through_three_redis_restarts_under_load(
    tmp_path: Path,
) -> None:
    with two_daemons_on_redis(tmp_path) as (redis, daemons), udp_load(daemons):
        probe = Subscriber(daemons[1].http_port, ["meetings"])
        async with trio.open_nursery() as nursery:
            await nursery.start(probe.follow)
            await wait_for(
                lambda: len(probe.mirrors["meetings"].entities) == sum(MEETINGS.values()), 30
            )
            nursery.cancel_scope.cancel()
        meetings = sorted(probe.mirrors["meetings"].entities)
        subscribers = [
            Subscriber(
                daemons[i % 2].http_port, ["meetings", f"meeting:{meetings[i % len(meetings)]}"]
            )
            for i in range(SUBSCRIBERS)
        ]
        epoch = await shared_epoch(daemons, other_than=None)
        async with trio.open_nursery() as nursery:
            for subscriber in subscribers:
                await nursery.start(subscriber.follow)
            await wait_for(partial(all_on, subscribers, epoch), 30)

            for _ in range(RESTARTS):
                await trio.to_thread.run_sync(redis.restart)
                epoch = await shared_epoch(daemons, other_than=epoch)
                await wait_for(partial(all_on, subscribers, epoch), 60)
                everyone = [len(s.mirrors["meetings"].entities) for s in subscribers]
                assert set(everyone) == {sum(MEETINGS.values())}

            async with trio.open_nursery() as checks:
                for subscriber in subscribers:
                    for topic in subscriber.mirrors:
                        checks.start_soon(agrees_with_a_fresh_snapshot, subscriber, topic)
            nursery.cancel_scope.cancel()
        healths = [await health(daemon) for daemon in daemons]
        alive = [daemon.process.poll() is None for daemon in daemons]
    assert alive == [True, True]
    for subscriber in subscribers:
        assert subscriber.errors == []
        for topic, epochs in subscriber.epochs.items():
            assert len(epochs) >= RESTARTS + 1, topic  # it went through every restart
            assert epochs[-1] == epoch
    for fanout in (h["fanout"] for h in healths):
        assert fanout["epoch"] == epoch
        assert fanout["redis"]["fallbacks"] >= RESTARTS
    for daemon in daemons:
        events = daemon.log_events()
        assert [e for e in events if e.get("level") in ("error", "critical")] == []
        assert "Traceback" not in daemon.log_path.read_text()
