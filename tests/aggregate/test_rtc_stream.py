"""RtcStream: cumulative counters to deltas — duplicates, reordering, gaps, resets, pair
changes — and the promise that byte accounting is exact."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.aggregate.records import RelayState, RtcMinuteRow
from collector.aggregate.rtc import (
    _STATE_SLOTS,
    BASELINE,
    COUNTERS,
    DUPLICATE,
    LEFT_PAIRS,
    TOTALS,
    RtcStream,
    relay_state,
    turn_server,
)
from protocol import RtcSample


def sample(seq: int, **fields: Any) -> RtcSample:
    return RtcSample(meeting="m", participant="p", connection="c", seq=seq, client_ts=1.0, **fields)


def rows_of(stream: RtcStream) -> RtcMinuteRow:
    row = stream.close_minute()
    assert row is not None
    return row


def test_a_first_sample_with_q_0_counts_in_full_and_a_restart_begins_again() -> None:
    stream = RtcStream("m", "p", "c", boot="b1")
    assert stream.add_fields(msgspec.structs.astuple(sample(0, video_bytes_sent=700)), 1) == 0
    stream.add(sample(1, video_bytes_sent=1_000), minute_no=1)
    assert rows_of(stream).counters["video_bytes_sent"] == 1_000
    stream.restart("b2", opened=5)
    assert (stream.boot, stream.retired, stream.opened) == ("b2", ("b1",), 5)
    stream.add(sample(3, video_bytes_sent=40), minute_no=2)  # its first ones were lost
    stream.add(sample(4, video_bytes_sent=90), minute_no=2)
    assert rows_of(stream).counters["video_bytes_sent"] == 90


def test_a_first_sample_above_q_0_is_a_baseline_then_deltas_accumulate() -> None:
    stream = RtcStream("m", "p", "c")
    assert stream.add_fields(msgspec.structs.astuple(sample(1, video_bytes_sent=1_000)), 1) == (
        BASELINE
    )
    stream.add(sample(2, video_bytes_sent=1_500), minute_no=1)
    stream.add(sample(3, video_bytes_sent=2_500), minute_no=1)
    pending, samples = stream.take_pending()
    assert pending[COUNTERS.index("video_bytes_sent")] == 1_500
    assert samples == 3
    row = rows_of(stream)
    assert row.counters["video_bytes_sent"] == 1_500
    assert (row.samples, row.gaps, row.resets, row.minute) == (3, 0, 0, 60)


def test_duplicates_and_late_samples_are_ignored_and_gaps_recorded() -> None:
    stream = RtcStream("m", "p", "c")
    outcomes = [
        stream.add_fields(msgspec.structs.astuple(sample(seq, audio_bytes_received=total)), 0)
        for seq, total in [(1, 100), (4, 400), (4, 400), (2, 200), (5, 500)]
    ]
    assert outcomes == [BASELINE, 0, DUPLICATE, DUPLICATE, 0]
    row = rows_of(stream)
    assert row.counters["audio_bytes_received"] == 400  # 500 - 100, nothing twice
    assert stream.stale == 2
    assert row.gaps == 2  # seq 2 and 3 missing when 4 came


def test_a_counter_that_goes_down_is_a_reset_with_no_negative_delta() -> None:
    stream = RtcStream("m", "p", "c")
    for seq, total in [(1, 1_000), (2, 3_000), (3, 200), (4, 700)]:
        stream.add(sample(seq, video_bytes_received=total), minute_no=0)
    row = rows_of(stream)
    assert row.counters["video_bytes_received"] == 2_000 + 500
    assert row.resets == 1


def test_a_new_pair_counts_its_counters_in_full_and_only_those_are_its_own() -> None:
    """A pair the stream has not had started its counters with it: its first values count in
    full; the other counters go on."""
    stream = RtcStream("m", "p", "c")
    stream.add(sample(1, pair_id="a", pair_bytes_sent=10_000, audio_bytes_sent=100), 0)
    stream.add(sample(2, pair_id="b", pair_bytes_sent=50, audio_bytes_sent=300), 0)
    stream.add(sample(3, pair_id="b", pair_bytes_sent=80, audio_bytes_sent=400), 0)
    row = rows_of(stream)
    assert row.counters["pair_bytes_sent"] == 80
    assert row.counters["audio_bytes_sent"] == 300
    assert row.resets == 0


def test_a_switch_back_to_a_pair_goes_on_from_its_last_values() -> None:
    """Browsers may select an earlier pair again, whose counters went on meanwhile."""
    stream = RtcStream("m", "p", "c")
    for seq, pair, sent, received in [
        (0, "a", 1_000, 2_000),
        (1, "b", 300, 100),
        (2, "a", 1_500, 2_100),  # a moved 500 and 100 since it was left
        (3, "b", 350, 150),
        (4, "c", 40, 0),
    ]:
        stream.add(sample(seq, pair_id=pair, pair_bytes_sent=sent, pair_bytes_received=received), 0)
    row = rows_of(stream)
    assert row.counters["pair_bytes_sent"] == 1_500 + 350 + 40
    assert row.counters["pair_bytes_received"] == 2_100 + 150
    assert (row.resets, stream.left_pairs) == (0, ("b", 350, 150, "a", 1_500, 2_100))


def test_a_pair_counter_below_its_own_last_value_is_a_reset() -> None:
    stream = RtcStream("m", "p", "c")
    for seq, pair, sent in [(0, "a", 1_000), (1, "b", 300), (2, "a", 200), (3, "a", 260)]:
        stream.add(sample(seq, pair_id=pair, pair_bytes_sent=sent), 0)
    row = rows_of(stream)
    assert row.counters["pair_bytes_sent"] == 1_000 + 300 + 60  # nothing of a's 200
    assert row.resets == 1


def test_a_sample_without_a_pair_keeps_the_streams_pair() -> None:
    stream = RtcStream("m", "p", "c")
    stream.add(sample(0, pair_bytes_sent=100), 0)  # counters before any pair id: the first's
    stream.add(sample(1, pair_id="a", pair_bytes_sent=300), 0)
    stream.add(sample(2, audio_bytes_sent=10), 0)
    stream.add(sample(3, pair_id="a", pair_bytes_sent=700), 0)
    assert rows_of(stream).counters["pair_bytes_sent"] == 700
    assert (stream.pair_id, stream.left_pairs) == ("a", ())


def test_a_stream_remembers_the_last_few_pairs_it_left() -> None:
    stream = RtcStream("m", "p", "c")
    for seq, pair in enumerate("abcdefa"):
        stream.add(sample(seq, pair_id=pair, pair_bytes_sent=100), 0)
    # a was forgotten: its return counts as a new pair's
    assert stream.left_pairs[::3] == ("f", "e", "d", "c")
    assert len(stream.left_pairs) == 3 * LEFT_PAIRS
    assert rows_of(stream).counters["pair_bytes_sent"] == 700


def test_relayed_bytes_count_a_new_relayed_pair_in_full() -> None:
    """An ICE restart onto TURN, then onto another TURN pair: each new pair's first values are
    relayed traffic, counted in full."""
    stream = RtcStream("m", "p", "c")
    relayed: dict[str, Any] = {"local_candidate": "relay", "turn_url": "turn:t:3478"}
    stream.add(sample(0, pair_id="d", local_candidate="host", pair_bytes_sent=5_000), 0)
    stream.add(sample(1, pair_id="r1", pair_bytes_sent=800, pair_bytes_received=200, **relayed), 0)
    stream.add(sample(2, pair_id="r1", pair_bytes_sent=900, pair_bytes_received=300, **relayed), 0)
    stream.add(sample(3, pair_id="r2", pair_bytes_sent=70, pair_bytes_received=30, **relayed), 0)
    row = rows_of(stream)
    assert row.relayed_bytes == 900 + 300 + 70 + 30
    assert row.counters["pair_bytes_sent"] == 5_000 + 900 + 70


def test_totals_are_the_bytes_counted_since_the_boot_began() -> None:
    """Closed minutes and the open one, a held sample folded in; not what a baseline or a reset
    left uncounted; a new boot begins them again."""
    stream = RtcStream("m", "p", "c", boot="b1")
    assert TOTALS == (
        "audio_bytes_sent",
        "audio_bytes_received",
        "video_bytes_sent",
        "video_bytes_received",
        "pair_bytes_sent",
        "pair_bytes_received",
    )
    stream.add(sample(3, audio_bytes_sent=1_000, pair_id="a", pair_bytes_sent=9_000), 0)  # baseline
    stream.add(sample(4, audio_bytes_sent=1_500, pair_id="a", pair_bytes_sent=9_700), 0)
    assert stream.totals() == [500, 0, 0, 0, 700, 0]
    assert stream.close_minute() is not None
    for seq, audio, video in [(5, 100, 10), (6, 400, 20), (7, 500, 30), (8, 600, 45)]:
        stream.add(sample(seq, audio_bytes_sent=audio, video_bytes_received=video), 1)
    assert stream.held  # the last one
    assert stream.totals() == [500 + 500, 0, 0, 45, 700, 0]  # nothing of the reset's 100
    stream.close_minute()
    stream.restart("b2", opened=1)
    assert stream.totals() == [0] * len(TOTALS)
    stream.add(sample(0, audio_bytes_sent=70, pair_id="a", pair_bytes_received=90), 2)
    assert stream.totals() == [70, 0, 0, 0, 0, 90]


def test_relayed_bytes_of_the_open_minute_count_a_held_sample() -> None:
    """What the live view reads of the open minute's relayed bytes includes a held sample, as
    its totals do (a fast client's last sample must not wait for the tick to show)."""
    stream = RtcStream("m", "p", "c")
    relayed: dict[str, Any] = {"local_candidate": "relay", "pair_id": "r"}
    for seq, sent in enumerate([100, 250, 400, 700]):
        stream.add(sample(seq, pair_bytes_sent=sent, **relayed), 0)
    assert stream.held
    assert stream.relayed_open() == 700
    assert stream.totals()[TOTALS.index("pair_bytes_sent")] == 700


def test_totals_and_the_pairs_left_survive_a_checkpoint() -> None:
    """A stream's state keeps its totals and the pairs it left; the state of the build before,
    without them, loads with none (its totals count from the restore on)."""
    stream = RtcStream("m", "p", "c")
    stream.add(sample(0, pair_id="a", pair_bytes_sent=1_000, video_bytes_sent=400), 0)
    stream.close_minute()
    stream.add(sample(1, pair_id="b", pair_bytes_sent=200, video_bytes_sent=900), 1)
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(stream.state()))
    restored = RtcStream.from_state(state)
    assert restored.totals() == stream.totals() == [0, 0, 900, 0, 1_200, 0]
    assert restored.left_pairs == stream.left_pairs == ("a", 1_000, 0)
    for again in (stream, restored):
        again.add(sample(2, pair_id="a", pair_bytes_sent=1_100, video_bytes_sent=1_000), 1)
    assert restored.totals() == stream.totals() == [0, 0, 1_000, 0, 1_300, 0]
    # the build before: no pairs left at the end, ``last`` without the totals after the counters
    older = state[: -len(("left_pairs",))]
    at = _STATE_SLOTS.index("last")
    older[at] = older[at][: 8 * len(COUNTERS)]
    assert RtcStream.from_state(older).totals() == [0, 0, 500, 0, 200, 0]  # its open minute's
    assert RtcStream.from_state(older).left_pairs == ()


