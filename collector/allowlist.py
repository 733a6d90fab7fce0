"""Who may send datagrams: the UDP source allowlist (``auth.udp_allow``).

``Allowlist``: addresses and networks a datagram may come from; anything else is refused as
``forbidden``. Built by ``parse_allowlist``, which names a bad entry; ``collector.config``
checks the configured list with it, ``collector.ingest.udp`` asks it about every new source.

Pure bookkeeping: no I/O; imports nothing of the daemon, so the config and ingest both can.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Verdicts remembered per source string; cleared when full (a flood of spoofed addresses costs
# one parse per new address, never unbounded memory).
_VERDICT_CACHE_MAX: Final = 65_536


class Allowlist:
    """Source addresses allowed to send; an empty list allows every source."""

    __slots__ = ("_cache", "_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks = tuple(networks)
        self._v4 = tuple(n for n in self.networks if isinstance(n, ipaddress.IPv4Network))
        self._v6 = tuple(n for n in self.networks if isinstance(n, ipaddress.IPv6Network))
        self._cache: dict[str, bool] = {}

    @property
    def active(self) -> bool:
        """Whether the list restricts anything."""
        return bool(self.networks)

    def permits(self, host: str) -> bool:
        """Whether a datagram from ``host`` (an address as ``recvfrom`` gives it) may pass."""
        verdict = self._cache.get(host)
        if verdict is None:
            verdict = self._check(host)
            if len(self._cache) >= _VERDICT_CACHE_MAX:
                self._cache.clear()
            self._cache[host] = verdict
        return verdict

    def _check(self, host: str) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(host.partition("%")[0])  # drop an IPv6 scope id
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
            if mapped is None:
                return any(address in network for network in self._v6)
            address = mapped
        return any(address in network for network in self._v4)


def parse_allowlist(entries: Iterable[str]) -> Allowlist:
    """Parse ``auth.udp_allow``: addresses (``"10.1.2.3"``, ``"::1"``) and networks
    (``"10.0.0.0/8"``). Raises ``ValueError`` naming the first bad entry — also a network
    written with host bits set (``"10.0.0.1/8"``), which is more likely a typo than a wish."""
    networks: list[IPNetwork] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"{entry!r} is not a string")
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(
                f"{entry!r} is not an IP address or network ({exc}); expected e.g. "
                "'10.1.2.3', '10.0.0.0/8' or '::1'"
            ) from None
    return Allowlist(networks)
