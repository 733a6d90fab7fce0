"""Synthetic clients for ``bwmon emit``: meetings of participants whose cumulative getStats
counters advance realistically, and HTTP routes whose request counters do.

Pure generation, no I/O: ``cli.emit`` sends what this makes. Ids are random unless the
profile has a ``seed`` (then the same on every run); every stream's first sample has ``q`` 0 and
its counters count from 0, as PROTOCOL.md §8 asks of a client. Values follow a typical call:
audio Opus at ~32 kbit/s, video at ~1.5 Mbit/s, 50 audio packets/s, 30 fps 720p, with the
configured loss, jitter and RTT scattered around their means, and a share of participants
relayed through a TURN server (some over TCP).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from protocol import HTTP_LATENCY_BOUNDS_MS, Event, HttpSample, RtcSample
from protocol.frames import CandidateType, RelayProtocol

AUDIO_BPS = 32_000
VIDEO_BPS = 1_500_000
AUDIO_PPS = 50
VIDEO_PACKET_BYTES = 1_100
SAMPLE_RATE = 48_000
FPS = 30.0


@dataclass(frozen=True, slots=True)
class Profile:
    """What the synthetic network looks like."""

    loss: float = 0.01  # fraction of packets lost, each direction
    jitter_ms: float = 15.0
    rtt_ms: float = 60.0
    relay_share: float = 0.1  # fraction of participants relayed through TURN
    seed: int | None = None  # None: random ids, new on every run


class SyntheticParticipant:
    """One participant's peer connection; ``sample`` advances its counters by ``dt`` seconds.

    Loss, jitter and RTT are drawn once per participant (with a few variants that samples
    cycle through), so that a sample costs arithmetic, not random draws: ``emit`` is also the
    load generator and must outrun the daemon on one core.
    """

    __slots__ = (
        "_dt",
        "_gauges",
        "_inc",
        "boot",
        "connection",
        "counters",
        "jbd",
        "local_candidate",
        "meeting",
        "participant",
        "relay_protocol",
        "seq",
        "turn_url",
    )

    def __init__(
        self,
        meeting: str,
        participant: str,
        rng: random.Random,
        relay: bool,
        profile: Profile,
        boot: str | None = None,
    ) -> None:
        self.meeting = meeting
        self.participant = participant
        self.connection = f"pc-{rng.getrandbits(40):010x}"
        self.boot = boot  # sent in every sample (UDP); None: the session's hello says it (ws)
        self.seq = 0  # of the next sample
        self.counters = [0] * 19
        self.jbd = 0.0
        self._dt = -1.0
        self._inc: list[int] = []
        loss = profile.loss * rng.uniform(0.5, 1.5)
        self._gauges = [
            (
                round(profile.rtt_ms * rng.uniform(0.8, 1.3), 1),
                round(profile.jitter_ms * rng.uniform(0.5, 1.5), 1),
                loss,
            )
            for _ in range(4)
        ]
        if relay:
            self.local_candidate: CandidateType = "relay"
            self.relay_protocol: RelayProtocol | None = "tcp" if rng.random() < 0.3 else "udp"
            self.turn_url: str | None = (
                f"turn:turn-{rng.randrange(3)}.example.net:3478?transport={self.relay_protocol}"
            )
        else:
            self.local_candidate = "host"
            self.relay_protocol = None
            self.turn_url = None

    def _increments(self, dt: float) -> list[int]:
        """Counter increments for an interval of ``dt`` s, in the order of ``counters``."""
        loss = self._gauges[0][2]
        audio_bytes = int(AUDIO_BPS / 8 * dt)
        audio_packets = int(AUDIO_PPS * dt)
        video_bytes = int(VIDEO_BPS / 8 * dt)
        video_packets = video_bytes // VIDEO_PACKET_BYTES
        audio_lost = round(audio_packets * loss)
        video_lost = round(video_packets * loss)
        samples = int(SAMPLE_RATE * dt)
        frames = int(FPS * dt)
        return [
            audio_bytes,  # aob
            audio_packets,  # aop
            audio_bytes - audio_lost * 80,  # aib
            audio_packets - audio_lost,  # aip
            audio_lost,  # ail
            audio_lost,  # arl
            video_bytes,  # vob
            video_packets,  # vop
            video_bytes - video_lost * VIDEO_PACKET_BYTES,  # vib
            video_packets - video_lost,  # vip
            video_lost,  # vil
            video_lost,  # vrl
            samples,  # aje
            int(samples * loss),  # acs
            samples,  # ats
            frames,  # vfd
            int(frames * loss),  # vfx
            audio_bytes + video_bytes,  # pbs
            audio_bytes + video_bytes - video_lost * VIDEO_PACKET_BYTES,  # pbr
        ]

    def sample(self, now_ms: float, dt: float) -> RtcSample:
        if dt != self._dt:
            self._dt, self._inc = dt, self._increments(dt)
        c = self.counters
        for i, inc in enumerate(self._inc):
            c[i] += inc
        seq, self.seq = self.seq, self.seq + 1
        rtt, jitter, _loss = self._gauges[seq & 3]
        self.jbd += self._inc[12] * (jitter * 2 + 20) / 1000
        return RtcSample(
            meeting=self.meeting,
            participant=self.participant,
            connection=self.connection,
            seq=seq,
            client_ts=now_ms,
            audio_bytes_sent=c[0],
            audio_packets_sent=c[1],
            audio_bytes_received=c[2],
            audio_packets_received=c[3],
            audio_packets_lost=c[4],
            audio_remote_packets_lost=c[5],
            video_bytes_sent=c[6],
            video_packets_sent=c[7],
            video_bytes_received=c[8],
            video_packets_received=c[9],
            video_packets_lost=c[10],
            video_remote_packets_lost=c[11],
            jitter_buffer_delay_s=round(self.jbd, 3),
            jitter_buffer_emitted=c[12],
            concealed_samples=c[13],
            total_samples_received=c[14],
            frames_decoded=c[15],
            frames_dropped=c[16],
            pair_bytes_sent=c[17],
            pair_bytes_received=c[18],
            rtt_ms=rtt,
            audio_jitter_ms=jitter,
            fps_in=FPS,
            fps_out=FPS,
            width_in=1280,
            height_in=720,
            width_out=1280,
            height_out=720,
            available_outgoing_bps=2_500_000.0,
            limitation="none",
            local_candidate=self.local_candidate,
            remote_candidate="host",
            relay_protocol=self.relay_protocol,
            turn_url=self.turn_url,
            boot=self.boot,
        )

    def join(self, now_ms: float) -> Event:
        return Event(
            meeting=self.meeting,
            participant=self.participant,
            kind="join",
            client_ts=now_ms,
            connection=self.connection,
        )


class SyntheticRoute:
    """One HTTP route of one synthetic server process."""

    __slots__ = (
        "boot",
        "bytes_in",
        "bytes_out",
        "hist",
        "latency_sum",
        "method",
        "requests",
        "route",
        "seq",
        "status",
    )

    def __init__(self, route: str, method: str, boot: str) -> None:
        self.route = route
        self.method = method
        self.boot = boot
        self.seq = 0  # of the next sample
        self.requests = self.bytes_in = self.bytes_out = 0
        self.latency_sum = 0.0
        self.status = [0] * 5
        self.hist = [0] * (len(HTTP_LATENCY_BOUNDS_MS) + 1)

    def sample(
        self, now_ms: float, dt: float, rng: random.Random, service: str, instance: str
    ) -> HttpSample:
        for _ in range(max(1, int(50 * dt))):
            latency = rng.lognormvariate(3.5, 0.8)  # median ~33 ms
            self.requests += 1
            self.bytes_in += rng.randrange(200, 2_000)
            self.bytes_out += rng.randrange(500, 50_000)
            self.latency_sum += latency
            self.status[1 if rng.random() > 0.02 else 4] += 1
            bucket = next(
                (i for i, b in enumerate(HTTP_LATENCY_BOUNDS_MS) if latency <= b),
                len(HTTP_LATENCY_BOUNDS_MS),
            )
            self.hist[bucket] += 1
        seq, self.seq = self.seq, self.seq + 1
        return HttpSample(
            service=service,
            instance=instance,
            boot=self.boot,
            route=self.route,
            method=self.method,
            seq=seq,
            client_ts=now_ms,
            requests=self.requests,
            status=list(self.status),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            latency_hist=list(self.hist),
            latency_sum_ms=round(self.latency_sum, 3),
        )


def make_participants(
    meetings: int, per_meeting: int, profile: Profile, boot: str | None = None
) -> list[SyntheticParticipant]:
    """``meetings`` meetings of ``per_meeting`` participants, one connection each; ``boot``:
    the emitter's boot nonce, to send in every sample (None: not sent)."""
    rng = random.Random(profile.seed)
    run = f"{rng.getrandbits(24):06x}"
    return [
        SyntheticParticipant(
            f"m-{run}-{m}", f"p-{m}-{p}", rng, rng.random() < profile.relay_share, profile, boot
        )
        for m in range(meetings)
        for p in range(per_meeting)
    ]


ROUTE_TEMPLATES = (
    "/v1/items",
    "/v1/items/{id}",
    "/v1/users/{id}",
    "/v1/search",
    "/healthz",
    "/v1/meetings/{id}/join",
    "/v1/upload",
    "/v1/reports/{id}",
)


def make_routes(count: int, boot: str) -> list[SyntheticRoute]:
    """``count`` routes of one server process whose boot nonce is ``boot``."""
    return [
        SyntheticRoute(
            ROUTE_TEMPLATES[i % len(ROUTE_TEMPLATES)]
            + ("" if i < len(ROUTE_TEMPLATES) else f"/{i}"),
            "POST" if i % 3 == 2 else "GET",
            boot,
        )
        for i in range(count)
    ]