def test_relayed_bytes_and_relay_state() -> None:
    assert relay_state("host", None) == "direct"
    assert relay_state("relay", None) == "turn-udp"
    assert relay_state("relay", "tcp") == "turn-tcp"
    assert turn_server("turn:t1.example:3478?transport=tcp") == "turn:t1.example:3478"
    stream = RtcStream("m", "p", "c")
    relayed: dict[str, Any] = {
        "local_candidate": "relay",
        "relay_protocol": "tcp",
        "turn_url": "turn:t:3478?x=1",
    }
    assert stream.add(sample(1, pair_bytes_sent=0, pair_bytes_received=0, **relayed), 0) == (
        "turn-tcp"
    )
    assert stream.add(sample(2, pair_bytes_sent=600, pair_bytes_received=400, **relayed), 0) is None
    assert stream.add(sample(3, local_candidate="host", pair_bytes_sent=900), 0) == "direct"
    row = rows_of(stream)
    assert row.relayed_bytes == 1_000  # only while relayed
    assert row.relay == "direct"


def test_gauges_average_over_the_minute() -> None:
    stream = RtcStream("m", "p", "c")
    stream.add(sample(1, rtt_ms=100.0), 0)
    stream.add(sample(2, rtt_ms=200.0), 0)
    stream.add(sample(3), 0)
    row = rows_of(stream)
    assert row.rtt_ms_avg == 150.0
    assert row.audio_jitter_ms_avg is None


