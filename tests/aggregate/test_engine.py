"""The engine as the daemon drives it: frames at daemon times, a tick per second. Expected
values are computed by hand from the formulas in shared/reference/webrtc-quality.md."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from collector.aggregate.alerts import AlertRule
from collector.aggregate.engine import Engine, relay_cost
from collector.aggregate.settings import AggregateSettings
from protocol import Event, HttpSample, RtcSample

T0 = 1_800_000_000.0  # a minute boundary: 1_800_000_000 / 60 = 30_000_000


def rtc(seq: int, participant: str = "p1", meeting: str = "m1", **fields: Any) -> RtcSample:
    return RtcSample(
        meeting=meeting,
        participant=participant,
        connection="c1",
        seq=seq,
        client_ts=1.0,
        **fields,
    )


def restart(engine: Engine, now: float) -> Engine:
    """A new engine from ``engine``'s checkpoint, through MessagePack as on disk."""
    restored = Engine()
    restored.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(engine.snapshot())), now)
    return restored


def kinds(engine: Engine) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind, e.participant, e.detail) for e in engine.drain().events]


def test_interval_values_mos_and_quality_by_hand() -> None:
    engine = Engine()
    base: dict[str, Any] = dict(
        audio_bytes_received=0,
        audio_packets_received=0,
        audio_packets_lost=0,
        jitter_buffer_delay_s=0.0,
        jitter_buffer_emitted=0,
        rtt_ms=100.0,
    )
    engine.add([rtc(1, **base)], T0 + 0.1)
    engine.tick(T0 + 1)  # the baseline alone: no interval values yet
    engine.add(
        [
            rtc(
                2,
                audio_bytes_received=4_000,  # 32,000 bit/s over the 1 s tick
                audio_packets_received=49,
                audio_packets_lost=1,  # loss 1 / (1 + 49) = 2 %
                jitter_buffer_delay_s=1_920.0,
                jitter_buffer_emitted=48_000,  # 1000 * 1920 / 48000 = 40 ms
                rtt_ms=100.0,
            )
        ],
        T0 + 1.5,
    )
    engine.tick(T0 + 2)
    # E-model: Ppl = 2; d = 20 + 40 + 100/2 = 110; Id = 0.024 * 110 = 2.64;
    # Ie = 55 - 4.6 ln 32000 = 7.2819; Ie_eff = Ie + (95 - Ie) * 2 / (2 + 10) = 21.9016;
    # R = 93.2 - 2.64 - 21.9016 = 68.6584; MOS = 1 + 0.035 R + 7e-6 R (R - 60)(100 - R) = 3.534
    ie = 55 - 4.6 * math.log(32_000)
    r = 93.2 - 0.024 * 110 - (ie + (95 - ie) * 2 / 12)
    mos = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    assert mos == pytest.approx(3.534, abs=1e-3)
    stream = engine.streams[("m1", "p1", "c1")]
    bucket = int(T0 + 2)
    assert stream.ring_series("recv_bps", bucket)[-1] == pytest.approx(32_000)
    assert stream.ring_series("loss_down_pct", bucket)[-1] == pytest.approx(2.0)
    assert stream.ring_series("mos", bucket)[-1] == pytest.approx(mos, abs=1e-3)
    # Audio only: quality is the audio R, and the first value is not smoothed.
    assert stream.ring_series("quality", bucket)[-1] == pytest.approx(r, abs=0.01)
    participant = engine.meetings["m1"].participants["p1"]
    assert participant.level == "good"  # 60 < 68.66 <= 80
    assert participant.reasons == ("loss",)  # 2 % > 1 %


