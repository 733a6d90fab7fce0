"""Call-quality scoring of one interval: audio MOS, video score, reason codes, the indicator.

The formulas follow the project's WebRTC quality reference (summed up in docs/AGGREGATION.md);
every function takes the values of one interval (deltas already taken by the caller, never
lifetime averages) and returns a number or a tuple. This module never does I/O, never reads a
clock and keeps no state: the previous smoothed indicator is passed in by the caller.

Loss is always passed as a FRACTION (0.01 for 1 %) and converted to percent here, where the
E-model wants it: passing the fraction straight into the formula, a known defect of open-source
monitors, weights loss about 100 times too weakly.

Audio (simplified ITU-T G.107 E-model)::

    Ppl    = 100 · loss_fraction
    d      = 20 + jitter_buffer_ms + rtt_ms / 2
    Id     = 0.024·d + 0.11·(d - 177.3)·[d > 177.3]
    Ie     = clamp(55 - 4.6·ln(audio_bitrate_bps), 0, 30)       (30 when the bitrate is <= 0)
    Bpl    = 20 with FEC/RED, else 10
    Ie_eff = Ie + (95 - Ie) · Ppl / (Ppl + Bpl)
    R      = clamp(93.2 - Id - Ie_eff, 0, 100)
    MOS    = clamp(1 + 0.035·R + 7e-6·R·(R - 60)·(100 - R), 1, 4.5)

Video score, 0..100, the minimum of three scores minus a penalty. The reference leaves the delay
effect, the fps/freeze score and the penalty open; the choices made here::

    delay effect  = max(0, (rtt_ms - 150) / 10)     no effect up to 150 ms RTT, then 10 points
                                                    per 100 ms (400 ms RTT costs 25 points)
    packet score  = 100 - 10·loss% - delay effect
    bitrate score = 100 - 20·ln(expected / actual)  100 when actual >= expected (or nothing is
                                                    expected), 0 when actual <= 0
    fps score     = 100·min(1, fps / expected_fps) - 100·freeze_fraction
                                                    (fps ratio 1 when no fps is expected)
    penalty       = 10 when the encoder was limited (cpu or bandwidth) for > 30 % of the interval
    video score   = clamp(min(packet, bitrate, fps) - penalty, 0, 100), each score also clamped

Reason codes (``REASONS``, always reported in that order) and their thresholds; ``None`` means
"not measured this interval" and never produces a reason:

    loss       loss_fraction > 0.01                (alert default: > 1 %)
    rtt        rtt_ms > 400                        (alert default)
    jitter     jitter_ms > 30                      (alert default)
    bitrate    bitrate_bps < 0.5 · expected_bitrate_bps (expected > 0)
    cpu        limitation == "cpu"
    relay-tcp  relay_protocol is "tcp" or "tls"    (TURN over TCP/TLS: head-of-line blocking)
    freeze     freeze_fraction > 0

Quality indicator: ``quality_score`` = min(audio R, video score) of those present, smoothed by
``smooth`` (EWMA that falls fast, weight 0.7, and recovers slowly, weight 0.4) and named by
``level``.

Inputs out of their domain (a loss fraction outside 0..1, a negative delay, NaN) are caller bugs
and raise ``ValueError`` rather than producing a plausible-looking score.
"""

from __future__ import annotations

import math
from typing import Final

LEVELS: Final = ("excellent", "good", "fair", "poor", "bad")
REASONS: Final = ("loss", "rtt", "jitter", "bitrate", "cpu", "relay-tcp", "freeze")

# E-model constants (reference, simplified G.107).
_R0: Final = 93.2
_DELAY_KNEE_MS: Final = 177.3
_BPL_PLAIN: Final = 10.0
_BPL_FEC: Final = 20.0
_IE_MAX: Final = 30.0
_MOS_MIN: Final = 1.0
_MOS_MAX: Final = 4.5

# Video score choices (module docstring).
DELAY_EFFECT_FREE_RTT_MS: Final = 150.0
DELAY_EFFECT_MS_PER_POINT: Final = 10.0
LIMITED_SHARE_FOR_PENALTY: Final = 0.3
LIMITED_PENALTY: Final = 10.0

