"""PROTOCOL.md §8 as the engine applies it: which first samples count in full and which are
baselines, boots that begin a stream anew, and every sample not applied counted by reason.
Times are Unix times of today's size (the daemon's clock), never small numbers."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from collector.aggregate.engine import SNAPSHOT_VERSION, Engine
from collector.aggregate.rtc import _STATE_SLOTS, COUNTERS
from collector.aggregate.settings import AggregateSettings
from protocol import HttpSample, RtcSample

T0 = 1_764_338_417.25  # an epoch time mid-minute, as a real clock reads


def rtc(seq: int, connection: str = "pc-1", boot: str | None = None, **fields: Any) -> RtcSample:
    return RtcSample(
        meeting="standup",
        participant="alice",
        connection=connection,
        seq=seq,
        client_ts=T0 * 1000 + seq,
        boot=boot,
        **fields,
    )


def http(boot: str, seq: int, bytes_out: int, instance: str = "api-1:4711") -> HttpSample:
    return HttpSample(
        service="checkout",
        instance=instance,
        boot=boot,
        route="/v1/orders/{id}",
        method="GET",
        seq=seq,
        client_ts=T0 * 1000 + seq,
        requests=bytes_out // 10,
        status=[0, bytes_out // 10, 0, 0, 0],
        bytes_in=0,
        bytes_out=bytes_out,
        latency_hist=[bytes_out // 10] + [0] * 11,
        latency_sum_ms=float(bytes_out),
    )


def stored(engine: Engine, counter: str = "video_bytes_sent") -> float:
    """Close every minute; the sum of ``counter`` over the rtc rows produced."""
    engine.close_minutes(T0 + 3600)
    return sum(row.counters[counter] for row in engine.drain().rtc_rows)


def stored_http(engine: Engine) -> float:
    engine.close_minutes(T0 + 3600)
    return sum(row.bytes_out for row in engine.drain().http_rows)


def not_applied(engine: Engine, kind: str) -> dict[str, int]:
    counts: dict[str, int] = engine.stats()["samples_not_applied"][kind]
    return {reason: n for reason, n in counts.items() if n}


# -- first samples ----------------------------------------------------------------------------


def test_a_connections_first_sample_with_q_0_counts_in_full() -> None:
    """A browser's first getStats() comes a second or more after media starts: its bytes
    are the connection's first second, and they are stored."""
    engine = Engine()
    engine.add([rtc(0, video_bytes_sent=180_000)], T0)
    engine.add([rtc(1, video_bytes_sent=400_000)], T0 + 1)
    assert stored(engine) == 400_000
    assert engine.stats()["baseline_samples"] == {"rtc": 0, "http": 0}


def test_a_first_sample_with_q_above_0_is_a_counted_baseline() -> None:
    """The stream began before the daemon saw it (state lost without a checkpoint, a stream
    moved from another daemon, its first datagrams lost): a baseline, and counted."""
    engine = Engine()
    engine.add([rtc(7, video_bytes_sent=1_000_000)], T0)
    engine.add([rtc(8, video_bytes_sent=1_250_000)], T0 + 1)
    assert stored(engine) == 250_000
    assert engine.stats()["baseline_samples"] == {"rtc": 1, "http": 0}


def test_a_counter_absent_from_the_first_sample_counts_from_0() -> None:
    """Video that starts after the connection: all of its bytes are new."""
    engine = Engine()
    engine.add([rtc(3, audio_bytes_sent=8_000)], T0)  # a baseline: the stream began before
    engine.add([rtc(4, audio_bytes_sent=12_000, video_bytes_sent=90_000)], T0 + 1)
    engine.add([rtc(5, audio_bytes_sent=16_000, video_bytes_sent=270_000)], T0 + 2)
    assert stored(engine) == 270_000


def test_an_http_instances_first_sample_with_q_0_counts_in_full_else_is_a_baseline() -> None:
    engine = Engine()
    engine.add([http("b1", 0, 500, instance="fresh")], T0)
    engine.add([http("b2", 41, 9_000, instance="seen-late")], T0)
    engine.add([http("b1", 1, 800, instance="fresh"), http("b2", 42, 9_100, "seen-late")], T0 + 1)
    assert stored_http(engine) == 800 + 100
    assert engine.stats()["baseline_samples"] == {"rtc": 0, "http": 1}


