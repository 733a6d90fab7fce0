"""The I/O-free parts of ``bwmon bench all``: the lossless rate search (alone and taking turns
with others) and the StatsD workload (lines and their datagrams). No sockets, no timing."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from cli.bench.all import figure
from cli.bench.compare import interleaved_searches
from cli.bench.harness import MAX_LOSS, UdpStep, lossless_search
from cli.bench.statsd import COUNTER_FIELDS, pack_lines, sample_lines
from cli.emit import EmitOptions, replay_frames
from cli.synthetic import Profile
from protocol import RtcSample


def receiver(
    capacity: float, calls: list[tuple[str, float]], name: str = "r"
) -> Callable[[float], UdpStep]:
    """A step function of a receiver that keeps up to ``capacity`` and drops the rest."""

    def step(rate: float) -> UdpStep:
        calls.append((name, rate))
        sent = round(rate)
        accepted = min(sent, round(capacity))
        return UdpStep(
            offered_frames_per_s=round(rate),
            sent_frames=sent,
            accepted_frames=accepted,
            accepted_frames_per_s=accepted,
            loss_fraction=1 - accepted / sent,
            kernel_drops=0,
        )

    return step


def test_the_search_doubles_then_bisects_below_the_capacity() -> None:
    calls: list[tuple[str, float]] = []
    best, steps = lossless_search(receiver(300_000, calls), 40_000, refine_steps=3)
    rates = [rate for _, rate in calls]
    assert rates == [40_000, 80_000, 160_000, 320_000, 240_000, 280_000, 300_000]
    assert best is not None
    assert best.offered_frames_per_s == 300_000
    assert best.loss_fraction < MAX_LOSS
    assert len(steps) == len(rates)


def test_loss_at_the_first_rate_bisects_down_from_it() -> None:
    best, steps = lossless_search(receiver(5_000, []), 40_000, refine_steps=2)
    assert best is None  # 40k, 20k and 10k all lost
    assert [s.offered_frames_per_s for s in steps] == [40_000, 20_000, 10_000]
    best, _ = lossless_search(receiver(10_000, []), 40_000, refine_steps=2)
    assert best is not None
    assert best.offered_frames_per_s == 10_000


def test_the_search_stops_at_the_highest_rate_it_may_offer() -> None:
    best, steps = lossless_search(receiver(10**9, []), 40_000, 3, max_rate=200_000)
    assert best is not None
    assert best.offered_frames_per_s == 160_000
    assert len(steps) == 3


def test_searches_take_turns_step_by_step_and_each_ends_on_its_own() -> None:
    calls: list[tuple[str, float]] = []
    steps = {
        "fast": receiver(300_000, calls, "fast"),
        "slow": receiver(50_000, calls, "slow"),
    }
    results = interleaved_searches(steps, {"fast": 40_000, "slow": 40_000}, refine_steps=1)
    names = [name for name, _ in calls]
    # slow: 40k ok, 80k lost, 60k lost; fast: 40k, 80k, 160k, 320k lost, 240k. They alternate
    # while both run.
    assert names == ["fast", "slow"] * 3 + ["fast"] * 2
    fast, slow = results["fast"][0], results["slow"][0]
    assert fast is not None
    assert slow is not None
    assert fast.offered_frames_per_s == 240_000
    assert slow.offered_frames_per_s == 40_000
    # The same steps as searching each alone.
    for name, capacity in (("fast", 300_000), ("slow", 50_000)):
        alone: list[tuple[str, float]] = []
        lossless_search(receiver(capacity, alone, name), 40_000, refine_steps=1)
        assert alone == [call for call in calls if call[0] == name]


def test_a_figure_is_the_median_min_and_max_of_the_runs_that_gave_one() -> None:
    value = figure([3.0, None, 1.0, 2.0])
    assert value is not None
    assert (value.median, value.min, value.max, value.runs) == (2.0, 1.0, 3.0, [3.0, 1.0, 2.0])
    assert figure([None]) is None


def _frames() -> list[RtcSample]:
    options = EmitOptions(meetings=4, participants=5, replay=60, profile=Profile(seed=7))
    return [f for f in replay_frames(options) if isinstance(f, RtcSample)]


def test_each_sample_becomes_one_statsd_line_per_numeric_field() -> None:
    frames = _frames()
    samples = sample_lines(frames)
    assert len(samples) == len(frames)
    first, later = frames[0], frames[20]  # the same participant, one sample apart
    assert (later.meeting, later.participant) == (first.meeting, first.participant)
    lines = {line.decode() for line in samples[20]}
    prefix = f"bwmon.{later.meeting}.{later.participant}."
    assert all(line.startswith(prefix) for line in lines)
    assert first.audio_bytes_sent is not None
    assert later.audio_bytes_sent is not None
    increment = later.audio_bytes_sent - first.audio_bytes_sent
    assert f"{prefix}aob:{increment}|c" in lines  # counters: the increment since the last
    assert f"{prefix}rtt:{later.rtt_ms:.6g}|g" in lines  # gauges: as they are
    counters = sum(getattr(later, name) is not None for name, _ in COUNTER_FIELDS)
    assert sum(line.endswith("|c") for line in lines) == counters
    assert not any("True" in line or "False" in line for line in lines)


def test_lines_are_packed_in_order_under_the_budget() -> None:
    samples = sample_lines(_frames())
    datagrams = pack_lines(samples, 1200)
    assert all(len(data) <= 1200 for data, _ in datagrams)
    assert sum(count for _, count in datagrams) == sum(len(s) for s in samples)
    unpacked = [line for data, _ in datagrams for line in data.split(b"\n")]
    assert unpacked == [line for lines in samples for line in lines]
    # Packed full: no datagram could have taken the next one's first line.
    for (data, _), (following, _) in itertools.pairwise(datagrams):
        assert len(data) + 1 + len(following.split(b"\n")[0]) > 1200