def test_video_gauges_and_the_bandwidth_estimate_reach_the_minute_row() -> None:
    """Frame rates and the bandwidth estimate average over the samples that carried them,
    resolutions are the minute's last; a sample without a value leaves the stream's last one,
    and a minute in which no sample carried a value has None for it."""
    stream = RtcStream("m", "p", "c")
    video: dict[str, Any] = dict(width_in=1280, height_in=720, width_out=640, height_out=360)
    stream.add(sample(1, fps_in=30.0, fps_out=24.0, available_outgoing_bps=2e6, **video), 0)
    stream.add(sample(2, fps_in=20.0, width_in=960, height_in=540), 0)
    stream.add(sample(3, fps_out=12.0, available_outgoing_bps=1e6), 0)
    stream.add(sample(4), 0)
    row = rows_of(stream)
    assert (row.fps_in_avg, row.fps_out_avg, row.bwe_bps_avg) == (25.0, 18.0, 1.5e6)
    assert (row.width_in, row.height_in, row.width_out, row.height_out) == (960, 540, 640, 360)
    assert row.remote_relayed is None  # no sample told the path
    # The live values are the last ones carried.
    assert (stream.fps_in, stream.fps_out, stream.available_outgoing_bps) == (20.0, 12.0, 1e6)
    assert (stream.width_in, stream.height_in) == (960, 540)

    stream.add(sample(5, rtt_ms=50.0), 1)  # a minute without any of them
    row = rows_of(stream)
    assert (row.fps_in_avg, row.fps_out_avg, row.bwe_bps_avg) == (None, None, None)
    assert (row.width_in, row.height_in, row.width_out, row.height_out) == (None,) * 4
    assert (stream.fps_in, stream.width_out, stream.available_outgoing_bps) == (20.0, 640, 1e6)


