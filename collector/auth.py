"""Who may do what: access tokens on ``/ingest``, ``/subscribe`` and ``/api``, the start-up
rule that keeps an unauthenticated daemon on loopback, and the warning when the operator lifts
it (``auth.allow_unauthenticated``). ``check_startup`` runs that rule with the others a
configuration must meet to start a daemon beyond what loading the file checked.

``Auth`` holds the verification keys of one configuration; a reload builds a new one and the
daemon swaps it in, so every check reads the current keys (sessions keep the claims they were
admitted with until those expire). The token format is ``protocol.tokens``.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Final

from collector.config import AuthConfig, Config, ConfigError
from protocol.tokens import Claims, Right, TokenError, verify

UNAUTHORIZED: Final = "unauthorized"
FORBIDDEN: Final = "forbidden"

# Claims granted when no token keys are configured (loopback, or allow_unauthenticated).
OPEN: Final = Claims(rights=["ingest", "read"], exp=2**53 - 1)


@dataclass(frozen=True, slots=True)
class Denied:
    """A refused request: ``code`` is ``unauthorized`` (no usable token: 401) or ``forbidden``
    (a valid token without the right or the scope: 403); ``detail`` never holds the token."""

    code: str
    detail: str

    @property
    def status(self) -> int:
        return 401 if self.code == UNAUTHORIZED else 403


class Auth:
    """The token keys in force; empty keys mean every request is allowed."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = list(keys)

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def admit(self, token: str | None, right: Right) -> Claims | Denied:
        """The claims of ``token`` if it is valid and grants ``right`` (on some meeting)."""
        if not self.keys:
            return OPEN
        if not token:
            return Denied(UNAUTHORIZED, "a token is required")
        try:
            claims = verify(self.keys, token, time.time())
        except TokenError as exc:
            return Denied(UNAUTHORIZED, f"token refused: {exc}")
        if right not in claims.rights:
            return Denied(FORBIDDEN, f"the token does not grant {right!r}")
        return claims

    def check(self, claims: Claims, right: Right, meeting: str | None) -> Denied | None:
        """None when ``claims`` grant ``right`` on ``meeting`` (None: on every meeting) and
        have not expired since they were admitted."""
        if claims.exp <= time.time():
            return Denied(UNAUTHORIZED, "token expired")
        if not claims.allows(right, meeting):
            scope = f"meeting {claims.meeting!r}" if claims.meeting else "no meeting"
            return Denied(FORBIDDEN, f"the token is limited to {scope}")
        return None


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the daemon reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UnsafeBind(ConfigError):
    """The daemon would listen beyond loopback without authentication: a configuration error
    (``bwmon serve`` and ``bwmon check-config`` exit 2 on it)."""


# What each unset guard leaves open, by the keys ``_unguarded`` names.
_TOKENS: Final = "auth.token_secrets (or BWMON_TOKEN_SECRETS)"
_UDP_GUARD: Final = "auth.udp_allow or auth.udp_keys (or BWMON_UDP_KEYS)"
_OPEN: Final = {
    _TOKENS: "/ingest, /subscribe and /api take no token",
    _UDP_GUARD: "UDP frames are taken from any address",
}


def _unguarded(auth: AuthConfig) -> list[str]:
    """The guards ``auth`` leaves unset, as the keys to set (``ConfigError`` for a key of
    ``BWMON_TOKEN_SECRETS``/``BWMON_UDP_KEYS`` that breaks the length rule)."""
    missing = []
    if not auth.secrets():
        missing.append(_TOKENS)
    if not (auth.udp_allow or auth.datagram_keys()):
        missing.append(_UDP_GUARD)
    return missing


def check_bind(host: str, auth: AuthConfig) -> None:
    """Refuse a non-loopback ``host`` unless tokens and a UDP guard (allowlist or signing
    keys) are configured, or the operator said ``auth.allow_unauthenticated = true``. Raises
    ``ConfigError`` also for a key of ``BWMON_TOKEN_SECRETS``/``BWMON_UDP_KEYS`` that breaks
    the length rule, wherever the daemon listens."""
    missing = _unguarded(auth)
    if not missing or is_loopback(host) or auth.allow_unauthenticated:
        return
    raise UnsafeBind(
        f"refusing to listen on {host} without authentication: set "
        + " and ".join(missing)
        + ", or set auth.allow_unauthenticated = true to accept anyone who can reach "
        "the port (see docs/CONFIG.md [auth])"
    )


def bind_warning(host: str, auth: AuthConfig) -> str | None:
    """The warning for a non-loopback ``host`` that ``auth.allow_unauthenticated = true`` lets
    go without some authentication (``check_bind`` passes it), or None."""
    if is_loopback(host) or not auth.allow_unauthenticated:
        return None
    missing = _unguarded(auth)
    if not missing:
        return None
    return (
        f"listening on {host} without authentication (auth.allow_unauthenticated = true): "
        + "; ".join(_OPEN[guard] for guard in missing)
        + ". Unless only trusted hosts can reach the port, set "
        + " and ".join(missing)
    )


def check_startup(config: Config) -> None:
    """The rules a configuration must meet to run a daemon, beyond what loading the file checked:
    they depend on the environment (``BWMON_*`` secrets) and on command-line overrides. ``serve``
    runs them before it binds a port and ``bwmon check-config`` runs them too, so a
    configuration check-config accepts is one the daemon starts on. Raises ``ConfigError``
    (``UnsafeBind`` is one; a ``BWMON_TOKEN_SECRETS`` or ``BWMON_UDP_KEYS`` key that breaks the
    file's length rule is another); never does I/O. What it allows but an operator must know,
    ``auth.allow_unauthenticated`` beyond loopback, is ``bind_warning``: ``serve`` logs it
    (``listening_unauthenticated``) and check-config prints it."""
    check_bind(config.server.host, config.auth)
    config.fanout.check_redis_url()
