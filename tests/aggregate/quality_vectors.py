"""Golden vectors of the in-call view: two samples of a connection in, the daemon's numbers out.

The browser client computes, in the page, the view of each interval between two samples of a
peer connection (clients/browser/bwmon.js ``localView``) with the daemon's formulas. So that
the two implementations can never drift, one file of cases,
clients/browser/test/fixtures/quality-vectors.json, is checked by both: by
tests/aggregate/test_quality_vectors.py (this module builds the same file again) and by
clients/browser/test/quality.test.js (the JS gives the same view, to 1e-9 relative).

The expected views are computed here by the daemon's own code, never by hand nor by the JS:
the two samples go through the protocol's decoder into an ``RtcStream`` (deltas, resets, the
selected pair, gauges, the path), the interval through ``derive_interval``,
``interval_reasons`` and ``smoothed_quality`` (collector/aggregate/engine.py), the level
through ``quality.level``. The first sample is applied as a baseline, as the daemon applies a
continuation, so the second one's deltas are exactly the difference between the two, and the
time they cover is the daemon's own (``RtcStream.take_interval``): the time between the
samples' ``ts``, each received as it was taken.

``python -m tests.aggregate.quality_vectors`` rewrites the file; ``--check`` only compares
(exit status 1 when it is stale).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from collector.aggregate import quality as q
from collector.aggregate.engine import derive_interval, interval_reasons, smoothed_quality
from collector.aggregate.rtc import RtcStream
from collector.aggregate.settings import AggregateSettings
from protocol import RtcSample, decode_message

VECTORS: Final = (
    Path(__file__).resolve().parents[2] / "clients/browser/test/fixtures/quality-vectors.json"
)
SETTINGS: Final = AggregateSettings()
T0: Final = 1_764_338_400_000.0  # ms since the Unix epoch, as getStats() timestamps

Fields = dict[str, Any]


def view(prev: Fields | None, cur: Fields, prev_score: float | None) -> Fields | None:
    """The daemon's view of the interval from ``prev`` to ``cur`` (wire fields with ``ts``);
    None for a first sample (``prev`` None)."""
    if prev is None:
        return None
    stream = RtcStream("m", "p", "c")
    stream.interval_at = prev["ts"] / 1000  # as the engine, at the stream's opening
    for seq, fields in enumerate((prev, cur), start=1):  # q 1 first: a baseline
        message = json.dumps({"t": "rtc", "m": "m", "p": "p", "c": "c", "q": seq, **fields})
        (frame,) = decode_message(message.encode()).frames
        assert isinstance(frame, RtcSample)
        stream.add(frame, 0)
    deltas, dt = stream.take_interval(cur["ts"] / 1000, SETTINGS.bucket_s)
    assert dt is not None
    interval = derive_interval(deltas, stream, dt, SETTINGS)
    score = smoothed_quality(prev_score, interval)
    relayed = stream.relay != "direct"
    jitter = (
        stream.audio_jitter_ms if stream.audio_jitter_ms is not None else stream.video_jitter_ms
    )
    return {
        "ts": cur["ts"],
        "seconds": dt,
        "up": {"audio": interval.audio_send_bps, "video": interval.video_send_bps},
        "down": {"audio": interval.audio_recv_bps, "video": interval.video_recv_bps},
        "lossDown": interval.loss_down,
        "lossUp": interval.loss_up,
        "rtt": stream.rtt_ms,
        "jitter": jitter,
        "mos": interval.mos,
        "video": interval.video,
        "score": score,
        "level": q.level(score) if score is not None else None,
        "reasons": list(interval_reasons(stream, interval, SETTINGS)),
        "relayed": relayed,
        "relayProtocol": stream.relay.removeprefix("turn-") if relayed else None,
        "remoteRelayed": stream.remote_relayed,
    }


# -- the cases --------------------------------------------------------------------------------
# A healthy two-second interval of a direct call: 32 kbit/s of audio and 1.6 Mbit/s of video
# each way, no loss, 40 ms in the jitter buffer (48 000 samples/s), 50 ms RTT, 30 fps, FEC on.
PREV: Final[Fields] = {
    "ts": T0,
    "aob": 200_000, "aop": 5_000, "aib": 200_000, "aip": 5_000, "ail": 0, "arl": 0,
    "vob": 10_000_000, "vop": 10_000, "vib": 10_000_000, "vip": 10_000, "vil": 0, "vrl": 0,
    "ajd": 100_000.0, "aje": 2_400_000, "acs": 0, "ass": 0, "ats": 2_400_000,
    "vfd": 3_000, "vfx": 0, "vzc": 0, "vzd": 0.0, "pbs": 10_500_000, "pbr": 10_500_000,
    "rtt": 50.0, "aj": 5.0, "vj": 8.0, "vfi": 30.0, "vfo": 30.0, "bwe": 2_500_000.0,
    "qlr": "none", "fec": True, "lct": "host", "rct": "host", "pair": "p1",
}  # fmt: skip
STEP: Final[Fields] = {
    "ts": 2_000.0,
    "aob": 8_000, "aop": 100, "aib": 8_000, "aip": 100,
    "vob": 400_000, "vop": 400, "vib": 400_000, "vip": 400,
    "ajd": 3_840.0, "aje": 96_000, "ats": 96_000, "vfd": 60, "pbs": 410_000, "pbr": 410_000,
}  # fmt: skip


def after(prev: Fields, step: Fields | None = None, **fields: Any) -> Fields:
    """The sample after ``prev``: every counter of ``step`` (default ``STEP``) added, then
    ``fields`` set (None: the field absent)."""
    sample = dict(prev)
    for key, value in (STEP if step is None else step).items():
        sample[key] = sample.get(key, 0) + value
    sample.update(fields)
    return {key: value for key, value in sample.items() if value is not None}


def without(sample: Fields, *keys: str) -> Fields:
    return {key: value for key, value in sample.items() if key not in keys}


def lossy(audio_lost: int, video_lost: int, **fields: Any) -> Fields:
    """``after(PREV)`` with that many packets lost on the way in, among those expected."""
    return after(
        PREV,
        ail=audio_lost,
        aip=PREV["aip"] + STEP["aip"] - audio_lost,
        vil=video_lost,
        vip=PREV["vip"] + STEP["vip"] - video_lost,
        **fields,
    )


def bitrate_step(video_bytes: int) -> Fields:
    return {**STEP, "vib": video_bytes, "vip": video_bytes // 1000}


RELAY: Final[Fields] = {"lct": "relay", "rct": "host", "turn": "turn:127.0.0.1:3478"}
NO_AUDIO_IN: Final = ("aib", "aip", "ail", "ajd", "aje", "acs", "ass", "ats")
NO_VIDEO_IN: Final = ("vib", "vip", "vil", "vfd", "vfx", "vzc", "vzd", "vfi", "vj")

# (name, what it shows, prev, cur, previous smoothed score)
CASES: Final[tuple[tuple[str, str, Fields | None, Fields, float | None], ...]] = (
    ("first_sample", "a connection's first sample has no interval", None, PREV, None),
    ("healthy", "a healthy direct call: excellent, no reason", PREV, after(PREV), None),
    (
        "one_second",
        "the same bytes in a one-second interval: twice the bitrates",
        PREV,
        after(PREV, ts=T0 + 1_000.0),
        None,
    ),
    (
        "gauges_carried",
        "gauges absent from the sample keep the previous sample's values",
        PREV,
        without(after(PREV), "rtt", "aj", "vj", "vfi", "qlr", "fec", "lct", "rct", "pair"),
        None,
    ),
    (
        "loss_down",
        "2 % of the packets lost on the way in, all of them audio",
        PREV,
        lossy(10, 0),
        None,
    ),
    (
        "loss_down_no_fec",
        "the same loss without FEC costs more",
        PREV,
        lossy(10, 0, fec=False),
        90.0,
    ),
    ("loss_video", "10 % of video lost: the video score falls", PREV, lossy(0, 40), None),
    (
        "loss_up",
        "the peer reports 5 % of what this client sent as lost",
        PREV,
        after(PREV, arl=5, vrl=20),
        None,
    ),
    ("rtt", "an RTT of 450 ms", PREV, after(PREV, rtt=450.0), None),
    ("jitter", "40 ms of audio jitter", PREV, after(PREV, aj=40.0), None),
    (
        "video_jitter_only",
        "video jitter alone is shown but gives no reason",
        without(PREV, "aj"),
        without(after(PREV, vj=45.0), "aj"),
        None,
    ),
    ("bitrate", "video at 400 kbit/s", PREV, after(PREV, bitrate_step(100_000)), None),
    ("low_fps", "video at 15 fps: fair", PREV, after(PREV, vfi=15.0), None),
    ("cpu", "the encoder limited by CPU", PREV, after(PREV, qlr="cpu"), None),
    (
        "bandwidth_limited",
        "the encoder limited by bandwidth: a penalty, no reason",
        PREV,
        after(PREV, qlr="bandwidth"),
        None,
    ),
    (
        "freeze",
        "video frozen for 0.5 s of 2 s",
        PREV,
        after(PREV, {**STEP, "vzc": 1, "vzd": 0.5}),
        None,
    ),
    (
        "relay_udp",
        "relayed over TURN/UDP",
        {**PREV, **RELAY, "rp": "udp"},
        after(PREV, **RELAY, rp="udp"),
        None,
    ),
    (
        "relay_tcp",
        "relayed over TURN/TCP",
        {**PREV, **RELAY, "rp": "tcp"},
        after(PREV, **RELAY, rp="tcp"),
        None,
    ),
    (
        "relay_tls",
        "relayed over TURN/TLS",
        {**PREV, **RELAY, "rp": "tls"},
        after(PREV, **RELAY, rp="tls"),
        None,
    ),
    (
        "relay_without_protocol",
        "a relay candidate without relayProtocol (Firefox) counts as UDP",
        {**PREV, **RELAY},
        after(PREV, **RELAY),
        None,
    ),
    (
        "remote_relayed",
        "the peer relays, this client does not",
        {**PREV, "rct": "relay"},
        after(PREV, rct="relay"),
        None,
    ),
    (
        "relay_switch",
        "an ICE restart moves the call to TURN/TCP: a new pair, its counters from 0",
        PREV,
        after(PREV, **RELAY, rp="tcp", pair="p2", pbs=400_000, pbr=400_000),
        88.0,
    ),
    (
        "counter_reset",
        "received video and audio counters went back (a new SSRC): no rate for them",
        PREV,
        after(PREV, vib=300_000, vip=300, aib=5_000, aip=60),
        90.0,
    ),
    (
        "counter_appears",
        "video begins after the first sample: its counters count from 0",
        without(PREV, *NO_VIDEO_IN),
        {**without(after(PREV), *NO_VIDEO_IN), "vib": 400_000, "vip": 400, "vfi": 30.0},
        None,
    ),
    (
        "counter_absent",
        "received video counters absent from the sample: they count nothing",
        PREV,
        without(after(PREV), "vib", "vip"),
        None,
    ),
    (
        "nothing_received",
        "nothing received: no score, the previous one stands",
        PREV,
        {**PREV, "ts": T0 + 2_000.0},
        75.0,
    ),
    (
        "nothing_received_first",
        "nothing received and no previous score",
        PREV,
        {**PREV, "ts": T0 + 2_000.0},
        None,
    ),
    (
        "audio_only",
        "an audio-only call: the score is audio R",
        without(PREV, *NO_VIDEO_IN),
        without(after(PREV), *NO_VIDEO_IN),
        None,
    ),
    (
        "video_only",
        "a video-only call: no MOS, the score is the video score",
        without(PREV, *NO_AUDIO_IN, "aj"),
        without(after(PREV), *NO_AUDIO_IN, "aj"),
        None,
    ),
    (
        "no_jitter_buffer",
        "audio without jitter buffer counters scores with 0 ms there",
        without(PREV, "ajd", "aje"),
        without(after(PREV), "ajd", "aje"),
        None,
    ),
    ("level_good", "350 ms of RTT: good", PREV, after(PREV, rtt=350.0), None),
    (
        "level_fair",
        "3 % loss and 300 ms of RTT without FEC: fair",
        PREV,
        lossy(5, 10, rtt=300.0, fec=False),
        None,
    ),
    ("level_poor", "heavy loss: poor", PREV, lossy(10, 20, rtt=300.0, fec=False), None),
    ("level_bad", "a broken call: bad", PREV, lossy(30, 120, rtt=900.0, fec=False), None),
    (
        "smooth_falling",
        "a drop shows at once (weight 0.7)",
        PREV,
        lossy(4, 4, rtt=250.0, fec=False),
        95.0,
    ),
    ("smooth_rising", "a recovery takes time (weight 0.4)", PREV, after(PREV), 30.0),
    (
        "every_reason",
        "every reason at once, in the daemon's order",
        {**PREV, **RELAY, "rp": "tcp"},
        {
            **lossy(8, 40, rtt=500.0, aj=60.0, qlr="cpu", **RELAY, rp="tcp"),
            "vib": PREV["vib"] + 150_000,
            "vzd": 1.0,
            "vzc": 1,
        },
        60.0,
    ),
    (
        "loss_up_clamped",
        "the peer reports more lost than sent: loss up 100 %",
        PREV,
        after(PREV, arl=900),
        None,
    ),
)


def build() -> dict[str, Any]:
    """The vectors file's content."""
    return {
        "about": (
            "Golden vectors of the browser client's in-call view, computed by the daemon's "
            "code (tests/aggregate/quality_vectors.py); checked by "
            "tests/aggregate/test_quality_vectors.py and clients/browser/test/quality.test.js. "
            "Regenerate: python -m tests.aggregate.quality_vectors"
        ),
        "reasons": list(q.REASONS),
        "levels": list(q.LEVELS),
        "expected_video_bps": SETTINGS.expected_video_bps,
        "expected_fps": SETTINGS.expected_fps,
        "cases": [
            {
                "name": name,
                "description": description,
                "prev": prev,
                "cur": cur,
                "prevScore": prev_score,
                "view": view(prev, cur, prev_score),
            }
            for name, description, prev, cur, prev_score in CASES
        ],
    }


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        fresh = VECTORS.exists() and VECTORS.read_text() == text
        if not fresh:
            print(f"stale: {VECTORS}; run: python -m tests.aggregate.quality_vectors")
        return 0 if fresh else 1
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