def test_a_relayed_peer_is_the_minutes_last_path() -> None:
    """``rct`` = relay with a direct local candidate: the peer is relayed (not this client);
    a minute with no sample that told the path has None."""
    stream = RtcStream("m", "p", "c")
    stream.add(sample(1, local_candidate="host", remote_candidate="relay"), 0)
    stream.add(sample(2), 0)
    row = rows_of(stream)
    assert (row.remote_relayed, row.relay) == (True, "direct")
    stream.add(sample(3), 1)
    assert rows_of(stream).remote_relayed is None
    assert stream.remote_relayed  # the live view keeps it
    stream.add(sample(4, local_candidate="relay", remote_candidate="relay"), 2)
    row = rows_of(stream)
    assert (row.remote_relayed, row.relay) == (False, "turn-udp")  # relayed here, not there


def test_a_restored_state_keeps_the_open_minutes_gauges() -> None:
    """The checkpoint state holds the minute's sums, counts and last resolutions."""
    stream = RtcStream("m", "p", "c")
    video: dict[str, Any] = dict(fps_in=30.0, fps_out=15.0, available_outgoing_bps=3e6)
    stream.add(sample(1, width_in=320, height_in=180, local_candidate="srflx", **video), 0)
    stream.add(sample(2, fps_in=10.0, remote_candidate="relay", local_candidate="host"), 0)
    restored = RtcStream.from_state(msgspec.msgpack.decode(msgspec.msgpack.encode(stream.state())))
    restored.add(sample(3, fps_out=25.0, width_out=1920, height_out=1080), 0)
    stream.add(sample(3, fps_out=25.0, width_out=1920, height_out=1080), 0)
    row = rows_of(restored)
    assert row == rows_of(stream)
    assert (row.fps_in_avg, row.fps_out_avg, row.bwe_bps_avg) == (20.0, 20.0, 3e6)
    assert (row.width_in, row.height_in, row.width_out, row.height_out) == (320, 180, 1920, 1080)
    assert row.remote_relayed is True


