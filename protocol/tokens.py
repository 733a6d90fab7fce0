"""Access tokens (PROTOCOL.md §13): signed, scoped, expiring; minted by an application backend
or ``bwmon token mint``, checked by the daemon on ``/ingest``, ``/subscribe`` and ``/api``.

A token is three dot-separated parts::

    bwm1.<claims>.<signature>

``claims`` is the base64url (no padding) of a compact JSON object — ``rights`` (``ingest``
and/or ``read``), ``meeting`` (absent: every meeting) and ``exp`` (Unix seconds) — and
``signature`` the base64url of HMAC-SHA256 over ``bwm1.<claims>`` with a key the daemon holds
(``auth.token_secrets``). Anyone holding the key can mint; nobody else can change a claim.

Imports nothing but msgspec and the standard library, so backends in Python can mint tokens
without the daemon's dependencies (and the format is small enough to mint in any language).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Annotated, Final, Literal, TypeAlias

import msgspec
from msgspec import Meta

from protocol.errors import BwmonError
from protocol.frames import MAX_ID_CHARS

PREFIX: Final = "bwm1"
MAX_TOKEN_CHARS: Final = 4096
MAX_TTL_S: Final = 366 * 86_400
Right: TypeAlias = Literal["ingest", "read"]
RIGHTS: Final[tuple[Right, ...]] = ("ingest", "read")


class Claims(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """What a token allows: ``rights`` on ``meeting`` (None: every meeting) until ``exp``."""

    rights: Annotated[list[Right], Meta(min_length=1, max_length=2)]
    exp: Annotated[int, Meta(ge=0, le=2**53 - 1)]
    meeting: Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)] | None = None

    def allows(self, right: Right, meeting: str | None) -> bool:
        """Whether the token grants ``right`` on ``meeting`` (None: on every meeting)."""
        return right in self.rights and (self.meeting is None or self.meeting == meeting)


class TokenError(BwmonError):
    """The token cannot be used. ``reason``: ``malformed``, ``bad_signature`` or ``expired``.

    The message never repeats the token."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


_encode_claims = msgspec.json.Encoder()
_decode_claims = msgspec.json.Decoder(Claims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _sign(key: str, signed: str) -> bytes:
    return hmac.digest(key.encode(), signed.encode("ascii"), hashlib.sha256)


def mint(key: str, claims: Claims) -> str:
    """A token carrying ``claims``, signed with ``key``."""
    signed = f"{PREFIX}.{_b64(_encode_claims.encode(claims))}"
    return f"{signed}.{_b64(_sign(key, signed))}"


def verify(keys: Sequence[str], token: str, now: float) -> Claims:
    """The claims of ``token`` if one of ``keys`` signed it and it has not expired; else
    ``TokenError``."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise TokenError("malformed", "not a bwmon token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError("malformed", "not a bwmon token")
    signed = f"{parts[0]}.{parts[1]}"
    try:
        signature = _unb64(parts[2])
    except (binascii.Error, ValueError):
        raise TokenError("malformed", "signature is not base64url") from None
    if not any(hmac.compare_digest(_sign(key, signed), signature) for key in keys):
        raise TokenError("bad_signature", "token not signed by a key of this daemon")
    try:
        claims = _decode_claims.decode(_unb64(parts[1]))
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise TokenError("malformed", f"bad claims: {str(exc)[:100]}") from None
    if claims.exp <= now:
        raise TokenError("expired", "token expired")
    return claims
