"""A census of the live participants for ``/metrics``: how many per quality level, per relay
protocol, per meeting level, and the values of their last tick interval.

One pass over the engine's participants, in steps (``census_steps`` yields after about
``participants_per_step`` participants, so that the daemon lets ingest run between steps, as
``Engine.tick_steps`` does). A participant's values are those of its last tick interval if it
is one of the last ``recent_buckets`` ticks, read from its streams' live rings in the rings' own
fixed-point steps (``rtc.RING_SCALE``: no float is made per value), the worst of its
connections: the highest loss (of both directions), RTT and jitter, the lowest MOS; the bitrates
of all its connections summed. A participant counts as relayed by its most constrained relay
(TLS, then TCP, then UDP).

Compiled with mypyc (protocol/build.py): at 20,000 participants a pass in plain Python costs
about as much CPU as the ingest it would delay. Pure: reads the engine, no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Final

from collector.aggregate import quality as q
from collector.aggregate.engine import Engine
from collector.aggregate.rtc import N_RING, NO_DATA

LEVELS: Final = (*q.LEVELS, "unknown")  # unknown: no quality measured yet
PROTOCOLS: Final = ("udp", "tcp", "tls")
_RELAY_RANK: Final = {"direct": 0, "turn-udp": 1, "turn-tcp": 2, "turn-tls": 3}
# Ring fields (rtc.RING_FIELDS order).
_SEND, _RECV, _LOSS_DOWN, _LOSS_UP, _RTT, _JITTER, _MOS = 0, 1, 2, 3, 4, 5, 6


class Census:
    """What a pass counted. The ``*_steps`` lists hold one value per participant that had
    it, in ring steps; ``up_steps``, ``down_steps`` are sums of kbit/s steps."""

    def __init__(self) -> None:
        self.participants: dict[str, int] = dict.fromkeys(LEVELS, 0)
        self.meetings: dict[str, int] = dict.fromkeys(LEVELS, 0)
        self.relayed: dict[str, int] = dict.fromkeys(PROTOCOLS, 0)
        self.up_steps = 0
        self.down_steps = 0
        self.mos_steps: list[int] = []
        self.rtt_steps: list[int] = []
        self.loss_steps: list[int] = []
        self.jitter_steps: list[int] = []


def census_steps(
    engine: Engine, now: float, recent_buckets: int = 5, participants_per_step: int = 2_000
) -> Generator[None, None, Census]:
    """The census of ``engine`` at daemon time ``now``, in steps; returns it. Meetings that end
    between two steps are counted as they were when the pass reached them."""
    census = Census()
    first = int(now // engine.settings.bucket_s) - recent_buckets + 1
    window = engine.settings.window_buckets
    levels = census.participants
    relayed = census.relayed
    mos_steps, rtt_steps = census.mos_steps, census.rtt_steps
    loss_steps, jitter_steps = census.loss_steps, census.jitter_steps
    up_steps = down_steps = 0
    done = 0
    for meeting in list(engine.meetings.values()):
        worst: float | None = None
        for participant in meeting.participants.values():
            quality = participant.quality
            level = participant.level
            levels["unknown" if level is None else level] += 1
            if quality is not None and (worst is None or quality < worst):
                worst = quality
            loss = rtt = jitter = mos = -1
            rank = 0
            for stream in participant.streams.values():
                if stream.relay != "direct":
                    rank = max(rank, _RELAY_RANK.get(stream.relay, 0))
                bucket = stream.ring_bucket
                if bucket < first:
                    continue  # nothing in the last ticks
                ring = stream.ring
                at = (bucket % window) * N_RING
                value = ring[at + _SEND]
                if value != NO_DATA:
                    up_steps += value
                value = ring[at + _RECV]
                if value != NO_DATA:
                    down_steps += value
                value = ring[at + _LOSS_DOWN]
                if value != NO_DATA and value > loss:
                    loss = value
                value = ring[at + _LOSS_UP]
                if value != NO_DATA and value > loss:
                    loss = value
                value = ring[at + _RTT]
                if value != NO_DATA and value > rtt:
                    rtt = value
                value = ring[at + _JITTER]
                if value != NO_DATA and value > jitter:
                    jitter = value
                value = ring[at + _MOS]
                if value != NO_DATA and (mos < 0 or value < mos):
                    mos = value
            if rank:
                relayed[PROTOCOLS[rank - 1]] += 1
            if mos >= 0:
                mos_steps.append(mos)
            if rtt >= 0:
                rtt_steps.append(rtt)
            if loss >= 0:
                loss_steps.append(loss)
            if jitter >= 0:
                jitter_steps.append(jitter)
        census.meetings["unknown" if worst is None else q.level(worst)] += 1
        done += len(meeting.participants)
        if done >= participants_per_step:
            done = 0
            yield
    census.up_steps, census.down_steps = up_steps, down_steps
    return census
