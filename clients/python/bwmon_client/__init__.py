"""bwmon's client for Python application servers: per-route bandwidth and latency of HTTP.

``Emitter`` counts requests per (route, method) and sends them to a bwmon daemon from a thread;
``bwmon_client.asgi.BwmonMiddleware`` (ASGI) and ``bwmon_client.wsgi`` (WSGI) feed it. One
emitter per process is the rule: ``configure`` makes it, ``emitter`` returns it.

Imports only the standard library, msgspec and the protocol modules it ships
(clients/README.md says how).
"""

from __future__ import annotations

import os
import threading

from bwmon_client.process_emitter import (
    DEFAULT_URL,
    OTHER_METHOD,
    OVERFLOW_ROUTE,
    UNMATCHED_ROUTE,
    Emitter,
)

__all__ = [
    "DEFAULT_URL",
    "OTHER_METHOD",
    "OVERFLOW_ROUTE",
    "UNMATCHED_ROUTE",
    "Emitter",
    "configure",
    "emitter",
]

__version__ = "0.1.0"

_lock = threading.RLock()
_emitter: Emitter | None = None


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # another thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(
    service: str,
    *,
    url: str | None = None,
    instance: str | None = None,
    interval_s: float = 10.0,
    max_routes: int = 2000,
    token: str | None = None,
    udp_key: str | None = None,
) -> Emitter:
    """Make the process's emitter (closing the one before, if any) and return it. ``url``
    defaults to ``$BWMON_URL``, else ``udp://127.0.0.1:8470``; ``token`` to ``$BWMON_TOKEN``,
    ``udp_key`` to ``$BWMON_UDP_KEY``."""
    global _emitter
    made = Emitter(
        service,
        url=url or os.environ.get("BWMON_URL") or DEFAULT_URL,
        instance=instance,
        interval_s=interval_s,
        max_routes=max_routes,
        token=token if token is not None else os.environ.get("BWMON_TOKEN"),
        udp_key=udp_key if udp_key is not None else os.environ.get("BWMON_UDP_KEY"),
    )
    with _lock:
        previous, _emitter = _emitter, made
        if previous is not None:
            previous.close()
    return made


def emitter(
    service: str | None = None,
    *,
    url: str | None = None,
    instance: str | None = None,
    interval_s: float = 10.0,
    max_routes: int = 2000,
    token: str | None = None,
    udp_key: str | None = None,
) -> Emitter:
    """The process's emitter, made on first use by ``configure`` with these arguments
    (``service`` defaults to ``$BWMON_SERVICE``); later calls return the same one, whatever
    their arguments."""
    with _lock:
        if _emitter is not None:
            return _emitter
        name = service or os.environ.get("BWMON_SERVICE")
        if not name:
            raise ValueError("no service name: pass service= or set BWMON_SERVICE")
        return configure(
            name,
            url=url,
            instance=instance,
            interval_s=interval_s,
            max_routes=max_routes,
            token=token,
            udp_key=udp_key,
        )
