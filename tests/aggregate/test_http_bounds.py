"""HTTP state is bounded: instances per route are capped, idle instances and routes expire
(their bytes already closed into minute rows), an expired route frees its slot under
``max_http_routes``, and the checkpoint holds only what is live."""

from __future__ import annotations

import msgspec

from collector.aggregate.engine import Engine
from collector.aggregate.settings import AggregateSettings
from protocol import HttpSample

T0 = 1_800_000_000.0  # a minute boundary
KEY = ("api", "/v1/items", "GET")


def http(instance: str, seq: int, requests: int, route: str = "/v1/items") -> HttpSample:
    return HttpSample(
        service="api",
        instance=instance,
        boot=f"boot-{instance}",
        route=route,
        method="GET",
        seq=seq,
        client_ts=1.0,
        requests=requests,
        status=[0, requests, 0, 0, 0],
        bytes_in=10 * requests,
        bytes_out=1_000 * requests,
        latency_hist=[requests] + [0] * 11,
        latency_sum_ms=float(requests),
    )


def stored_requests(engine: Engine) -> float:
    return sum(row.requests for row in engine.drain().http_rows)


def restart(engine: Engine, now: float) -> Engine:
    """A new engine from ``engine``'s checkpoint, through MessagePack as on disk."""
    restored = Engine(engine.settings)
    restored.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(engine.snapshot())), now)
    return restored


def test_new_instances_over_the_route_cap_are_refused_and_counted() -> None:
    engine = Engine(AggregateSettings(max_http_instances_per_route=3))
    engine.add([http(f"host:{pid}", 0, 10) for pid in range(5)], T0)
    assert len(engine.routes[KEY].instances) == 3
    # The instances it holds go on; the refused ones stay refused while it is full.
    engine.add([http(f"host:{pid}", 1, 30) for pid in range(5)], T0 + 1)
    stats = engine.stats()
    assert stats["http_instances"] == 3
    assert stats["samples_not_applied"]["http"]["http_instance_cap"] == 4
    assert stats["refused_by_reason"] == {"http_instance_cap": 4}
    assert stats["max_http_instances_per_route"] == 3
    engine.close_minutes(T0 + 2)
    assert stored_requests(engine) == 3 * 30


def test_new_instances_over_the_cap_of_all_routes_are_refused_and_counted() -> None:
    engine = Engine(AggregateSettings(max_http_instances=4, http_idle_s=90))
    engine.add([http(f"a:{pid}", 0, 10) for pid in range(3)], T0)
    engine.add([http(f"b:{pid}", 0, 10, route="/b") for pid in range(2)], T0 + 1)  # b:1 refused
    engine.add([http("c:0", 0, 10, route="/c")], T0 + 2)  # no instance for a new route either
    stats = engine.stats()
    assert (stats["http_instances"], stats["http_routes"]) == (4, 2)
    assert stats["samples_not_applied"]["http"]["http_instance_cap"] == 2
    engine.add([http("a:0", 1, 20), http("b:0", 1, 20, route="/b")], T0 + 50)  # held ones go on
    engine.tick(T0 + 91)  # a:1, a:2 expire (silent since T0): room for two again
    assert engine.stats()["http_instances"] == 2
    engine.add([http("c:0", 0, 10, route="/c"), http("d:0", 0, 10, route="/d")], T0 + 92)
    assert engine.stats()["http_instances"] == 4
    engine.close_minutes(T0 + 93)
    # a:0 and b:0 20 requests each, a:1, a:2, c:0 and d:0 10 each; b:1's first 10 never came in
    assert stored_requests(engine) == 2 * 20 + 4 * 10


def test_idle_instances_expire_with_their_bytes_already_in_minute_rows() -> None:
    engine = Engine(AggregateSettings(http_idle_s=120))
    engine.add([http("old", 0, 5), http("busy", 0, 5)], T0)
    engine.add([http("old", 1, 50)], T0 + 10)  # "old" is heard from last at T0 + 10
    busy = 5
    for second in range(20, 300, 10):  # "busy" samples every 10 s, older in the route's order
        busy += 7
        engine.add([http("busy", second, busy)], T0 + second)
        engine.tick(T0 + second + 0.5)
        instances = engine.routes[KEY].instances
        assert ("old" in instances) == (second + 0.5 < 130), second
    assert engine.http_instances_expired == 1
    engine.close_minutes(T0 + 300)
    assert stored_requests(engine) == 50 + busy


