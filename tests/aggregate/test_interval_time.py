"""The time an interval covers: a stream's deltas are divided by the time between the samples
that bound them (their own ``ts``), not by the time between two ticks, whatever the client's
sampling period; and a participant's seconds at each quality level add up to the time its
intervals cover."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from collector.aggregate.engine import Engine
from collector.aggregate.rtc import RtcStream
from protocol import RtcSample

T0 = 1_800_000_000.0  # daemon time, a minute boundary
TS0 = 1_764_338_400_000.0  # client time, ms since the epoch (another clock)
AUDIO = 4_000  # bytes per second: 32 kbit/s
# What a stream's checkpoint state gained with the interval's time, and since (its totals, the
# pairs it left): the end of the list.
NEW_STREAM_STATE = ("interval_at", "interval_seq", "interval_ts", "ts", "left_pairs")


def rtc(seq: int, ts: float, connection: str = "c1", **fields: Any) -> RtcSample:
    return RtcSample(
        meeting="m1", participant="p1", connection=connection, seq=seq, client_ts=ts, **fields
    )


def audio(seq: int, seconds: float, connection: str = "c1", **fields: Any) -> RtcSample:
    """A 32 kbit/s audio stream's sample taken ``seconds`` into the call (q 0 at 0)."""
    counters = {
        "audio_bytes_received": round(AUDIO * seconds),
        "audio_packets_received": round(50 * seconds),
        "audio_packets_lost": 0,
        "rtt_ms": 50.0,
    }
    return rtc(seq, TS0 + 1000 * seconds, connection, **(counters | fields))


def recv_kbps(engine: Engine, now: float, connection: str = "c1") -> list[float]:
    """The receive bitrates in the stream's live ring up to ``now``, kbit/s, buckets with data."""
    stream = engine.streams[("m1", "p1", connection)]
    return [v / 1000 for v in stream.ring_series("recv_bps", int(now)) if v is not None]


def call(engine: Engine, period: float, seconds: int, offset: float = 0.3) -> float:
    """A client sampling every ``period`` s, each sample arriving ``offset`` s after it was
    taken; the daemon ticks every second. Returns the time of the last tick."""
    taken = [k * period for k in range(int(seconds / period) + 1)]
    for second in range(1, seconds + 1):
        for seq, at in enumerate(taken):
            if second - 1 < at + offset <= second:
                engine.add([audio(seq, at)], T0 + at + offset)
        engine.tick(T0 + second)
    return T0 + seconds


@pytest.mark.parametrize("period", [0.5, 1.0, 2.0, 3.0, 5.0])
def test_a_stream_shows_its_real_bitrate_whatever_its_sampling_period(period: float) -> None:
    engine = Engine()
    now = call(engine, period, 30)
    shown = recv_kbps(engine, now)
    assert shown == pytest.approx([32.0] * len(shown))
    assert len(shown) >= min(30, 30 / period) - 2  # a value every tick with a sample


def test_the_first_sample_of_a_stream_counted_in_full_gives_no_rate() -> None:
    """Its counters count from the connection's start, a time nobody told the daemon: no
    rate for it (the reference's "no previous value"), the bytes all in the minute row."""
    engine = Engine()
    engine.add([audio(0, 7.0)], T0 + 0.2)  # 7 s of the call before the first sample
    engine.tick(T0 + 1)
    assert recv_kbps(engine, T0 + 1) == []
    engine.add([audio(1, 9.0)], T0 + 2.2)
    engine.tick(T0 + 3)
    assert recv_kbps(engine, T0 + 3) == [32.0]
    engine.close_minutes(T0 + 4)
    (row,) = engine.drain().rtc_rows
    assert row.counters["audio_bytes_received"] == 9 * AUDIO


def test_a_baseline_alone_is_no_interval() -> None:
    engine = Engine()
    engine.add([audio(5, 7.0)], T0 + 0.2)  # q 5: the stream began before the daemon saw it
    engine.tick(T0 + 1)
    assert recv_kbps(engine, T0 + 1) == []
    assert engine.meetings["m1"].participants["p1"].level is None
    engine.add([audio(6, 9.0)], T0 + 2.2)
    engine.tick(T0 + 3)
    assert recv_kbps(engine, T0 + 3) == [32.0]


def test_lost_samples_spread_over_the_time_their_deltas_cover() -> None:
    engine = Engine()
    engine.add([audio(0, 0.0)], T0 + 0.2)
    engine.tick(T0 + 1)
    engine.add([audio(1, 2.0)], T0 + 2.2)
    engine.tick(T0 + 3)
    for second in range(4, 9):
        engine.tick(T0 + second)  # samples of 4 and 6 lost
    engine.add([audio(4, 8.0)], T0 + 8.2)
    engine.tick(T0 + 9)
    assert recv_kbps(engine, T0 + 9) == [32.0, 32.0]