def test_an_http_restart_counts_the_new_boots_first_sample_in_full() -> None:
    """The issue's example: boot 1 sends 0, 20, 50; boot 2 sends 8, 30: 80 bytes, not 72."""
    engine = Engine()
    for seq, total in enumerate([0, 20, 50]):
        engine.add([http("boot-1", seq, total)], T0 + seq)
    for seq, total in enumerate([8, 30], start=1):  # its first datagram (q 0) was lost
        engine.add([http("boot-2", seq, total)], T0 + 10 + seq)
    assert stored_http(engine) == 80
    assert engine.stats()["baseline_samples"]["http"] == 0


# -- boots ------------------------------------------------------------------------------------


def test_a_new_boot_of_a_known_connection_is_a_new_stream_in_its_own_segment() -> None:
    """``bwmon emit --seed 1`` twice, or an SFU that keeps its connection ids over a restart:
    the second run starts again at q 0 with counters from 0. The old stream's open row closes;
    the new stream's rows are another segment of the same minute, never the same row."""
    engine = Engine()
    engine.add([rtc(0, boot="run-1", video_bytes_sent=100)], T0)
    engine.add([rtc(1, boot="run-1", video_bytes_sent=300)], T0 + 1)
    engine.add([rtc(0, boot="run-2", video_bytes_sent=50)], T0 + 2)
    engine.add([rtc(1, boot="run-2", video_bytes_sent=120)], T0 + 3)
    engine.close_minutes(T0 + 3600)
    rows = engine.drain().rtc_rows
    assert [row.counters["video_bytes_sent"] for row in rows] == [300, 120]
    assert rows[0].minute == rows[1].minute
    assert rows[0].segment < rows[1].segment
    assert not_applied(engine, "rtc") == {}


def test_a_websocket_sessions_boot_stands_for_frames_without_their_own() -> None:
    """Two WebSocket sessions with the same ids, one after the other: the hellos' boots tell
    the second stream from replays of the first."""
    engine = Engine()
    engine.add([rtc(0, video_bytes_sent=100), rtc(1, video_bytes_sent=300)], T0, boot="tab-1")
    engine.add([rtc(0, video_bytes_sent=70), rtc(1, video_bytes_sent=90)], T0 + 1, boot="tab-2")
    assert stored(engine) == 390
    assert not_applied(engine, "rtc") == {}


def test_a_sample_without_boot_continues_the_stream_there_is() -> None:
    engine = Engine()
    engine.add([rtc(0, video_bytes_sent=100)], T0)  # no boot yet: the stream takes the next one
    engine.add([rtc(1, boot="b", video_bytes_sent=200)], T0 + 1)
    engine.add([rtc(2, video_bytes_sent=450)], T0 + 2)
    assert stored(engine) == 450


def test_a_late_sample_of_a_boot_the_stream_left_is_counted_not_applied() -> None:
    """A datagram of the process before a restart, delayed past the new process's first: not
    a third stream, nothing counted twice."""
    engine = Engine()
    engine.add([rtc(0, boot="old", video_bytes_sent=100)], T0)
    engine.add([rtc(0, boot="new", video_bytes_sent=10)], T0 + 1)
    engine.add([rtc(1, boot="old", video_bytes_sent=200)], T0 + 1.1)  # late
    engine.add([rtc(1, boot="new", video_bytes_sent=30)], T0 + 2)
    assert stored(engine) == 130
    assert not_applied(engine, "rtc") == {"old_boot": 1}
    http_engine = Engine()
    http_engine.add([http("old", 0, 100), http("new", 0, 10)], T0)
    http_engine.add([http("old", 1, 200), http("new", 1, 30)], T0 + 1)
    assert stored_http(http_engine) == 130
    assert not_applied(http_engine, "http") == {"old_boot": 1}


# -- samples not applied ----------------------------------------------------------------------