def test_an_idle_route_expires_after_its_last_minute_row_and_leaves_no_state() -> None:
    engine = Engine(AggregateSettings(http_idle_s=90))
    for seq in range(10):
        engine.add([http("a", seq, 100 * seq), http("b", seq, 10 * seq)], T0 + 50 + seq)
    rows: list[float] = []
    for second in range(60, 200):
        engine.tick(T0 + second)
        rows += [row.requests for row in engine.drain().http_rows]
        if KEY not in engine.routes:
            break
    assert second == 50 + 9 + 90  # the first tick 90 s after the last sample
    assert sum(rows) == 900 + 90  # every request counted, in the rows of both minutes
    stats = engine.stats()
    assert (stats["http_routes"], stats["http_instances"]) == (0, 0)
    assert (stats["http_routes_expired"], stats["http_instances_expired"]) == (1, 2)
    assert engine.route_view(KEY, T0 + second) is None
    assert engine.snapshot()["routes"] == []
    assert restart(engine, T0 + second).routes == {}


def test_an_expired_route_frees_its_slot_under_the_route_cap() -> None:
    engine = Engine(AggregateSettings(max_http_routes=2))  # http_idle_s: 600 by default
    engine.add([http("fuzz", 0, 1, route=f"/junk/{i}") for i in range(2)], T0)
    legit = http("web-1", 0, 4, route="/v1/orders")
    engine.add([legit], T0 + 30)
    assert engine.stats()["samples_not_applied"]["http"]["http_route_cap"] == 1
    engine.tick(T0 + 599)
    assert len(engine.routes) == 2  # not idle long enough yet
    engine.tick(T0 + 600)
    assert engine.routes == {}
    engine.add([legit], T0 + 601)
    assert list(engine.routes) == [("api", "/v1/orders", "GET")]
    engine.close_minutes(T0 + 602)
    assert stored_requests(engine) == 2 + 4


def test_an_instance_heard_from_after_it_expired_begins_again() -> None:
    """Its state is gone: a sample with a ``q`` above 0 is a baseline (PROTOCOL.md §8.5)."""
    engine = Engine(AggregateSettings(http_idle_s=90))
    engine.add([http("a", 0, 5), http("b", 0, 5)], T0)
    for second in range(1, 100):
        engine.add([http("b", second, 5 + second)], T0 + second)
        engine.tick(T0 + second + 0.5)
    assert "a" not in engine.routes[KEY].instances
    engine.add([http("a", 1, 8)], T0 + 100)
    assert engine.stats()["baseline_samples"]["http"] == 1
    engine.add([http("a", 2, 9)], T0 + 101)
    engine.close_minutes(T0 + 102)
    assert stored_requests(engine) == 5 + (5 + 99) + 1


def test_the_checkpoint_holds_the_capped_instances_only() -> None:
    """A fuzz of new instances on one route: the state, and so the checkpoint, stays at the
    cap's size however many arrive."""

    def checkpoint_of(frames: int) -> tuple[int, int]:
        engine = Engine()  # max_http_instances_per_route: 256 by default
        for start in range(0, frames, 500):
            batch = [http(f"fuzz-{i:08d}", 0, 1) for i in range(start, start + 500)]
            engine.add(batch, T0 + start / 1_000)
        snapshot = engine.snapshot()
        (route,) = snapshot["routes"]
        return len(route["instances"]), len(msgspec.msgpack.encode(snapshot))

    instances, size = checkpoint_of(1_000)
    assert instances == 256
    assert checkpoint_of(20_000) == (instances, size)


def test_a_restart_keeps_an_instances_silence_not_the_downtime() -> None:
    engine = Engine(AggregateSettings(http_idle_s=120))
    engine.add([http("quiet", 0, 5), http("busy", 0, 5)], T0)
    for second in range(1, 101):
        engine.add([http("busy", second, 5 + second)], T0 + second)
        engine.tick(T0 + second + 0.5)
    # Checkpoint at T0 + 100.5 ("quiet" silent for 100.5 s), restored an hour later: "quiet"
    # has 19.5 s left, whatever the downtime; "busy", heard from at T0 + 100, 119.5 s.
    back = T0 + 3_600
    restored = restart(engine, back)
    assert list(restored.routes[KEY].instances) == ["quiet", "busy"]
    assert restored.stats()["http_instances"] == 2
    restored.tick(back + 19)
    assert list(restored.routes[KEY].instances) == ["quiet", "busy"]
    restored.tick(back + 20)
    assert list(restored.routes[KEY].instances) == ["busy"]
    restored.tick(back + 120)
    assert restored.routes == {}


def test_a_checkpoint_of_the_version_before_restores_its_instances_as_heard_from_now() -> None:
    engine = Engine(AggregateSettings(http_idle_s=120))
    engine.add([http("a", 0, 5)], T0)
    engine.tick(T0 + 100)
    snapshot = engine.snapshot()
    snapshot["version"] = 3
    for route in snapshot["routes"]:
        for name, values in route["instances"].items():
            route["instances"][name] = values[:7]  # no time of the last sample
    restored = Engine(engine.settings)
    restored.restore(snapshot, T0 + 1_000)
    restored.tick(T0 + 1_119)
    assert "a" in restored.routes[KEY].instances
    restored.tick(T0 + 1_120)
    assert restored.routes == {}