@pytest.mark.parametrize(
    ("client_ts", "why"),
    [
        (TS0 + 1_000.0, "the client's clock went back"),
        (TS0 + 2_000.0, "the same ts again"),
        (TS0 + 3_600_000.0, "the client's clock jumped forward an hour"),
    ],
)
def test_an_implausible_client_span_falls_back_to_the_daemons_time(
    client_ts: float, why: str
) -> None:
    """Samples 2 s apart by the daemon's clock whose ``ts`` say otherwise: the interval is the
    daemon's time since the stream's previous interval."""
    engine = Engine()
    engine.add([audio(0, 0.0)], T0 + 0.2)
    engine.tick(T0 + 1)
    engine.add([audio(1, 2.0)], T0 + 2.2)
    engine.tick(T0 + 3)
    sample = msgspec.structs.replace(audio(2, 4.0), client_ts=client_ts)
    engine.add([sample], T0 + 4.2)
    engine.tick(T0 + 5)
    assert recv_kbps(engine, T0 + 5) == [32.0, 32.0], why


def test_samples_faster_than_the_tick_cover_the_span_of_their_ts() -> None:
    """Three samples in one tick, 0.4 s apart, then one: each interval divides by the time
    from the newest sample of the one before."""
    engine = Engine()
    for seq, at in enumerate((0.0, 0.4, 0.8)):
        engine.add([audio(seq, at)], T0 + 0.1 + at)
    engine.tick(T0 + 1)
    engine.add([audio(3, 1.2, audio_bytes_received=round(AUDIO * 0.8) + 8_000)], T0 + 1.3)
    engine.tick(T0 + 2)
    # 8,000 bytes in the 0.4 s from the sample at 0.8 s to the one at 1.2 s: 160 kbit/s.
    assert recv_kbps(engine, T0 + 2) == [pytest.approx(160.0)]


def test_a_restart_of_the_emitter_begins_again_without_a_rate() -> None:
    engine = Engine()
    engine.add([audio(0, 0.0, boot="b1")], T0 + 0.2)
    engine.tick(T0 + 1)
    engine.add([audio(1, 2.0, boot="b1")], T0 + 2.2)
    engine.tick(T0 + 3)
    engine.add([rtc(0, TS0 + 500.0, boot="b2", audio_bytes_received=1_000)], T0 + 4.2)
    engine.tick(T0 + 5)  # a new boot's first sample: counted in full, from an unknown start
    engine.add([rtc(1, TS0 + 2_500.0, boot="b2", audio_bytes_received=9_000)], T0 + 6.2)
    engine.tick(T0 + 7)
    assert recv_kbps(engine, T0 + 7) == [32.0, 32.0]


def test_level_seconds_add_up_to_the_time_measured_whatever_the_sampling_period() -> None:
    """A minute of a call: the participant's seconds at its level are the minute its intervals
    cover (from its first sample to its last), sampled every second or every two."""
    for period in (1.0, 2.0):
        engine = Engine()
        call(engine, period, 61, offset=0.3)
        levels = engine.meetings["m1"].seconds_by_level
        assert sum(levels.values()) == pytest.approx(60.0), period


def test_level_seconds_of_two_streams_of_different_periods_are_not_counted_twice() -> None:
    engine = Engine()
    for second in range(0, 21):
        samples = [audio(second, float(second), "fast")]
        if second % 2 == 0:
            samples.append(audio(second // 2, float(second), "slow"))
        engine.add(samples, T0 + second + 0.3)
        engine.tick(T0 + second + 1)
    levels = engine.meetings["m1"].seconds_by_level
    assert sum(levels.values()) == pytest.approx(20.0)


def test_the_interval_time_survives_a_checkpoint_and_an_older_one_still_loads() -> None:
    engine = Engine()
    engine.add([audio(0, 0.0)], T0 + 0.2)
    engine.tick(T0 + 1)
    engine.add([audio(1, 2.0)], T0 + 2.2)
    engine.tick(T0 + 3)
    snapshot = msgspec.msgpack.decode(msgspec.msgpack.encode(engine.snapshot()))
    restored = Engine()
    restored.restore(snapshot, T0 + 3.5)
    restored.add([audio(2, 4.0)], T0 + 4.2)
    restored.tick(T0 + 5)
    assert recv_kbps(restored, T0 + 5) == [32.0]
    # A checkpoint of the build before: streams without the interval's start, participants
    # without their last interval's time. They load; the first interval after has no rate.
    older = msgspec.msgpack.decode(msgspec.msgpack.encode(engine.snapshot()))
    older["version"] = 4
    (participant,) = older["meetings"][0]["participants"]
    del participant["interval_at"]
    participant["streams"] = [state[: -len(NEW_STREAM_STATE)] for state in participant["streams"]]
    old = Engine()
    old.restore(older, T0 + 3.5)
    old.add([audio(2, 4.0)], T0 + 4.2)
    old.tick(T0 + 5)
    old.add([audio(3, 6.0)], T0 + 6.2)
    old.tick(T0 + 7)
    assert recv_kbps(old, T0 + 7) == [32.0]


def test_a_stream_state_of_an_older_build_loads_with_defaults() -> None:
    stream = RtcStream("m", "p", "c")
    stream.add(audio(0, 0.0), 0)
    state = stream.state()
    restored = RtcStream.from_state(state[: -len(NEW_STREAM_STATE)])
    # Where its interval counts from is not known: its first interval has no rate.
    assert (restored.last_seq, restored.interval_seq) == (0, -1)
    with pytest.raises(ValueError, match="state"):
        RtcStream.from_state([*state, 1])