def test_ring_keeps_the_window_and_marks_missing_buckets() -> None:
    stream = RtcStream("m", "p", "c", window=4)
    values = (64_000.0, 32_000.0, 2.5, 0.5, 120.0, 15.5, 3.9, 70.25)
    stream.ring_write(10, values)
    stream.ring_write(12, tuple(v * 2 for v in values))
    assert stream.ring_series("send_bps", 12) == [None, 64_000.0, None, 128_000.0]
    assert stream.ring_series("quality", 13) == [70.25, None, 140.5, None]
    assert stream.ring_series("send_bps", 20) == [None, None, None, None]
    # Stored in 16-bit steps: NaN is no data, values beyond the top step saturate.
    stream.ring_write(21, (math.nan, 1e12, 2.5, 0.5, 120.0, 15.5, 3.9, 70.25))
    assert stream.ring_series("send_bps", 21)[-1] is None
    assert stream.ring_series("recv_bps", 21)[-1] == 65_534_000.0


@settings(max_examples=200, deadline=None)
@given(
    increments=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=60),
    deliveries=st.lists(st.integers(min_value=0, max_value=59), min_size=1, max_size=120),
    minutes=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=120),
)
def test_bytes_in_minute_rows_equal_last_total_minus_first(
    increments: list[int], deliveries: list[int], minutes: list[int]
) -> None:
    """Any cumulative series delivered with drops, duplicates and reordering, across minute
    boundaries: the rows hold exactly (total of the newest sample) - (total of the first)."""
    totals = [sum(increments[: i + 1]) for i in range(len(increments))]
    delivered = [i % len(totals) for i in deliveries]
    stream = RtcStream("m", "p", "c")
    rows: list[RtcMinuteRow] = []
    minute = 0
    for n, index in enumerate(delivered):
        minute += minutes[n % len(minutes)]  # time moves on, sometimes across minutes
        if stream.minute_no not in (-1, minute) and stream.minute_samples:
            rows.append(rows_of(stream))
        stream.add(sample(index + 1, video_bytes_sent=totals[index]), minute)
    if (last := stream.close_minute()) is not None:
        rows.append(last)
    newest = max(delivered)
    expected = totals[newest] - totals[delivered[0]]
    assert sum(row.counters["video_bytes_sent"] for row in rows) == expected


def applied_on_arrival(stream: RtcStream, frame: RtcSample, minute_no: int) -> RelayState | None:
    """``stream.add`` with ``frame`` applied on arrival, never held: a sample is held only in
    place of the stream's ``recent`` one."""
    stream.recent = None
    return stream.add(frame, minute_no)


