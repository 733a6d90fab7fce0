"""``emit --replay``'s pool: every round renumbers its frames in place, so that a daemon
aggregates each frame as a new sample of its stream instead of dropping it as a duplicate."""

from __future__ import annotations

from cli.emit import EmitOptions, ReplayPool, replay_datagrams, replay_seq_step
from cli.synthetic import Profile
from collector.aggregate.engine import Engine
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
    opts = options()
    assert replay_seq_step(opts) == 3  # 50 frames over 20 participants: 3 turns (60 frames)
    pool = ReplayPool(replay_datagrams(opts), 10_000.0, replay_seq_step(opts))
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
    pool = ReplayPool(replay_datagrams(opts), 10_000.0, replay_seq_step(opts))
    frames = sent_frames(pool, 60 * 5)
    engine = Engine()
    engine.add(list(frames), 1_000.0)
    assert sum(stream.samples for stream in engine.streams.values()) == len(frames)
    assert all(stream.stale == 0 for stream in engine.streams.values())


def test_restart_goes_on_with_growing_numbers_and_json_is_left_alone() -> None:
    opts = options()
    pool = ReplayPool(replay_datagrams(opts), 10_000.0, replay_seq_step(opts))
    first = sent_frames(pool, 120)
    pool.restart(5_000.0)
    later = sent_frames(pool, 60)
    last_before: dict[str, int] = {}
    for frame in first:
        last_before[frame.participant] = frame.seq
    assert all(f.seq > last_before[f.participant] for f in later)
    assert replay_seq_step(options(encoding="json")) == 0