def test_join_leave_silence_and_meeting_end() -> None:
    engine = Engine(AggregateSettings(participant_timeout_s=30, meeting_end_after_s=60))
    engine.add([rtc(1, "alice")], T0)
    engine.add([Event(meeting="m1", participant="bob", kind="join", client_ts=1.0)], T0 + 1)
    assert kinds(engine) == [
        ("meeting_started", None, None),
        ("joined", "alice", "first_frame"),
        ("joined", "bob", "join"),
    ]
    engine.add([Event(meeting="m1", participant="bob", kind="leave", client_ts=2.0)], T0 + 5)
    assert kinds(engine) == [("left", "bob", "leave")]
    engine.tick(T0 + 30)  # alice was seen at T0: 30 s is not more than 30 s
    assert engine.stats()["participants"] == 1
    engine.tick(T0 + 31)
    assert kinds(engine) == [("left", "alice", "silence")]
    engine.tick(T0 + 90)  # empty since T0 + 31: 59 s
    assert "m1" in engine.meetings
    engine.tick(T0 + 91)
    output = engine.drain()
    assert [e.kind for e in output.events] == ["meeting_ended"]
    (summary,) = output.summaries
    assert (summary.meeting, summary.peak_participants) == ("m1", 2)
    assert (summary.started_at, summary.ended_at) == (T0, T0 + 31)
    assert engine.stats()["meetings"] == 0


def test_a_participant_who_comes_back_joins_again() -> None:
    engine = Engine()
    engine.add([rtc(1)], T0)
    engine.add([Event(meeting="m1", participant="p1", kind="leave", client_ts=1.0)], T0 + 1)
    engine.add([rtc(2)], T0 + 2)
    assert [k for k, _, _ in kinds(engine)] == ["meeting_started", "joined", "left", "joined"]


def test_caps_refuse_and_count_without_evicting() -> None:
    engine = Engine(AggregateSettings(max_meetings=1, max_participants_per_meeting=2))
    engine.add([rtc(1, "a"), rtc(1, "b"), rtc(1, "c"), rtc(1, "x", meeting="m2")], T0)
    assert engine.stats()["refused_by_reason"] == {"meeting_cap": 1, "participant_cap": 1}
    assert sorted(engine.meetings["m1"].participants) == ["a", "b"]
    engine.add([rtc(2, "a", video_bytes_sent=10)], T0 + 1)  # the live ones go on
    assert engine.streams[("m1", "a", "c1")].samples == 2


def test_relay_bytes_by_turn_server_and_cost() -> None:
    assert relay_cost(2e9, 0.09) == pytest.approx(0.18)
    engine = Engine(AggregateSettings(relay_price_per_gb=0.09))
    path = dict(local_candidate="relay", relay_protocol="tcp", turn_url="turn:t1:443?transport=tcp")
    engine.add([rtc(1, pair_bytes_sent=0, pair_bytes_received=0, **path)], T0)
    engine.add(
        [rtc(2, pair_bytes_sent=1_500_000_000, pair_bytes_received=500_000_000, **path)], T0 + 1
    )
    events = engine.drain().events
    assert [(e.kind, e.detail) for e in events if e.kind == "relay_changed"] == [
        ("relay_changed", "turn-tcp")
    ]
    engine.add([Event(meeting="m1", participant="p1", kind="leave", client_ts=1.0)], T0 + 2)
    engine.tick(T0 + 200)
    (summary,) = engine.drain().summaries
    assert summary.relayed_bytes_by_turn_server == {"turn:t1:443": 2e9}
    assert summary.relay_cost == pytest.approx(0.18)


def test_minute_rows_close_after_the_grace() -> None:
    engine = Engine(AggregateSettings(minute_grace_s=2))
    engine.add([rtc(1, video_bytes_sent=0)], T0 + 10)
    engine.add([rtc(2, video_bytes_sent=1_000)], T0 + 59)
    engine.tick(T0 + 61)  # within the grace: the minute is still open
    assert engine.drain().rtc_rows == []
    engine.tick(T0 + 62.5)
    (row,) = engine.drain().rtc_rows
    assert (row.minute, row.counters["video_bytes_sent"], row.samples) == (T0, 1_000, 2)