_STEP = st.one_of(
    st.just("tick"),
    st.just("minute"),
    st.fixed_dictionaries(
        {
            "seq": st.sampled_from([1, 1, 1, 2, 0, -1]),  # next, a gap, a duplicate, a late one
            # per counter: grow, absent, or fall (a reset)
            "moves": st.lists(
                st.one_of(st.integers(0, 5_000), st.none(), st.integers(-5_000, -1)),
                min_size=4,
                max_size=4,
            ),
            "pair": st.sampled_from(["a", "a", "a", "b", None]),
            "path": st.sampled_from([None, None, "host", "relay"]),
            # every other counter too, growing with the sequence number: none, one or a few
            # of all the counters absent
            "others": st.booleans(),
        }
    ),
)
_HELD_COUNTERS = ("audio_bytes_sent", "video_bytes_received", "pair_bytes_sent", "frames_decoded")
_OTHER_COUNTERS = tuple(name for name in COUNTERS if name not in _HELD_COUNTERS)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_STEP, max_size=80))
def test_holding_samples_changes_no_figure(steps: list[Any]) -> None:
    """Samples faster than the tick are held, not applied one by one: every pending interval,
    minute row and total equals what applying each sample on arrival gives, whatever the order,
    resets, absent counters, pair and relay changes."""
    fast, reference = RtcStream("m", "p", "c"), RtcStream("m", "p", "c")
    totals = [0] * len(_HELD_COUNTERS)
    seq = minute = 0
    for step in steps:
        if step == "tick":
            assert fast.take_pending() == reference.take_pending()
            continue
        if step == "minute":
            minute += 1
            assert fast.close_minute() == reference.close_minute()
            continue
        seq = max(0, seq + step["seq"])
        fields: dict[str, Any] = {}
        for k, move in enumerate(step["moves"]):
            if move is not None:
                totals[k] = max(0, totals[k] + move)
                fields[_HELD_COUNTERS[k]] = totals[k]
        if step["path"] is not None:
            fields["local_candidate"] = step["path"]
        if step["others"]:
            fields |= dict.fromkeys(_OTHER_COUNTERS, 10 * seq)
        frame = sample(seq, pair_id=step["pair"], **fields)
        assert fast.add(frame, minute) == applied_on_arrival(reference, frame, minute)
    assert fast.state() == reference.state()
    assert fast.close_minute() == reference.close_minute()


def test_a_fast_client_is_held_between_ticks() -> None:
    """Ten samples within a tick: two applied, then the newest held, the interval exact; a
    stream that sends once a tick keeps no reference between ticks."""
    stream = RtcStream("m", "p", "c")
    for seq in range(1, 11):
        stream.add(sample(seq, audio_bytes_sent=100 * seq, video_bytes_sent=1_000 * seq), 0)
        assert stream.held is (seq > 2)
    pending, samples = stream.take_pending()
    assert (pending[COUNTERS.index("video_bytes_sent")], samples) == (9_000, 10)
    assert not stream.held
    stream.add(sample(11, audio_bytes_sent=1_100, video_bytes_sent=11_000), 0)
    assert stream.recent is None


def test_a_counter_that_appears_is_never_held_past() -> None:
    """A sample with a counter the one before lacked is applied; the counter, absent from the
    stream's first sample, counts from 0 (all of it is new)."""
    stream = RtcStream("m", "p", "c")
    stream.add(sample(1, audio_bytes_sent=100, video_bytes_sent=100), 0)
    stream.add(sample(2, audio_bytes_sent=200, video_bytes_sent=200, frames_decoded=50), 0)
    assert not stream.held
    stream.add(sample(3, audio_bytes_sent=300, video_bytes_sent=300, frames_decoded=80), 0)
    pending, _ = stream.take_pending()
    assert pending[COUNTERS.index("frames_decoded")] == 80
    assert pending[COUNTERS.index("video_bytes_sent")] == 200


@pytest.mark.parametrize("missing", [(), ("freeze_count",), ("freeze_count", "frames_dropped")])
def test_a_counter_that_appears_among_all_the_others_is_never_held_past(
    missing: tuple[str, ...],
) -> None:
    """The same with every counter but ``missing`` present, the last of them then appearing
    (from 0): samples with no absent counter and with just one are compared as well."""
    stream = RtcStream("m", "p", "c")
    for seq in (1, 2, 3):
        counters = {name: 100 * seq for name in COUNTERS if name not in missing}
        stream.add(sample(seq, **counters), 0)
    assert stream.held
    appears = dict.fromkeys(missing[-1:], 7)
    stream.add(sample(4, **{name: 400 for name in COUNTERS if name not in missing} | appears), 0)
    assert stream.held is not bool(missing)  # with none missing, nothing appeared: held
    stream.add(sample(5, **{name: 500 for name in COUNTERS if name not in missing[:-1]}), 0)
    pending, samples = stream.take_pending()
    assert (pending[COUNTERS.index("video_bytes_sent")], samples) == (400, 5)
    if missing:
        assert pending[COUNTERS.index(missing[-1])] == 500
