"""``emit --replay``'s pool: every round continues its frames' sequence numbers and counters in
place, so that a daemon aggregates each frame as a new sample of its stream, with no duplicate
and no counter reset, as from a live client."""

from __future__ import annotations

import msgspec

from cli.emit import (
    REPLAY_COUNTER_BASE,
    EmitOptions,
    ReplayPool,
    replay_datagrams,
    replay_frames,
    replay_grows,
)
from cli.synthetic import Profile
from collector.aggregate.engine import Engine
from collector.aggregate.rtc import COUNTERS
from protocol import Limits, RtcSample, decode_message


def options(**kw: object) -> EmitOptions:
    base: dict[str, object] = dict(
        meetings=4, participants=5, replay=50, http_routes=0, joins=False, profile=Profile(seed=3)
    )
    return EmitOptions(**(base | kw))  # type: ignore[arg-type]


def sent_frames(pool: ReplayPool, frames: int) -> list[RtcSample]:
    """What the pool sends for ``frames`` frames, decoded."""
    out: list[RtcSample] = []
    elapsed = 0.0
    while len(out) < frames:
        elapsed += 0.005
        for data, _ in pool.due(elapsed):
            out += [f for f in decode_message(data, Limits()).frames if isinstance(f, RtcSample)]
    return out


def test_each_round_continues_every_stream_one_sample_further() -> None:
    opts = options()  # 50 frames over 20 participants: 3 turns (60 frames) in the pool
    pool = ReplayPool(replay_datagrams(opts), 10_000.0, replay_grows(opts))
    frames = sent_frames(pool, 60 * 4)
    assert pool.rounds >= 3
    by_stream: dict[tuple[str, str, str], list[int]] = {}
    for frame in frames:
        by_stream.setdefault((frame.meeting, frame.participant, frame.connection), []).append(
            frame.seq
        )
    assert len(by_stream) == 20
    for seqs in by_stream.values():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # +1 each: no repeat, no gap


def test_an_engine_takes_every_replayed_frame_as_a_new_sample() -> None:
    opts = options()
    pool = ReplayPool(replay_datagrams(opts), 10_000.0, replay_grows(opts))
    frames = sent_frames(pool, 60 * 5)
    engine = Engine()
    engine.add(list(frames), 1_000.0)
    assert sum(stream.samples for stream in engine.streams.values()) == len(frames)
    assert all(stream.stale == 0 for stream in engine.streams.values())
    assert all(stream.resets == 0 for stream in engine.streams.values())  # counters go on


def test_each_round_continues_the_counters_by_what_they_did_in_the_pool() -> None:
    opts = options()
    pool = ReplayPool(replay_datagrams(opts), 10_000.0, replay_grows(opts))
    frames = sent_frames(pool, 60 * 3)
    # The frames as generated: one round, counters from 0, seconds counters in fractions.
    original = [f for f in replay_frames(opts) if isinstance(f, RtcSample)]
    for stream in {(f.meeting, f.participant, f.connection) for f in original}:
        mine = [f for f in frames if (f.meeting, f.participant, f.connection) == stream][:9]
        pooled = [f for f in original if (f.meeting, f.participant, f.connection) == stream]
        assert len(mine) == 9
        assert len(pooled) == 3
        for name in COUNTERS:
            values = [getattr(f, name) for f in pooled]
            if values[0] is None:
                continue
            wire = [round(v) + REPLAY_COUNTER_BASE for v in values]
            span = wire[-1] - wire[0] + wire[-1] - wire[-2]
            sent = [getattr(f, name) for f in mine]
            assert sent == wire + [v + span for v in wire] + [v + 2 * span for v in wire], name


def test_counters_that_would_outgrow_their_four_bytes_start_again_and_seq_goes_on() -> None:
    opts = options(meetings=1, participants=1, replay=2)
    # The stream's two samples as they go on the wire, its video bytes moved close to the top
    # of a uint32: room for two more rounds.
    frames = [f for data, _ in replay_datagrams(opts) for f in msgspec.msgpack.decode(data)]
    first, last = (f["vob"] for f in frames)
    span = last - first + last - first  # last - first, plus last - the one before (first)
    shift = 0xFFFF_FFFF - 2 * span - last
    moved = [(msgspec.msgpack.encode([f | {"vob": f["vob"] + shift}]), 1) for f in frames]
    pool = ReplayPool(moved, 10_000.0, True)
    sent = sent_frames(pool, 2 * 4)[:8]
    assert [f.seq for f in sent] == list(range(sent[0].seq, sent[0].seq + 8))
    video = [f.video_bytes_sent for f in sent]
    assert video[2:6] == [v + span for v in video[:2]] + [v + 2 * span for v in video[:2]]
    assert video[6:] == video[:2]  # a third round would not fit: the counters start again


def test_restart_goes_on_with_growing_numbers_and_json_is_left_alone() -> None:
    opts = options()
    pool = ReplayPool(replay_datagrams(opts), 10_000.0, replay_grows(opts))
    first = sent_frames(pool, 120)
    pool.restart(5_000.0)
    later = sent_frames(pool, 60)
    last_before: dict[str, int] = {}
    for frame in first:
        last_before[frame.participant] = frame.seq
    assert all(f.seq > last_before[f.participant] for f in later)
    assert not replay_grows(options(encoding="json"))
