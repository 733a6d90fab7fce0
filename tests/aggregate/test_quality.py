"""quality: E-model MOS, video score, reason codes, smoothing and levels, against hand arithmetic.

Shared audio inputs below: rtt 100 ms, jitter buffer 40 ms, 32 kbit/s Opus, so
  d  = 20 + 40 + 100/2 = 110 ms  (< 177.3: no knee term)
  Id = 0.024 · 110 = 2.64
  Ie = 55 - 4.6 · ln(32000) = 55 - 4.6 · 10.373491 = 55 - 47.718059 = 7.281941
"""

from __future__ import annotations

from typing import TypedDict, Unpack

import pytest

from collector.aggregate.quality import (
    LEVELS,
    REASONS,
    audio_mos,
    level,
    mos_from_r,
    quality_reasons,
    quality_score,
    r_factor,
    smooth,
    video_score,
)

RTT_MS = 100.0
JITTER_BUFFER_MS = 40.0
OPUS_BPS = 32_000.0
TOLERANCE = 1e-3  # the hand arithmetic below is carried to 4-6 decimals


# --- audio: R factor and MOS -------------------------------------------------------------------


def test_no_loss_gives_high_r_and_mos() -> None:
    # R = 93.2 - 2.64 - 7.281941 = 83.278059
    # MOS = 1 + 0.035·83.278059 + 7e-6·83.278059·(83.278059 - 60)·(100 - 83.278059)
    #     = 1 + 2.914732 + 7e-6·83.278059·23.278059·16.721941 = 1 + 2.914732 + 0.226914 = 4.141646
    assert r_factor(0.0, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS) == pytest.approx(
        83.2781, abs=TOLERANCE
    )
    assert audio_mos(0.0, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS) == pytest.approx(
        4.1416, abs=TOLERANCE
    )


def test_one_percent_loss() -> None:
    # Ppl = 100 · 0.01 = 1; Ie_eff = 7.281941 + (95 - 7.281941) · 1/(1 + 10)
    #     = 7.281941 + 87.718059/11 = 7.281941 + 7.974369 = 15.256310
    # R = 93.2 - 2.64 - 15.256310 = 75.303690
    # MOS = 1 + 0.035·75.303690 + 7e-6·75.303690·15.303690·24.696310
    #     = 1 + 2.635629 + 0.199224 = 3.834854
    assert r_factor(0.01, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS) == pytest.approx(
        75.3037, abs=TOLERANCE
    )
    assert audio_mos(0.01, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS) == pytest.approx(
        3.8349, abs=TOLERANCE
    )


def test_five_percent_loss() -> None:
    # Ppl = 5; Ie_eff = 7.281941 + 87.718059 · 5/15 = 7.281941 + 29.239353 = 36.521294
    # R = 93.2 - 2.64 - 36.521294 = 54.038706   (below 60: the cubic term is negative)
    # MOS = 1 + 0.035·54.038706 + 7e-6·54.038706·(-5.961294)·45.961294
    #     = 1 + 1.891355 - 0.103642 = 2.787713
    assert r_factor(0.05, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS) == pytest.approx(
        54.0387, abs=TOLERANCE
    )
    assert audio_mos(0.05, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS) == pytest.approx(
        2.7877, abs=TOLERANCE
    )


def test_fec_doubles_the_loss_robustness() -> None:
    # Bpl = 20: Ie_eff = 7.281941 + 87.718059 · 5/25 = 7.281941 + 17.543612 = 24.825553
    # R = 93.2 - 2.64 - 24.825553 = 65.734447
    # MOS = 1 + 2.300706 + 7e-6·65.734447·5.734447·34.265553 = 1 + 2.300706 + 0.090415 = 3.391121
    assert r_factor(0.05, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS, fec=True) == pytest.approx(
        65.7344, abs=TOLERANCE
    )
    assert audio_mos(0.05, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS, fec=True) == pytest.approx(
        3.3911, abs=TOLERANCE
    )


def test_delay_beyond_the_knee_adds_the_second_term() -> None:
    # rtt 300, jb 60: d = 20 + 60 + 150 = 230 > 177.3
    # Id = 0.024·230 + 0.11·(230 - 177.3) = 5.52 + 0.11·52.7 = 5.52 + 5.797 = 11.317
    # R = 93.2 - 11.317 - 7.281941 = 74.601059
    # MOS = 1 + 2.611037 + 7e-6·74.601059·14.601059·25.398941 = 1 + 2.611037 + 0.193661 = 3.804698
    assert r_factor(0.0, 300.0, 60.0, OPUS_BPS) == pytest.approx(74.6011, abs=TOLERANCE)
    assert audio_mos(0.0, 300.0, 60.0, OPUS_BPS) == pytest.approx(3.8047, abs=TOLERANCE)