def http(instance: str, boot: str, seq: int, requests: int, hist: list[int]) -> HttpSample:
    return HttpSample(
        service="api",
        instance=instance,
        boot=boot,
        route="/v1/items",
        method="GET",
        seq=seq,
        client_ts=1.0,
        requests=requests,
        status=[0, requests, 0, 0, 0],
        bytes_in=10 * requests,
        bytes_out=1_000 * requests,
        latency_hist=hist,
        latency_sum_ms=float(requests),
    )


def test_http_routes_sum_instances_and_survive_restarts() -> None:
    engine = Engine()
    zero = [0] * 12
    engine.add([http("a", "b1", 1, 0, zero), http("b", "b2", 1, 0, zero)], T0)
    # a: 100 requests all in bucket 1 (5-10 ms); b: 100 all in bucket 3 (25-50 ms).
    engine.add([http("a", "b1", 2, 100, [0, 100] + [0] * 10)], T0 + 1)
    engine.add([http("b", "b2", 2, 100, [0, 0, 0, 100] + [0] * 8)], T0 + 1)
    # a restarts: its counters start again from 0, the new boot's first sample counts in full
    # (its 3 requests came after the restart), nothing is subtracted: 50 requests since.
    engine.add([http("a", "b9", 1, 3, [3] + [0] * 11)], T0 + 2)
    engine.add([http("a", "b9", 2, 50, [50] + [0] * 11)], T0 + 3)
    view = engine.route_view(("api", "/v1/items", "GET"), T0 + 3)
    assert view is not None
    assert view["requests_per_s"] == pytest.approx(250 / 60)
    assert view["bytes_out_per_s"] == pytest.approx(250_000 / 60)
    # 250 requests: 50 in (0, 5], 100 in (5, 10], 100 in (25, 50]. p50: rank 125 lies 75 into
    # bucket (5, 10] of 100 -> 5 + 5 * 0.75 = 8.75 ms. p95: rank 237.5, 87.5 into (25, 50] ->
    # 25 + 25 * 0.875 = 46.875 ms.
    assert view["latency"]["p50"] == pytest.approx(8.75)
    assert view["latency"]["p95"] == pytest.approx(46.875)
    engine.tick(T0 + 63)
    (row,) = engine.drain().http_rows
    assert row.requests == 250
    assert row.latency.p50 == pytest.approx(8.75)


def test_http_route_cap() -> None:
    engine = Engine(AggregateSettings(max_http_routes=1))
    sample = http("a", "b1", 1, 0, [0] * 12)
    other = HttpSample(
        **{**{f: getattr(sample, f) for f in sample.__struct_fields__}, "route": "/x"}
    )
    engine.add([sample, other], T0)
    assert engine.stats()["refused_by_reason"] == {"http_route_cap": 1}


def test_high_rtt_raises_and_clears_an_alert() -> None:
    engine = Engine()
    for second in range(1, 12):
        rtt = 500.0 if second <= 4 else 100.0
        engine.add([rtc(second, audio_bytes_received=4_000 * second, rtt_ms=rtt)], T0 + second)
        engine.tick(T0 + second + 0.5)
    alerts = [(a.rule, a.state) for a in engine.drain().alerts if a.rule == "high_rtt"]
    assert alerts == [("high_rtt", "raised"), ("high_rtt", "cleared")]


def test_a_meeting_rule_watches_the_worst_participant_of_its_meeting() -> None:
    """``scope = "meeting"``: one key per meeting, fed each tick the worst value among the
    participants that sent samples (highest RTT, lowest MOS); a rule that could never fire
    before."""
    rule = AlertRule(
        name="meeting_rtt",
        metric="rtt_ms",
        raise_threshold=400.0,
        clear_threshold=300.0,
        scope="meeting",
    )
    engine = Engine(rules=[rule])
    for second in range(1, 12):
        slow = 500.0 if second <= 4 else 100.0
        engine.add(
            [
                rtc(second, "fast", audio_bytes_received=4_000 * second, rtt_ms=50.0),
                rtc(second, "slow", audio_bytes_received=4_000 * second, rtt_ms=slow),
            ],
            T0 + second,
        )
        engine.tick(T0 + second + 0.5)
    alerts = [(a.rule, a.key, a.state) for a in engine.drain().alerts]
    assert alerts == [("meeting_rtt", ("m1",), "raised"), ("meeting_rtt", ("m1",), "cleared")]