def test_duplicates_are_counted_by_kind_and_reason() -> None:
    engine = Engine()
    engine.add([rtc(0, video_bytes_sent=10), rtc(1, video_bytes_sent=20)], T0)
    engine.add([rtc(1, video_bytes_sent=20), rtc(0, video_bytes_sent=10)], T0 + 1)
    engine.add([http("b", 0, 10), http("b", 0, 10)], T0)
    assert not_applied(engine, "rtc") == {"duplicate": 2}
    assert not_applied(engine, "http") == {"duplicate": 1}
    # every reason of the fixed set is there from the start, at zero
    assert set(engine.stats()["samples_not_applied"]["rtc"]) == {
        "duplicate",
        "old_boot",
        "meeting_cap",
        "participant_cap",
        "connection_cap",
    }


def test_samples_refused_by_a_cap_are_counted_not_applied() -> None:
    engine = Engine(AggregateSettings(max_connections_per_participant=1, max_http_routes=1))
    engine.add([rtc(0, "pc-1"), rtc(0, "pc-2")], T0)
    other_route = msgspec.structs.replace(http("b", 0, 10), route="/other")
    engine.add([http("b", 0, 10), other_route], T0)
    assert not_applied(engine, "rtc") == {"connection_cap": 1}
    assert not_applied(engine, "http") == {"http_route_cap": 1}


# -- the checkpoint ---------------------------------------------------------------------------


def test_the_checkpoint_keeps_every_streams_boots() -> None:
    first = Engine()
    first.add([rtc(0, boot="a", video_bytes_sent=100)], T0)
    first.add([rtc(0, boot="b", video_bytes_sent=40), http("a", 0, 10)], T0 + 1)
    first.add([http("b", 0, 5)], T0 + 1)
    snapshot = msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot()))
    assert snapshot["version"] == SNAPSHOT_VERSION
    second = Engine()
    second.restore(snapshot, T0 + 5)
    # a late datagram of the boot left before the restart is still known as such
    second.add([rtc(1, boot="a", video_bytes_sent=900), http("a", 1, 90)], T0 + 6)
    second.add([rtc(1, boot="b", video_bytes_sent=70), http("b", 1, 15)], T0 + 7)
    assert not_applied(second, "rtc") == {"old_boot": 1}
    assert not_applied(second, "http") == {"old_boot": 1}
    # the open minute went on: b's first sample in full (40), then 30; HTTP 10 + 5, then 10
    second.close_minutes(T0 + 3600)
    output = second.drain()
    assert sum(row.counters["video_bytes_sent"] for row in output.rtc_rows) == 70
    assert sum(row.bytes_out for row in output.http_rows) == 25


def test_the_checkpoint_keeps_every_streams_totals_and_an_earlier_one_loads() -> None:
    """A restored stream shows the bytes it had counted and goes on from the pairs it left; a
    checkpoint of the version before (streams without either) loads, its totals from then on."""
    first = Engine()
    first.add([rtc(0, pair_id="a", pair_bytes_sent=500, video_bytes_sent=100)], T0)
    first.close_minutes(T0 + 120)  # a stored minute: in the totals all the same
    first.add([rtc(1, pair_id="b", pair_bytes_sent=50, video_bytes_sent=300)], T0 + 121)
    stream = first.streams[("standup", "alice", "pc-1")]
    snapshot = msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot()))
    second = Engine()
    second.restore(snapshot, T0 + 122)
    restored = second.streams[("standup", "alice", "pc-1")]
    assert restored.totals() == stream.totals() == [0, 0, 300, 0, 550, 0]
    second.add([rtc(2, pair_id="a", pair_bytes_sent=520, video_bytes_sent=350)], T0 + 123)
    assert restored.totals() == [0, 0, 350, 0, 570, 0]
    snapshot["version"] = 5
    (participant,) = snapshot["meetings"][0]["participants"]
    # streams without the pairs they left (the end), nor their totals (the end of ``last``)
    at = _STATE_SLOTS.index("last")
    for state in participant["streams"]:
        del state[-1]
        state[at] = state[at][: 8 * len(COUNTERS)]
    older = Engine()
    older.restore(snapshot, T0 + 122)
    assert older.streams[("standup", "alice", "pc-1")].totals() == [0, 0, 200, 0, 50, 0]