def test_loss_is_a_fraction_converted_to_percent() -> None:
    # The known defect: feeding 0.01 into the formula as if it were percent gives
    # Ie_eff = 7.281941 + 87.718059 · 0.01/10.01 = 7.369571, R = 83.190429, MOS = 4.138671:
    # a 0.003 drop that nobody would notice. Converted to percent, 1 % loss costs 0.31 MOS.
    clean = audio_mos(0.0, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS)
    lossy = audio_mos(0.01, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS)
    assert clean - lossy > 0.3
    assert lossy < 3.9


def test_loss_given_in_percent_is_rejected() -> None:
    with pytest.raises(ValueError, match="loss_fraction"):
        r_factor(5.0, RTT_MS, JITTER_BUFFER_MS, OPUS_BPS)


@pytest.mark.parametrize(
    ("loss", "rtt", "jitter_buffer"),
    [(-0.1, 100.0, 40.0), (float("nan"), 100.0, 40.0), (0.0, -1.0, 40.0), (0.0, 100.0, -5.0)],
)
def test_out_of_domain_audio_inputs_are_rejected(
    loss: float, rtt: float, jitter_buffer: float
) -> None:
    with pytest.raises(ValueError, match="must"):
        r_factor(loss, rtt, jitter_buffer, OPUS_BPS)


@pytest.mark.parametrize("bitrate", [0.0, -1.0, 100.0])
def test_no_or_tiny_bitrate_gets_the_worst_codec_impairment(bitrate: float) -> None:
    # Ie = 30 (guarded for <= 0; for 100 bps 55 - 4.6·ln(100) = 55 - 21.184 = 33.816, capped)
    # R = 93.2 - 2.64 - 30 = 60.56
    assert r_factor(0.0, RTT_MS, JITTER_BUFFER_MS, bitrate) == pytest.approx(60.56, abs=TOLERANCE)


def test_high_bitrate_has_no_codec_impairment() -> None:
    # 55 - 4.6·ln(1e6) = 55 - 4.6·13.815511 = 55 - 63.551 < 0, so Ie = 0; R = 93.2 - 2.64 = 90.56
    assert r_factor(0.0, RTT_MS, JITTER_BUFFER_MS, 1e6) == pytest.approx(90.56, abs=TOLERANCE)


def test_r_is_clamped_at_zero_and_mos_at_one() -> None:
    # loss 100 %, rtt 2000, jb 500: d = 20 + 500 + 1000 = 1520
    # Id = 0.024·1520 + 0.11·(1520 - 177.3) = 36.48 + 147.697 = 184.177 alone exceeds 93.2
    assert r_factor(1.0, 2000.0, 500.0, OPUS_BPS) == 0.0
    assert audio_mos(1.0, 2000.0, 500.0, OPUS_BPS) == 1.0


@pytest.mark.parametrize(
    ("r", "mos"),
    [
        (0.0, 1.0),  # 1 + 0 + 0
        (50.0, 2.575),  # 1 + 1.75 + 7e-6·50·(-10)·50 = 2.75 - 0.175
        (100.0, 4.5),  # 1 + 3.5 + 7e-6·100·40·0
        (-10.0, 1.0),  # clamped to R = 0
        (120.0, 4.5),  # clamped to R = 100
    ],
)
def test_mos_from_r(r: float, mos: float) -> None:
    assert mos_from_r(r) == pytest.approx(mos, abs=1e-9)


# --- video score -------------------------------------------------------------------------------


def video(**overrides: float) -> float:
    """A perfect interval, with the named inputs changed."""
    inputs = {
        "loss_fraction": 0.0,
        "rtt_ms": 100.0,
        "bitrate_bps": 1_000_000.0,
        "expected_bitrate_bps": 1_000_000.0,
        "fps": 30.0,
        "expected_fps": 30.0,
        "freeze_fraction": 0.0,
        "limited_fraction": 0.0,
    } | overrides
    return video_score(**inputs)


def test_perfect_video_scores_100() -> None:
    assert video() == 100.0


@pytest.mark.parametrize(
    ("loss", "rtt", "score"),
    [
        (0.0, 150.0, 100.0),  # no delay effect up to 150 ms
        (0.0, 250.0, 90.0),  # delay effect (250 - 150)/10 = 10
        (0.02, 100.0, 80.0),  # 100 - 10·2 %
        (0.02, 400.0, 55.0),  # 100 - 10·2 - (400 - 150)/10 = 100 - 20 - 25
        (0.2, 100.0, 0.0),  # 100 - 10·20 = -100, clamped
    ],
)
def test_packet_score(loss: float, rtt: float, score: float) -> None:
    assert video(loss_fraction=loss, rtt_ms=rtt) == pytest.approx(score, abs=1e-9)