# Reason thresholds (module docstring).
LOSS_REASON_FRACTION: Final = 0.01
RTT_REASON_MS: Final = 400.0
JITTER_REASON_MS: Final = 30.0
BITRATE_REASON_SHARE: Final = 0.5
RELAY_TCP_PROTOCOLS: Final = frozenset({"tcp", "tls"})

# Indicator smoothing: a drop shows at once, a recovery has to last.
FALLING_WEIGHT: Final = 0.7
RISING_WEIGHT: Final = 0.4

# Lower edges (exclusive) of the levels, best first; below the last one is "bad".
_LEVEL_FLOORS: Final = ((80.0, "excellent"), (60.0, "good"), (40.0, "fair"), (20.0, "poor"))


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _require_fraction(name: str, value: float) -> None:
    # ``not 0 <= value <= 1`` is also true for NaN.
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in 0..1, got {value!r}")


def _require_non_negative(name: str, value: float) -> None:
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def r_factor(
    loss_fraction: float,
    rtt_ms: float,
    jitter_buffer_ms: float,
    audio_bitrate_bps: float,
    fec: bool = False,
) -> float:
    """Return the E-model transmission rating R (0..100) of one audio interval.

    ``loss_fraction`` is 0..1 and becomes percent here (see the module docstring). A bitrate
    <= 0 (nothing received, or not measured) gets the worst codec impairment, 30.
    """
    _require_fraction("loss_fraction", loss_fraction)
    _require_non_negative("rtt_ms", rtt_ms)
    _require_non_negative("jitter_buffer_ms", jitter_buffer_ms)
    if math.isnan(audio_bitrate_bps):
        raise ValueError("audio_bitrate_bps must not be NaN")

    loss_percent = 100.0 * loss_fraction
    one_way_delay_ms = 20.0 + jitter_buffer_ms + rtt_ms / 2.0
    delay_impairment = 0.024 * one_way_delay_ms
    if one_way_delay_ms > _DELAY_KNEE_MS:
        delay_impairment += 0.11 * (one_way_delay_ms - _DELAY_KNEE_MS)
    if audio_bitrate_bps <= 0.0:
        codec_impairment = _IE_MAX
    else:
        codec_impairment = _clamp(55.0 - 4.6 * math.log(audio_bitrate_bps), 0.0, _IE_MAX)
    robustness = _BPL_FEC if fec else _BPL_PLAIN
    effective_impairment = codec_impairment + (95.0 - codec_impairment) * loss_percent / (
        loss_percent + robustness
    )
    return _clamp(_R0 - delay_impairment - effective_impairment, 0.0, 100.0)


def mos_from_r(r: float) -> float:
    """Map an R rating to a mean opinion score, from 1.0 (bad) to 4.5 (the best the model gives)."""
    if math.isnan(r):
        raise ValueError("r must not be NaN")
    r = _clamp(r, 0.0, 100.0)
    mos = 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)
    return _clamp(mos, _MOS_MIN, _MOS_MAX)


def audio_mos(
    loss_fraction: float,
    rtt_ms: float,
    jitter_buffer_ms: float,
    audio_bitrate_bps: float,
    fec: bool = False,
) -> float:
    """Return the audio MOS of one interval: ``mos_from_r(r_factor(...))``."""
    return mos_from_r(r_factor(loss_fraction, rtt_ms, jitter_buffer_ms, audio_bitrate_bps, fec))


def _packet_score(loss_fraction: float, rtt_ms: float) -> float:
    delay_effect = max(0.0, (rtt_ms - DELAY_EFFECT_FREE_RTT_MS) / DELAY_EFFECT_MS_PER_POINT)
    return _clamp(100.0 - 10.0 * (100.0 * loss_fraction) - delay_effect, 0.0, 100.0)


def _bitrate_score(bitrate_bps: float, expected_bitrate_bps: float) -> float:
    if bitrate_bps >= expected_bitrate_bps:
        return 100.0  # also covers "nothing expected" (expected <= 0)
    if bitrate_bps <= 0.0:
        return 0.0
    return _clamp(100.0 - 20.0 * math.log(expected_bitrate_bps / bitrate_bps), 0.0, 100.0)