@pytest.mark.parametrize("version", [1, 2])
def test_a_checkpoint_of_an_earlier_layout_is_refused(version: int) -> None:
    snapshot = Engine().snapshot() | {"version": version}
    with pytest.raises(ValueError, match="unknown checkpoint version"):
        Engine().restore(snapshot, T0)


# -- the property: exact totals whatever the network and the client do ----------------------

# One participant's streams over time: a connection; a reload (a new connection, the same page
# boot); a process restart (a new boot of that connection, as an SFU or `emit --seed` does).
RTC_LIVES = (("pc-1", "page-1"), ("pc-2", "page-1"), ("pc-2", "page-2"))
HTTP_LIVES = ("proc-1", "proc-2")  # one instance's route, then the process restarted
RTC_COUNTERS = ("video_bytes_sent", "audio_bytes_received")  # the second one: twice the first


class Sent(msgspec.Struct, frozen=True):
    """One sample as the client sent it: ``life`` (an index into RTC_LIVES or HTTP_LIVES),
    ``q``, the client's true traffic so far (``truth``) and the counter it reports."""

    kind: str
    life: int
    q: int
    truth: int
    reported: tuple[int, ...]  # RTC_COUNTERS, or the one HTTP figure


@st.composite
def histories(draw: st.DrawFn) -> list[Sent]:
    """Every sample of every life, in the client's order; at most one counter reset: a
    counter that starts again from 0 at some moment between two samples."""
    lives = [("rtc", i) for i in range(len(RTC_LIVES))] + [
        ("http", i) for i in range(len(HTTP_LIVES))
    ]
    steps = {life: draw(st.lists(st.integers(0, 10**7), min_size=1, max_size=7)) for life in lives}
    reset = draw(
        st.none() | st.tuples(st.sampled_from(lives), st.integers(1, 6), st.integers(0, 1))
    )
    sent = []
    for kind, life in lives:
        truth = reset_at = 0
        for q, step in enumerate(steps[(kind, life)]):
            truth += step
            reported = [truth, 2 * truth] if kind == "rtc" else [truth]
            if reset is not None and reset[0] == (kind, life) and q >= reset[1]:
                if q == reset[1]:  # the reset came after part of this interval's traffic
                    reset_at = truth - draw(st.integers(0, step))
                counter = min(reset[2], len(reported) - 1)
                reported[counter] -= reset_at * (1 + counter)
            sent.append(Sent(kind, life, q, truth, tuple(reported)))
    return sent