@pytest.mark.parametrize(
    ("actual", "score"),
    [
        (2_000_000.0, 100.0),  # more than expected: no penalty
        (500_000.0, 86.1371),  # 100 - 20·ln(2) = 100 - 13.862944
        (1_000_000.0 / 148.413159, 0.0),  # expected/actual = e^5: 100 - 20·5 = 0
        (1_000.0, 0.0),  # 100 - 20·ln(1000) = 100 - 138.155, clamped
        (0.0, 0.0),  # nothing received
    ],
)
def test_bitrate_score(actual: float, score: float) -> None:
    assert video(bitrate_bps=actual) == pytest.approx(score, abs=TOLERANCE)


def test_no_expected_bitrate_means_no_bitrate_penalty() -> None:
    assert video(bitrate_bps=0.0, expected_bitrate_bps=0.0) == 100.0


@pytest.mark.parametrize(
    ("fps", "freeze", "score"),
    [
        (15.0, 0.0, 50.0),  # 100 · 15/30
        (15.0, 0.1, 40.0),  # 50 - 100·0.1
        (60.0, 0.0, 100.0),  # ratio capped at 1
        (30.0, 0.25, 75.0),  # 100 - 25
        (0.0, 0.5, 0.0),  # 0 - 50, clamped
    ],
)
def test_fps_and_freeze_score(fps: float, freeze: float, score: float) -> None:
    assert video(fps=fps, freeze_fraction=freeze) == pytest.approx(score, abs=1e-9)


def test_encoder_limited_over_30_percent_costs_10_points() -> None:
    assert video(limited_fraction=0.3) == 100.0  # "over 30 %": 30 % exactly is no penalty
    assert video(limited_fraction=0.31) == 90.0


def test_video_score_is_the_worst_sub_score_minus_the_penalty() -> None:
    # packet 100 - 10·1 = 90; bitrate 100 - 20·ln(2) = 86.1371; fps 100·27/30 = 90
    # min = 86.1371; limited half the interval: 86.1371 - 10 = 76.1371
    inputs = {"loss_fraction": 0.01, "bitrate_bps": 500_000.0, "fps": 27.0}
    assert video(**inputs) == pytest.approx(86.1371, abs=TOLERANCE)
    assert video(**inputs, limited_fraction=0.5) == pytest.approx(76.1371, abs=TOLERANCE)


@pytest.mark.parametrize(
    "bad",
    [
        {"loss_fraction": 2.0},
        {"freeze_fraction": -0.1},
        {"limited_fraction": 1.5},
        {"rtt_ms": -1.0},
        {"fps": float("nan")},
    ],
)
def test_out_of_domain_video_inputs_are_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        video(**bad)


# --- reason codes ------------------------------------------------------------------------------


class ReasonInputs(TypedDict, total=False):
    """Keyword arguments of quality_reasons, any of them overridable."""

    loss_fraction: float | None
    rtt_ms: float | None
    jitter_ms: float | None
    bitrate_bps: float | None
    expected_bitrate_bps: float | None
    limitation: str | None
    relay_protocol: str | None
    freeze_fraction: float | None


HEALTHY: ReasonInputs = {
    "loss_fraction": 0.0,
    "rtt_ms": 100.0,
    "jitter_ms": 5.0,
    "bitrate_bps": 1_000_000.0,
    "expected_bitrate_bps": 1_000_000.0,
    "limitation": "none",
    "relay_protocol": None,
    "freeze_fraction": 0.0,
}


def reasons(**overrides: Unpack[ReasonInputs]) -> tuple[str, ...]:
    """Reasons for a healthy interval, with the named inputs changed."""
    inputs = HEALTHY | overrides
    return quality_reasons(
        loss_fraction=inputs["loss_fraction"],
        rtt_ms=inputs["rtt_ms"],
        jitter_ms=inputs["jitter_ms"],
        bitrate_bps=inputs["bitrate_bps"],
        expected_bitrate_bps=inputs["expected_bitrate_bps"],
        limitation=inputs["limitation"],
        relay_protocol=inputs["relay_protocol"],
        freeze_fraction=inputs["freeze_fraction"],
    )