def _fps_score(fps: float, expected_fps: float, freeze_fraction: float) -> float:
    fps_ratio = 1.0 if expected_fps <= 0.0 else min(1.0, fps / expected_fps)
    return _clamp(100.0 * fps_ratio - 100.0 * freeze_fraction, 0.0, 100.0)


def video_score(
    *,
    loss_fraction: float,
    rtt_ms: float,
    bitrate_bps: float,
    expected_bitrate_bps: float,
    fps: float,
    expected_fps: float,
    freeze_fraction: float,
    limited_fraction: float,
) -> float:
    """Return the video score (0..100) of one interval: the worst of packets, bitrate and fps.

    The worst sub-score wins because any one of them alone makes video look bad; the encoder
    penalty marks a sender that could not do better. Formulas in the module docstring.
    """
    _require_fraction("loss_fraction", loss_fraction)
    _require_fraction("freeze_fraction", freeze_fraction)
    _require_fraction("limited_fraction", limited_fraction)
    _require_non_negative("rtt_ms", rtt_ms)
    _require_non_negative("bitrate_bps", bitrate_bps)
    _require_non_negative("fps", fps)
    if math.isnan(expected_bitrate_bps) or math.isnan(expected_fps):
        raise ValueError("expected values must not be NaN")

    worst = min(
        _packet_score(loss_fraction, rtt_ms),
        _bitrate_score(bitrate_bps, expected_bitrate_bps),
        _fps_score(fps, expected_fps, freeze_fraction),
    )
    penalty = LIMITED_PENALTY if limited_fraction > LIMITED_SHARE_FOR_PENALTY else 0.0
    return _clamp(worst - penalty, 0.0, 100.0)


def quality_reasons(
    *,
    loss_fraction: float | None,
    rtt_ms: float | None,
    jitter_ms: float | None,
    bitrate_bps: float | None,
    expected_bitrate_bps: float | None,
    limitation: str | None,
    relay_protocol: str | None,
    freeze_fraction: float | None,
) -> tuple[str, ...]:
    """Return the reason codes explaining a low score, in the order of ``REASONS``.

    Published with every indicator so a user sees *why* a call is poor. ``None`` means "not
    measured this interval" and never yields a reason; thresholds in the module docstring.
    """
    found = {
        "loss": loss_fraction is not None and loss_fraction > LOSS_REASON_FRACTION,
        "rtt": rtt_ms is not None and rtt_ms > RTT_REASON_MS,
        "jitter": jitter_ms is not None and jitter_ms > JITTER_REASON_MS,
        "bitrate": (
            bitrate_bps is not None
            and expected_bitrate_bps is not None
            and expected_bitrate_bps > 0.0
            and bitrate_bps < BITRATE_REASON_SHARE * expected_bitrate_bps
        ),
        "cpu": limitation == "cpu",
        "relay-tcp": relay_protocol in RELAY_TCP_PROTOCOLS,
        "freeze": freeze_fraction is not None and freeze_fraction > 0.0,
    }
    return tuple(reason for reason in REASONS if found[reason])


def smooth(previous: float | None, current: float) -> float:
    """Return the next smoothed indicator: falls fast (weight 0.7), recovers slowly (0.4).

    A drop must show at once, while a recovery has to last a few intervals before the
    indicator believes it; ``previous`` None (first interval) returns ``current``.
    """
    if previous is None:
        return current
    weight = FALLING_WEIGHT if current < previous else RISING_WEIGHT
    return weight * current + (1.0 - weight) * previous


def level(score: float) -> str:
    """Name a 0..100 score: >80 excellent, >60 good, >40 fair, >20 poor, else bad."""
    for floor, name in _LEVEL_FLOORS:
        if score > floor:
            return name
    return "bad"


def quality_score(audio_r: float | None, video: float | None) -> float | None:
    """Return the raw indicator, min(audio R, video score) of those present; None if neither.

    Both are on 0..100, and the worse medium is what the participant experiences.
    """
    present = [value for value in (audio_r, video) if value is not None]
    return min(present) if present else None