def by_section_8(delivered: list[Sent]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """What PROTOCOL.md §8 stores of ``delivered``, per kind and counter, written from the
    spec rather than from the engine: a stream is its key ((m, p, c) or the instance) and its
    boot; its first sample counts in full when its start is known (q 0, or a new boot of a
    known key), else it is a baseline; a sample whose q is not above the last is a duplicate,
    one of a boot the key has left is not applied; a counter below its last value starts a new
    baseline. Also the samples not applied and the baselines, by kind."""
    keys: dict[tuple[str, str], dict[str, Any]] = {}
    totals = {"rtc": [0, 0], "http": [0]}
    counts = {"rtc": 0, "http": 0, "rtc_baseline": 0, "http_baseline": 0}
    for sample in delivered:
        key_name, boot = (
            RTC_LIVES[sample.life]
            if sample.kind == "rtc"
            else ("instance", HTTP_LIVES[sample.life])
        )
        state = keys.get((sample.kind, key_name))
        if state is None:
            state = keys[(sample.kind, key_name)] = {"boot": boot, "left": set(), "q": -1}
            state["last"] = None if sample.q > 0 else [0] * len(sample.reported)
        elif boot != state["boot"]:
            if boot in state["left"]:
                counts[sample.kind] += 1
                continue
            state["left"].add(state["boot"])
            state.update(boot=boot, q=-1, last=[0] * len(sample.reported))
        if sample.q <= state["q"]:
            counts[sample.kind] += 1
            continue
        state["q"] = sample.q
        last = state["last"]
        if last is None:
            counts[f"{sample.kind}_baseline"] += 1
        elif sample.kind == "http" and sample.reported[0] < last[0]:
            pass  # an HTTP sample that went down is a new baseline as a whole
        else:
            for i, (value, before) in enumerate(zip(sample.reported, last, strict=True)):
                totals[sample.kind][i] += value - before if value >= before else 0
        state["last"] = list(sample.reported)
    return totals, counts


@settings(max_examples=400, deadline=None)
@given(
    sent=histories(),
    data=st.data(),
    start=st.floats(1.7e9, 2.0e9),  # daemon times of today's size
)
def test_stored_totals_are_what_section_8_makes_of_any_delivery(
    sent: list[Sent], data: st.DataObject, start: float
) -> None:
    """For any delivery of the samples of a participant's connection, its reload and its
    restart, and of an HTTP route whose process restarted — lost, duplicated, reordered, with
    a counter reset — the minute rows hold exactly what §8 says: the client's true totals, less
    only what §8 says cannot be known (a baseline, a reset's interval, a late sample of a boot
    left). Never more than the truth, and the truth exactly when nothing of that happened.
    Every sample not applied and every baseline is counted."""
    copies = data.draw(st.lists(st.integers(0, 2), min_size=len(sent), max_size=len(sent)))
    delivered = [sample for sample, n in zip(sent, copies, strict=True) for _ in range(n)]
    reordered = data.draw(st.booleans())
    if reordered:
        delivered = data.draw(st.permutations(delivered))
    engine = Engine()
    now = start
    for sample in delivered:
        # up to 2.5 s between samples of the participant, less between HTTP samples: it never
        # falls silent for the participant timeout (30 s); minutes go by all the same
        now += data.draw(st.floats(0.0, 2.5 if sample.kind == "rtc" else 0.9))
        if sample.kind == "rtc":
            connection, boot = RTC_LIVES[sample.life]
            counters: dict[str, Any] = dict(zip(RTC_COUNTERS, sample.reported, strict=True))
            frame = rtc(sample.q, connection, **counters)
            if data.draw(st.booleans()):  # over UDP: the frame says its boot
                engine.add([msgspec.structs.replace(frame, boot=boot)], now)
            else:  # over WebSocket: the session's hello says it
                engine.add([frame], now, boot=boot)
        else:
            engine.add([http(HTTP_LIVES[sample.life], sample.q, sample.reported[0])], now)
        if data.draw(st.booleans()):
            engine.tick(now)
    engine.close_minutes(now)
    output = engine.drain()
    rows = [(r.connection, r.minute, r.segment) for r in output.rtc_rows]
    assert len(rows) == len(set(rows)), "two rows of one stream, minute and segment"
    stored = {
        "rtc": [sum(row.counters[name] for row in output.rtc_rows) for name in RTC_COUNTERS],
        "http": [sum(row.bytes_out for row in output.http_rows)],
    }
    expected, counts = by_section_8(delivered)
    assert stored == expected
    stats = engine.stats()
    for kind in ("rtc", "http"):
        assert sum(stats["samples_not_applied"][kind].values()) == counts[kind]
        assert stats["baseline_samples"][kind] == counts[f"{kind}_baseline"]
    # The client's truth: its totals as of the newest sample of each life that arrived.
    newest: dict[tuple[str, int], Sent] = {}
    for sample in delivered:
        held = newest.get((sample.kind, sample.life))
        if held is None or sample.q > held.q:
            newest[(sample.kind, sample.life)] = sample
    truth = {
        "rtc": [sum(s.truth for s in newest.values() if s.kind == "rtc") * k for k in (1, 2)],
        "http": [sum(s.truth for s in newest.values() if s.kind == "http")],
    }
    for kind in ("rtc", "http"):
        assert all(s <= t for s, t in zip(stored[kind], truth[kind], strict=True))
    reset = any(
        s.reported != ((s.truth, 2 * s.truth) if s.kind == "rtc" else (s.truth,)) for s in sent
    )
    first_delivered: dict[tuple[str, str], Sent] = {}
    for sample in delivered:
        key = RTC_LIVES[sample.life][0] if sample.kind == "rtc" else "instance"
        first_delivered.setdefault((sample.kind, key), sample)
    starts_known = all(s.q == 0 for s in first_delivered.values())
    if not reordered and not reset and starts_known:
        event("the truth exactly")
        assert stored == truth
    event(f"not applied: {counts['rtc'] + counts['http'] > 0}, reset: {reset}")