def test_a_healthy_interval_has_no_reasons() -> None:
    assert reasons() == ()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"loss_fraction": 0.011}, ("loss",)),
        ({"rtt_ms": 401.0}, ("rtt",)),
        ({"jitter_ms": 31.0}, ("jitter",)),
        ({"bitrate_bps": 499_999.0}, ("bitrate",)),
        ({"limitation": "cpu"}, ("cpu",)),
        ({"relay_protocol": "tcp"}, ("relay-tcp",)),
        ({"relay_protocol": "tls"}, ("relay-tcp",)),
        ({"freeze_fraction": 0.01}, ("freeze",)),
    ],
)
def test_each_reason(overrides: ReasonInputs, expected: tuple[str, ...]) -> None:
    assert reasons(**overrides) == expected


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_fraction": 0.01},  # > 1 %, not >=
        {"rtt_ms": 400.0},
        {"jitter_ms": 30.0},
        {"bitrate_bps": 500_000.0},  # exactly half of expected
        {"limitation": "bandwidth"},  # the encoder penalty covers it, not "cpu"
        {"relay_protocol": "udp"},  # TURN over UDP is fine
        {"expected_bitrate_bps": 0.0, "bitrate_bps": 0.0},  # nothing expected
    ],
)
def test_values_at_or_inside_the_thresholds_give_no_reason(
    overrides: ReasonInputs,
) -> None:
    assert reasons(**overrides) == ()


def test_reasons_come_in_the_fixed_order() -> None:
    # passed here in reverse order of REASONS; the result must still follow REASONS
    everything = reasons(
        freeze_fraction=0.2,
        relay_protocol="tls",
        limitation="cpu",
        bitrate_bps=100_000.0,
        jitter_ms=80.0,
        rtt_ms=900.0,
        loss_fraction=0.1,
    )
    assert everything == ("loss", "rtt", "jitter", "bitrate", "cpu", "relay-tcp", "freeze")
    assert everything == REASONS
    assert reasons(freeze_fraction=0.2, loss_fraction=0.1) == ("loss", "freeze")


def test_not_measured_never_gives_a_reason() -> None:
    assert (
        quality_reasons(
            loss_fraction=None,
            rtt_ms=None,
            jitter_ms=None,
            bitrate_bps=None,
            expected_bitrate_bps=None,
            limitation=None,
            relay_protocol=None,
            freeze_fraction=None,
        )
        == ()
    )
    # a low bitrate with no expectation, or an expectation with no bitrate, proves nothing
    assert reasons(bitrate_bps=1.0, expected_bitrate_bps=None) == ()
    assert reasons(bitrate_bps=None) == ()


# --- indicator: score, smoothing, levels -------------------------------------------------------


def test_quality_score_is_the_worse_of_audio_and_video() -> None:
    assert quality_score(83.3, 70.0) == 70.0
    assert quality_score(55.0, 70.0) == 55.0
    assert quality_score(None, 70.0) == 70.0
    assert quality_score(55.0, None) == 55.0
    assert quality_score(None, None) is None


def test_smoothing_starts_at_the_first_value() -> None:
    assert smooth(None, 42.0) == 42.0


def test_smoothing_falls_fast_and_recovers_slowly() -> None:
    scores = [90.0, 30.0, 90.0, 90.0]
    smoothed: list[float] = []
    previous: float | None = None
    for score in scores:
        previous = smooth(previous, score)
        smoothed.append(previous)
    # 90 (first value)
    # falling: 0.7·30 + 0.3·90 = 21 + 27 = 48      (70 % of the 60-point drop at once)
    # rising:  0.4·90 + 0.6·48 = 36 + 28.8 = 64.8  (40 % of the 42-point gap)
    # rising:  0.4·90 + 0.6·64.8 = 36 + 38.88 = 74.88
    assert smoothed == pytest.approx([90.0, 48.0, 64.8, 74.88])


def test_a_drop_moves_the_indicator_further_than_an_equal_rise() -> None:
    # same 60-point step: down 90 → 30 gives 48 (moved 42), up 30 → 90 gives 54 (moved 24)
    assert smooth(90.0, 30.0) == pytest.approx(48.0)
    assert smooth(30.0, 90.0) == pytest.approx(54.0)
    assert smooth(50.0, 50.0) == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("score", "name"),
    [
        (100.0, "excellent"),
        (80.01, "excellent"),
        (80.0, "good"),
        (60.01, "good"),
        (60.0, "fair"),
        (40.01, "fair"),
        (40.0, "poor"),
        (20.01, "poor"),
        (20.0, "bad"),
        (0.0, "bad"),
    ],
)
def test_levels_at_their_boundaries(score: float, name: str) -> None:
    assert level(score) == name


def test_levels_are_listed_best_first() -> None:
    assert LEVELS == ("excellent", "good", "fair", "poor", "bad")
    assert [level(score) for score in (90.0, 70.0, 50.0, 30.0, 10.0)] == list(LEVELS)
