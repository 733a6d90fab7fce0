"""The emitter's counting, its samples and its processes: totals per (route, method) as §4.4
defines them, sample numbers, the route cap, a daemon that is down, a fork, the exit flush."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bwmon_client
from bwmon_client import OTHER_METHOD, OVERFLOW_ROUTE, UNMATCHED_ROUTE, Emitter
from protocol import HTTP_LATENCY_BOUNDS_MS, HttpSample, decode_message, encode_msgpack
from protocol.frames import is_identifier
from tests.clients.python.support import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@pytest.fixture
def emitter(receiver: Receiver) -> Iterator[Emitter]:
    made = Emitter("svc", url=receiver.url, interval_s=3600)
    yield made
    made.close()


def bucket(latency_s: float) -> int:
    ms = latency_s * 1000
    return next((i for i, bound in enumerate(HTTP_LATENCY_BOUNDS_MS) if ms <= bound), 11)


requests_strategy = st.lists(
    st.tuples(
        st.sampled_from(["/a", "/b/{id}", None]),
        st.sampled_from(["GET", "POST", "BREW"]),
        st.one_of(st.none(), st.integers(100, 599)),
        st.integers(0, 10**9),
        st.integers(0, 10**9),
        st.floats(0, 30, allow_nan=False),
    ),
    max_size=60,
)


@given(requests_strategy)
@settings(max_examples=60, deadline=None)
def test_totals_are_the_sums_of_the_requests(requests: list[Any]) -> None:
    emitter = Emitter("svc", url="udp://127.0.0.1:9", interval_s=3600)
    try:
        expected: dict[tuple[str, str], dict[str, Any]] = {}
        for route, method, status, bytes_in, bytes_out, latency in requests:
            emitter.record(route, method, status, bytes_in, bytes_out, latency)
            key = (route or UNMATCHED_ROUTE, method if method != "BREW" else OTHER_METHOD)
            row = expected.setdefault(
                key,
                {
                    "requests": 0,
                    "status": [0] * 5,
                    "bytes_in": 0,
                    "bytes_out": 0,
                    "latency_hist": [0] * 12,
                    "latency_sum_ms": 0.0,
                },
            )
            row["requests"] += 1
            if status is not None:
                row["status"][status // 100 - 1] += 1
            row["bytes_in"] += bytes_in
            row["bytes_out"] += bytes_out
            row["latency_hist"][bucket(latency)] += 1
            row["latency_sum_ms"] += latency * 1000
        totals = emitter.totals()
        assert set(totals) == set(expected)
        for key, row in expected.items():
            got = dict(totals[key])
            assert math.isclose(float(got.pop("latency_sum_ms")), row.pop("latency_sum_ms"))  # type: ignore[arg-type]
            assert got == row
        assert emitter.stats()["record_errors"] == 0
    finally:
        emitter.close(0)


@pytest.mark.parametrize(
    ("latency_s", "index"),
    [(0.0, 0), (0.005, 0), (0.0050001, 1), (0.25, 5), (10.0, 10), (10.0001, 11), (1e9, 11)],
)
def test_latency_buckets_hold_their_upper_bound(
    emitter: Emitter, latency_s: float, index: int
) -> None:
    emitter.record("/r", "GET", 200, 0, 0, latency_s)
    hist = emitter.totals()["/r", "GET"]["latency_hist"]
    assert hist == [int(i == index) for i in range(12)]


def test_what_is_not_a_route_or_a_method_is_named_for_the_wire(emitter: Emitter) -> None:
    long = "/" + "x" * 300
    for route in ["/with space", "/tab\there", long, "", None, "\u200b"]:
        emitter.record(route, "GET", 200, 0, 0, 0.001)
    emitter.record("/a", "get", 200, 0, 0, 0.001)
    emitter.record("/a", "M-SEARCH", 200, 0, 0, 0.001)
    assert set(emitter.totals()) == {
        ("/with_space", "GET"),
        ("/tab_here", "GET"),
        (long[:128], "GET"),
        (UNMATCHED_ROUTE, "GET"),
        ("_", "GET"),
        ("/a", OTHER_METHOD),
    }
    assert emitter.totals()[UNMATCHED_ROUTE, "GET"]["requests"] == 2  # "" and None
    assert emitter.totals()["/a", OTHER_METHOD]["requests"] == 2


def test_bad_arguments_are_counted_never_raised(emitter: Emitter) -> None:
    emitter.record([], "GET", 200, 0, 0, 0.0)  # type: ignore[arg-type]
    emitter.record("/r", "GET", 200, "many", 0, 0.0)  # type: ignore[arg-type]
    emitter.record("/r", "GET", 200, 1, 2, float("nan"))
    emitter.record("/r", "GET", 700, -5, 2, -1.0)
    assert emitter.stats()["record_errors"] == 2
    row = emitter.totals()["/r", "GET"]
    assert row["requests"] == 2
    assert row["status"] == [0, 1, 0, 0, 0]  # 700 is no class
    assert row["bytes_in"] == 1
    assert row["latency_hist"] == [2] + [0] * 11


def test_routes_past_the_cap_go_to_the_overflow_route_and_keep_the_totals() -> None:
    emitter = Emitter("svc", url="udp://127.0.0.1:9", interval_s=3600, max_routes=3)
    try:
        for i in range(10):
            for _ in range(2):
                emitter.record(f"/r{i}", "GET", 200, 1, 10, 0.001)
        emitter.record("/r9", "POST", 200, 1, 10, 0.001)
        totals = emitter.totals()
        assert set(totals) == {
            ("/r0", "GET"),
            ("/r1", "GET"),
            ("/r2", "GET"),
            (OVERFLOW_ROUTE, "GET"),
            (OVERFLOW_ROUTE, "POST"),
        }
        assert totals[OVERFLOW_ROUTE, "GET"]["requests"] == 14
        assert sum(int(t["bytes_out"]) for t in totals.values()) == 210  # type: ignore[call-overload]
        assert emitter.stats()["overflow_requests"] == 15
    finally:
        emitter.close(0)


def test_samples_are_valid_frames_numbered_per_stream(emitter: Emitter) -> None:
    emitter.record("/a", "GET", 200, 3, 4, 0.001)
    emitter.record("/b", "GET", 503, 0, 0, 0.001)
    first = emitter.snapshot()
    assert [(s.route, s.seq) for s in first] == [("/a", 0), ("/b", 0)]
    emitter.record("/a", "GET", 200, 3, 4, 0.001)
    second = emitter.snapshot()
    assert [(s.route, s.seq, s.requests) for s in second] == [("/a", 1, 2)]  # /b unchanged
    assert [(s.route, s.seq) for s in emitter.snapshot(everything=True)] == [("/a", 2), ("/b", 1)]
    for sample in first + second:
        assert decode_message(encode_msgpack(sample)).frames == [sample]
        assert sample.service == "svc"
        assert sample.boot == emitter.boot
        assert sample.instance == emitter.instance
    assert first[1].status == [0, 0, 0, 0, 1]


def test_flush_sends_what_changed_to_the_port(emitter: Emitter, receiver: Receiver) -> None:
    emitter.record("/a", "GET", 200, 3, 4, 0.001)
    assert emitter.flush() == 1
    assert emitter.flush() == 0
    (sample,) = receiver.samples()
    assert (sample.route, sample.seq, sample.bytes_out) == ("/a", 0, 4)


def test_a_daemon_that_is_down_costs_no_error_and_no_memory() -> None:
    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nothing listens there: the kernel refuses the datagrams
    emitter = Emitter("svc", url=url, interval_s=3600, max_routes=50)
    try:
        for i in range(5000):
            emitter.record(f"/r{i}", "GET", 200, 10, 10, 0.001)
            if i % 500 == 0:
                emitter.flush()
        emitter.flush(final=True)
        stats = emitter.stats()
        assert stats["routes"] == 51  # 50 and the overflow route
        assert stats["send_errors"] == 0
        assert len(emitter._index) <= 100
        assert sum(int(t["requests"]) for t in emitter.totals().values()) == 5000  # type: ignore[call-overload]
    finally:
        emitter.close(0)


def test_the_emitter_rejects_a_bad_configuration() -> None:
    with pytest.raises(ValueError, match="service"):
        Emitter("has space")
    with pytest.raises(ValueError, match="scheme"):
        Emitter("svc", url="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="port"):
        Emitter("svc", url="udp://127.0.0.1")
    with pytest.raises(ValueError, match="interval_s"):
        Emitter("svc", interval_s=0)


def test_a_forked_child_is_a_new_process_with_its_own_boot(
    emitter: Emitter, receiver: Receiver
) -> None:
    emitter.record("/a", "GET", 200, 1, 100, 0.001)  # starts the parent's thread
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            emitter.record("/a", "GET", 200, 2, 7, 0.001)
            emitter.record("/child", "GET", 200, 0, 0, 0.001)
            emitter.close()  # the child's own thread sends its last sample
            os.write(write, f"{emitter.boot} {emitter.instance}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_boot, child_instance = pipe.read().split()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    emitter.flush()
    samples = receiver.samples()
    by_boot: dict[str, list[HttpSample]] = {}
    for sample in samples:
        by_boot.setdefault(sample.boot, []).append(sample)
    assert set(by_boot) == {emitter.boot, child_boot}
    assert child_boot != emitter.boot
    assert child_instance.endswith(f":{pid}")
    assert emitter.instance.endswith(f":{os.getpid()}")
    child = {(s.route, s.seq, s.bytes_out, s.instance) for s in by_boot[child_boot]}
    assert child == {("/a", 0, 7, child_instance), ("/child", 0, 0, child_instance)}
    parent = {(s.route, s.seq, s.bytes_out) for s in by_boot[emitter.boot]}
    assert parent == {("/a", 0, 100)}


def test_the_last_sample_is_sent_at_exit(receiver: Receiver) -> None:
    script = (
        "import bwmon_client, sys\n"
        "e = bwmon_client.configure('svc', url=sys.argv[1], interval_s=3600)\n"
        "e.record('/a', 'GET', 200, 1, 2, 0.001)\n"
    )
    subprocess.run([sys.executable, "-c", script, receiver.url], check=True, timeout=30)
    (sample,) = receiver.samples()
    assert (sample.route, sample.requests, sample.bytes_out) == ("/a", 1, 2)


def test_the_process_emitter_is_made_once() -> None:
    try:
        first = bwmon_client.emitter("svc-a", url="udp://127.0.0.1:9")
        assert bwmon_client.emitter() is first
        assert first.service == "svc-a"
        second = bwmon_client.configure("svc-b", url="udp://127.0.0.1:9")
        assert bwmon_client.emitter("ignored") is second
    finally:
        bwmon_client.configure("svc-c", url="udp://127.0.0.1:9").close(0)


@given(st.one_of(st.none(), st.text(max_size=300)))
@settings(max_examples=200, deadline=None)
def test_every_route_becomes_an_identifier(route: str | None) -> None:
    emitter = Emitter("svc", url="udp://127.0.0.1:9", interval_s=3600)
    try:
        emitter.record(route, "GET", 200, 0, 0, 0.0)
        ((name, _),) = emitter.totals()
        assert is_identifier(name)
        (sample,) = emitter.snapshot()
        assert decode_message(encode_msgpack(sample)).errors == []
    finally:
        emitter.close(0)


def test_threads_recording_at_once_lose_nothing(emitter: Emitter) -> None:
    def work(n: int) -> None:
        for i in range(2000):
            emitter.record(f"/t{i % 4}", "GET", 200, n, i, 0.001)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = emitter.totals()
    assert sum(int(t["requests"]) for t in totals.values()) == 16_000  # type: ignore[call-overload]
    assert sum(int(t["bytes_in"]) for t in totals.values()) == 2000 * sum(range(8))  # type: ignore[call-overload]
    assert sum(int(t["bytes_out"]) for t in totals.values()) == 8 * sum(range(2000))  # type: ignore[call-overload]
