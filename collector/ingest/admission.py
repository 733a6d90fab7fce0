"""Who may send frames and how fast, UDP and WebSocket ingest together: the objects both
transports read as they go, configured from ``auth.udp_*`` and ``[limits]`` at start and again,
in place, on each reload, so that tracked sources keep what they have spent.

No I/O: ``configure`` only sets values (loading the configuration checked them).
"""

from __future__ import annotations

from collector.allowlist import parse_allowlist
from collector.config import AuthConfig, LimitsConfig
from collector.ingest.limits import Rate, SourceLimiter
from collector.ingest.udp import UdpAdmission


class Admission:
    """``source_limiter``: per source address, UDP and WebSocket together; ``connection_rate``:
    per WebSocket connection; ``udp``: the UDP loop's allowlist and signing keys (and the
    source limiter)."""

    def __init__(self, auth: AuthConfig, limits: LimitsConfig) -> None:
        self.source_limiter = SourceLimiter(max_sources=limits.max_tracked_sources)
        self.connection_rate = Rate()
        self.udp = UdpAdmission(limiter=self.source_limiter)
        self.configure(auth, limits)

    def configure(self, auth: AuthConfig, limits: LimitsConfig) -> None:
        """Put ``auth.udp_*`` and ``limits`` in force (at start and on reload). Tracked
        sources keep what they have spent."""
        allowlist = parse_allowlist(auth.udp_allow)  # valid: loading checked it
        self.udp.allowlist = allowlist if allowlist.active else None
        self.udp.keys = tuple(key.encode() for key in auth.datagram_keys())
        self.udp.max_age_s = auth.udp_signature_max_age_s
        self.source_limiter.configure(
            limits.source_frames_per_s, limits.source_burst_frames, limits.max_tracked_sources
        )
        self.connection_rate.configure(
            limits.connection_frames_per_s, limits.connection_burst_frames
        )
