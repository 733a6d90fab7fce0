"""The notifier's tasks in virtual time: order, retries and their waits, refusals, the bounded
queue, filters, what a checkpoint keeps, shutdown, Alertmanager's resends, reload. The receiver
is a function standing in for the HTTP request (``collector.notifications.client`` is tested
against a real socket in test_client.py)."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from collector.aggregate.alerts import AlertEvent
from collector.config import NotifySinkConfig
from collector.notifications.client import Answer, DeliveryFailed
from collector.notifications.notifier import AlertNotifier, resolve


def event(n: int, state: str = "raised", severity: str = "warning", rule: str = "r") -> AlertEvent:
    return msgspec.convert(
        {
            "id": f"{rule}:m/p:{n}@{n}",
            "rule": rule,
            "key": ["m", "p"],
            "state": state,
            "severity": severity,
            "value": 500.0,
            "threshold": 400.0,
            "at": 1_700_000_000.0 + n,
            "raised_at": 1_700_000_000.0 + n,
        },
        AlertEvent,
    )


def sink(name: str = "hook", kind: str = "webhook", **settings: Any) -> NotifySinkConfig:
    return NotifySinkConfig(name=name, kind=kind, url="http://127.0.0.1:9/x", **settings)  # type: ignore[arg-type]


class Receiver:
    """Answers each request with the next of ``script`` (an int is a status, None no answer),
    then 200; records the time and body of each."""

    def __init__(self, script: list[int | None] | None = None) -> None:
        self.script = list(script or [])
        self.calls: list[tuple[float, dict[str, str], Any]] = []

    async def __call__(
        self, url: str, body: bytes, headers: list[tuple[str, str]], timeout_s: float
    ) -> Answer:
        self.calls.append((trio.current_time(), dict(headers), json.loads(body)))
        await trio.sleep(0.01)
        status = self.script.pop(0) if self.script else 200
        if status is None:
            raise DeliveryFailed("refused")
        return Answer(status, None, b"")

    def delivered(self) -> list[str]:
        return [h["x-bwmon-delivery"] for _, h, _ in self.calls]


def notifier(configs: list[NotifySinkConfig], receiver: Receiver, **kw: Any) -> AlertNotifier:
    return AlertNotifier(
        resolve(configs),
        version="test",
        post=receiver,
        clock=trio.current_time,
        rng=random.Random(1),
        **kw,
    )


async def test_failures_are_retried_with_growing_waits_then_delivered_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    receiver = Receiver([None, 503, None, 500])
    n = notifier([sink(retry_initial_s=1.0, retry_max_s=3.0)], receiver)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.serve)
        n.offer([event(1), event(1, "cleared")])
        await trio.sleep(60)
        await n.stop(1)
    assert receiver.delivered() == ["r:m/p:1@1:raised"] * 5 + ["r:m/p:1@1:cleared"]
    times = [t for t, _, _ in receiver.calls]
    waits = [b - a - 0.01 for a, b in itertools.pairwise(times)][:4]
    for wait, ceiling in zip(waits, [1.0, 2.0, 3.0, 3.0], strict=True):
        assert ceiling / 2 - 1e-6 <= wait <= ceiling + 1e-6
    health = n.health().sinks[0]
    assert (health.sent, health.failed, health.retried, health.queue_depth) == (2, 4, 4, 0)
    assert health.last_error is None
    assert n.state()["sinks"]["hook"]["pending"] == []


async def test_a_refused_transition_is_dropped_and_the_next_one_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    receiver = Receiver([400])
    n = notifier([sink()], receiver)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.serve)
        n.offer([event(1), event(2)])
        await trio.sleep(5)
        await n.stop(1)
    assert receiver.delivered() == ["r:m/p:1@1:raised", "r:m/p:2@2:raised"]
    health = n.health().sinks[0]
    assert (health.sent, health.rejected, health.failed) == (1, 1, 0)


async def test_a_receiver_that_stays_down_fills_the_queue_which_drops_the_oldest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    receiver = Receiver([None] * 1000)
    n = notifier([sink(queue_max=3, retry_max_s=1.0)], receiver)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.serve)
        n.offer([event(1)])
        await trio.sleep(0.001)  # being sent
        n.offer([event(i) for i in range(2, 11)])  # never waits, however many
        await trio.sleep(10)
        await n.stop(1)
    health = n.health().sinks[0]
    assert (health.queue_depth, health.dropped, health.sent) == (3, 7, 0)
    pending = [e["id"] for e in n.state()["sinks"]["hook"]["pending"]]
    assert pending == ["r:m/p:1@1", "r:m/p:9@9", "r:m/p:10@10"]  # the one being sent stays


async def test_filters_admit_by_severity_and_rule(autojump_clock: trio.testing.MockClock) -> None:
    receiver = Receiver()
    n = notifier(
        [
            sink("loud", min_severity="critical"),
            sink("rtt", rules=["high_rtt"]),
        ],
        receiver,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(n.serve)
        n.offer([event(1, severity="warning"), event(2, severity="critical")])
        n.offer([event(3, rule="high_rtt", severity="info")])
        await trio.sleep(1)
        await n.stop(1)
    assert sorted(receiver.delivered()) == ["high_rtt:m/p:3@3:raised", "r:m/p:2@2:raised"]


async def test_what_was_not_delivered_survives_a_restart_and_nothing_else(
    autojump_clock: trio.testing.MockClock,
) -> None:
    down = Receiver([None] * 100)
    first = notifier([sink(), sink("other")], down)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        first.offer([event(1), event(1, "cleared")])
        await trio.sleep(3)
        await first.stop(1)
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(first.state()))  # as the file has it
    assert [len(s["pending"]) for s in state["sinks"].values()] == [2, 2]

    up = Receiver()
    # "other" is now another kind: its pending transitions are not sent to the new one.
    second = notifier([sink(), sink("other", kind="slack")], up, restored=state)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.serve)
        await trio.sleep(1)
        await second.stop(1)
    assert up.delivered() == ["r:m/p:1@1:raised", "r:m/p:1@1:cleared"]
    assert all(len(s["pending"]) == 0 for s in second.state()["sinks"].values())


async def test_stop_waits_no_longer_than_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    n = notifier([sink(retry_initial_s=30, retry_max_s=60)], Receiver([None] * 100))
    async with trio.open_nursery() as nursery:
        await nursery.start(n.serve)
        n.offer([event(1)])
        await trio.sleep(1)
        started = trio.current_time()
        await n.stop(5)
        assert trio.current_time() - started <= 5
    assert len(n.state()["sinks"]["hook"]["pending"]) == 1


async def test_alertmanager_sinks_post_firing_alerts_again_until_they_clear(
    autojump_clock: trio.testing.MockClock,
) -> None:
    receiver = Receiver()
    n = notifier(
        [sink("am", kind="alertmanager", resend_interval_s=10, labels={"team": "media"})],
        receiver,
        active=[event(0)],  # raised before a restart: still firing
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(n.serve)
        await trio.sleep(0.001)
        n.offer([event(1)])
        await trio.sleep(25)
        n.offer([event(1, "cleared"), event(0, "cleared")])
        await trio.sleep(25)
        await n.stop(1)
    posted = [[a["annotations"]["alert_id"] for a in body] for _, _, body in receiver.calls]
    resends = [ids for (_, headers, _), ids in zip(receiver.calls, posted, strict=True)
               if "x-bwmon-delivery" not in headers]  # fmt: skip
    assert resends[0] == ["r:m/p:0@0"]  # at start: Alertmanager may have resolved it meanwhile
    assert all(set(ids) == {"r:m/p:0@0", "r:m/p:1@1"} for ids in resends[1:3])
    assert len(resends) == 3  # at 0 s, 10 s, 20 s; none once both cleared
    cleared = [
        body[0]
        for _, h, body in receiver.calls
        if h.get("x-bwmon-delivery", "").endswith(":cleared")
    ]
    assert [a["annotations"]["alert_id"] for a in cleared] == ["r:m/p:1@1", "r:m/p:0@0"]
    assert all("endsAt" in a and a["labels"]["team"] == "media" for a in cleared)
    assert n.health().sinks[0].resent == 1 + 2 + 2
    assert n.health().sinks[0].firing == 0


async def test_a_reload_adds_changes_and_removes_sinks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    receiver = Receiver()
    n = notifier([sink("a"), sink("b")], receiver)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.serve)
        n.apply(resolve([sink("a", min_severity="critical"), sink("c")]))
        n.offer([event(1)])
        await trio.sleep(1)
        await n.stop(1)
    assert sorted(s.name for s in n.health().sinks) == ["a", "c"]
    assert [s.sent for s in n.health().sinks] == [0, 1]  # "a" now wants critical only


def test_secrets_and_urls_come_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    monkeypatch.setenv("HOOK_URL", "https://hooks.example.com/T/B/X")
    (tmp_path / "secret").write_text("from-file\n")
    by_env = NotifySinkConfig(
        name="a", kind="webhook", url_env="HOOK_URL", secret_env="HOOK_SECRET"
    )
    by_file = NotifySinkConfig(
        name="b", kind="webhook", url="http://x/", secret_file=str(tmp_path / "secret")
    )
    [a, b] = resolve([by_env, by_file])
    assert (a.url, a.secret, b.secret) == (
        "https://hooks.example.com/T/B/X",
        b"s3cret",
        b"from-file",
    )


async def test_a_bug_while_sending_costs_one_transition_not_the_daemon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    receiver = Receiver()

    async def broken_once(
        url: str, body: bytes, headers: list[tuple[str, str]], timeout_s: float
    ) -> Answer:
        if json.loads(body)["id"] == "r:m/p:1@1:raised":
            raise RuntimeError("a bug")
        return await receiver(url, body, headers, timeout_s)

    n = AlertNotifier(resolve([sink()]), version="test", post=broken_once, clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.serve)
        n.offer([event(1), event(2)])
        await trio.sleep(5)
        await n.stop(1)
    assert receiver.delivered() == ["r:m/p:2@2:raised"]
    assert n.health().sinks[0].rejected == 1
