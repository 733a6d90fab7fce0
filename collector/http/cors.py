"""CORS for the configured origins (``server.cors_origins``): a dashboard served from another
origin may call ``/api`` with a read token.

Only paths under ``/api/`` are open this way: the health and metrics endpoints are for probes
and scrapers, which are not browsers. A request whose ``Origin`` is listed gets
``access-control-allow-origin`` with that origin (``*`` when the list holds ``"*"``: no
cookies are ever used, the token travels in ``authorization``, so a wildcard that refuses
credentials is enough); any other origin gets no CORS header, and its browser keeps the answer
from the page. The answer depends on ``Origin``, so it says ``vary: origin``.

A preflight (``OPTIONS`` with ``Origin`` and ``access-control-request-method``) from a listed
origin is answered 204 with what a cross-origin ``GET`` may carry; from any other origin 403,
so that an operator reading the network log sees why the call was refused. These headers are
added by the server to the route's answer as the always-open CORS of ``PostRoute`` is
(``collector.http.server``).
"""

from __future__ import annotations

from collections.abc import Sequence

SCOPE_PREFIX = "/api/"
# What a page may read beyond the CORS-safelisted headers: the export's file name and the
# challenge of a 401.
_EXPOSED = ("access-control-expose-headers", "content-disposition, www-authenticate")
_PREFLIGHT = (
    ("access-control-allow-methods", "GET, HEAD"),
    ("access-control-allow-headers", "authorization"),
    ("access-control-max-age", "7200"),  # Chromium caps it at two hours
)
_VARY = ("vary", "origin")


def in_scope(path: str) -> bool:
    return path.startswith(SCOPE_PREFIX)


def allowed_origin(origins: Sequence[str], origin: str | None) -> str | None:
    """The ``access-control-allow-origin`` value for a request's ``Origin``, or None."""
    if origin is None:
        return None
    if origin in origins:
        return origin
    return "*" if "*" in origins else None


def response_headers(origins: Sequence[str], origin: str | None) -> list[tuple[str, str]]:
    """The CORS headers of an answer in scope to a request from ``origin``."""
    if not origins:
        return []
    allowed = allowed_origin(origins, origin)
    if allowed is None:
        return [_VARY]
    return [("access-control-allow-origin", allowed), _EXPOSED, _VARY]


def preflight_headers(origins: Sequence[str], origin: str) -> list[tuple[str, str]] | None:
    """The headers of the 204 that answers a preflight from ``origin``, or None when that
    origin is not listed (answered 403)."""
    allowed = allowed_origin(origins, origin)
    if allowed is None:
        return None
    return [("access-control-allow-origin", allowed), *_PREFLIGHT, _VARY]