def test_an_alert_raised_before_a_restart_clears_after_it_under_its_id() -> None:
    def second(engine: Engine, at: int, rtt: float) -> None:
        engine.add([rtc(at, audio_bytes_received=4_000 * at, rtt_ms=rtt)], T0 + at)
        engine.tick(T0 + at + 0.5)

    first = Engine()
    for at in range(1, 5):
        second(first, at, 500.0)
    (raised,) = [a for a in first.drain().alerts if a.rule == "high_rtt"]
    restarted = restart(first, T0 + 5)
    assert [a.id for a in restarted.alerts.active()] == [raised.id]
    for at in range(5, 12):
        second(restarted, at, 100.0)
    alerts = [(a.id, a.state) for a in restarted.drain().alerts if a.rule == "high_rtt"]
    assert alerts == [(raised.id, "cleared")]


def test_a_restored_snapshot_continues_exactly_where_the_engine_stopped() -> None:
    def feed(engine: Engine, seqs: range) -> None:
        for seq in seqs:
            engine.add(
                [
                    rtc(seq, video_bytes_sent=1_000 * seq),
                    http("a", "b1", seq, 10 * seq, [seq] * 12),
                ],
                T0 + seq,
            )

    straight = Engine()
    feed(straight, range(1, 21))
    first = Engine()
    feed(first, range(1, 11))
    steps = first.snapshot_steps(streams_per_step=1)
    next(steps)  # it pauses between streams
    second = restart(first, T0 + 10.5)
    feed(second, range(11, 21))
    for engine in (straight, second):
        engine.close_minutes(T0 + 30)
    rows = [engine.drain() for engine in (straight, second)]
    assert [r.counters["video_bytes_sent"] for r in rows[0].rtc_rows] == [19_000]
    assert [r.counters["video_bytes_sent"] for r in rows[1].rtc_rows] == [19_000]
    assert [r.requests for r in rows[1].http_rows] == [r.requests for r in rows[0].http_rows]
    assert second.meetings["m1"].participants["p1"].joined_at == T0 + 1


def test_a_restored_snapshot_keeps_the_open_minutes_video_gauges() -> None:
    """Frame rates, resolutions, the bandwidth estimate and the peer's relay of an open
    minute survive a checkpoint: the row after the restart equals the row without one."""

    def feed(engine: Engine, seqs: range) -> None:
        for seq in seqs:
            gauges: dict[str, Any] = dict(
                fps_in=float(seq), fps_out=30.0, available_outgoing_bps=1e5 * seq
            )
            if seq % 4 == 0:
                gauges |= dict(width_in=160 * seq, height_in=90 * seq)
            if seq == 3:
                gauges |= dict(local_candidate="host", remote_candidate="relay")
            engine.add([rtc(seq, video_bytes_sent=1_000 * seq, **gauges)], T0 + seq)

    straight = Engine()
    feed(straight, range(1, 11))
    first = Engine()
    feed(first, range(1, 6))
    second = restart(first, T0 + 5.5)
    feed(second, range(6, 11))
    for engine in (straight, second):
        engine.close_minutes(T0 + 30)
    (row,) = straight.drain().rtc_rows
    assert second.drain().rtc_rows == [row]
    assert (row.fps_in_avg, row.fps_out_avg, row.bwe_bps_avg) == (5.5, 30.0, 5.5e5)
    assert (row.width_in, row.height_in, row.width_out, row.remote_relayed) == (
        1_280,
        720,
        None,
        True,
    )
