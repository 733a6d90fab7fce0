"""Access tokens and the bind rule: minting and verifying (with hypothesis: nothing but a
token one of the keys signed verifies, and garbage never raises anything but TokenError),
rights and meeting scopes, expiry, and ingest sessions refused without a good token."""

from __future__ import annotations

import time

import msgspec
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from collector.auth import (
    OPEN,
    Auth,
    Denied,
    UnsafeBind,
    bearer,
    bind_warning,
    check_bind,
    is_loopback,
)
from collector.config import AuthConfig, ConfigError
from protocol import encode_json
from protocol.frames import Hello, RtcSample
from protocol.session import Ack, ErrorReply, Welcome
from protocol.tokens import Claims, TokenError, mint, verify
from tests.collector.test_http_ws import close_code, next_reply, open_ws, start_server
from tests.helpers import http_sample, rtc, wait_for

KEY = "k" * 32
OTHER_KEY = "o" * 32
LATER = int(time.time()) + 3600


def claims(*rights: str, meeting: str | None = None, exp: int = LATER) -> Claims:
    return msgspec.convert({"rights": list(rights), "exp": exp, "meeting": meeting}, Claims)


def test_minted_token_verifies_with_any_of_the_keys() -> None:
    token = mint(KEY, claims("read", meeting="m1"))
    assert token.startswith("bwm1.")
    assert verify([OTHER_KEY, KEY], token, time.time()) == claims("read", meeting="m1")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (mint(OTHER_KEY, claims("read")), "bad_signature"),
        (mint(KEY, claims("read", exp=1000)), "expired"),
        ("bwm1.e30", "malformed"),
        ("bwm2." + mint(KEY, claims("read")).partition(".")[2], "malformed"),
        ("bwm1.e30.!!!", "malformed"),
        ("x" * 5000, "malformed"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token: str, reason: str) -> None:
    with pytest.raises(TokenError) as refused:
        verify([KEY], token, time.time())
    assert refused.value.reason == reason
    assert token not in str(refused.value)


def test_a_changed_claim_breaks_the_signature() -> None:
    prefix, _claims, signature = mint(KEY, claims("read", meeting="m1")).split(".")
    forged = msgspec.json.encode(claims("read", "ingest"))
    import base64

    forged_part = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    with pytest.raises(TokenError) as refused:
        verify([KEY], f"{prefix}.{forged_part}.{signature}", time.time())
    assert refused.value.reason == "bad_signature"


@given(st.text(max_size=300))
def test_verify_never_raises_anything_else(text: str) -> None:
    try:
        verify([KEY], text, time.time())
    except TokenError:
        pass
    else:
        pytest.fail("garbage verified")


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=200))
def test_verify_of_token_shaped_garbage_never_raises_anything_else(text: str) -> None:
    with pytest.raises(TokenError):
        verify([KEY], "bwm1." + text, time.time())


def test_signed_claims_that_do_not_fit_the_schema_are_malformed() -> None:
    import base64
    import hashlib
    import hmac

    body = base64.urlsafe_b64encode(b'{"rights":["admin"],"exp":99999999999}').rstrip(b"=")
    signed = b"bwm1." + body
    sig = base64.urlsafe_b64encode(hmac.digest(KEY.encode(), signed, hashlib.sha256))
    with pytest.raises(TokenError) as refused:
        verify([KEY], (signed + b"." + sig.rstrip(b"=")).decode(), time.time())
    assert refused.value.reason == "malformed"


def test_auth_without_keys_admits_everyone() -> None:
    auth = Auth([])
    assert not auth.required
    assert auth.admit(None, "read") is OPEN
    assert auth.check(OPEN, "read", "any meeting") is None


def test_auth_admit_and_check_scopes() -> None:
    auth = Auth([KEY])
    assert auth.admit(None, "read") == Denied("unauthorized", "a token is required")
    refused = auth.admit(mint(KEY, claims("ingest")), "read")
    assert isinstance(refused, Denied)
    assert refused.status == 403
    expired = auth.admit(mint(KEY, claims("read", exp=5)), "read")
    assert isinstance(expired, Denied)
    assert expired.status == 401
    scoped = auth.admit(mint(KEY, claims("read", meeting="m1")), "read")
    assert isinstance(scoped, Claims)
    assert auth.check(scoped, "read", "m1") is None
    other = auth.check(scoped, "read", "m2")
    assert isinstance(other, Denied)
    assert other.code == "forbidden"
    everything = auth.check(scoped, "read", None)
    assert isinstance(everything, Denied)
    assert everything.code == "forbidden"
    lapsed = auth.check(claims("read", exp=int(time.time()) - 1), "read", None)
    assert isinstance(lapsed, Denied)
    assert lapsed.code == "unauthorized"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_bind_needs_tokens_and_a_udp_guard() -> None:
    check_bind("127.0.0.1", AuthConfig())
    check_bind("0.0.0.0", AuthConfig(token_secrets=[KEY], udp_keys=[OTHER_KEY]))
    check_bind("0.0.0.0", AuthConfig(token_secrets=[KEY], udp_allow=["10.0.0.0/8"]))
    check_bind("0.0.0.0", AuthConfig(allow_unauthenticated=True))
    with pytest.raises(UnsafeBind) as refused:
        check_bind("0.0.0.0", AuthConfig())
    message = str(refused.value)
    assert "auth.token_secrets" in message
    assert "auth.udp_allow or auth.udp_keys" in message
    with pytest.raises(UnsafeBind, match=r"auth\.udp_allow") as only_udp:
        check_bind("0.0.0.0", AuthConfig(token_secrets=[KEY]))
    assert "token_secrets" not in str(only_udp.value)


def test_weak_keys_from_the_environment_count_for_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``BWMON_TOKEN_SECRETS`` and ``BWMON_UDP_KEYS`` meet the file's length rule: a weak key
    is a configuration error wherever the daemon listens, never a guard for a public port."""
    monkeypatch.setenv("BWMON_TOKEN_SECRETS", "weak-1")
    monkeypatch.setenv("BWMON_UDP_KEYS", KEY)
    for host in ("0.0.0.0", "127.0.0.1"):
        with pytest.raises(ConfigError) as caught:
            check_bind(host, AuthConfig())
        assert str(caught.value) == (
            "BWMON_TOKEN_SECRETS[0] (environment): 6 characters, at least 32 required"
        )
    monkeypatch.setenv("BWMON_TOKEN_SECRETS", KEY)
    monkeypatch.setenv("BWMON_UDP_KEYS", f"{OTHER_KEY},weak-2")
    with pytest.raises(ConfigError, match=r"^BWMON_UDP_KEYS\[1\] \(environment\): 6 char"):
        check_bind("0.0.0.0", AuthConfig())
    monkeypatch.setenv("BWMON_UDP_KEYS", OTHER_KEY)
    check_bind("0.0.0.0", AuthConfig())  # strong keys from the environment guard it


def test_allow_unauthenticated_beyond_loopback_starts_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BWMON_TOKEN_SECRETS", raising=False)
    monkeypatch.delenv("BWMON_UDP_KEYS", raising=False)
    anyone = AuthConfig(allow_unauthenticated=True)
    check_bind("0.0.0.0", anyone)  # allowed...
    warning = bind_warning("0.0.0.0", anyone)  # ...and said
    assert warning is not None
    assert warning.startswith("listening on 0.0.0.0 without authentication")
    assert "/ingest, /subscribe and /api take no token" in warning
    assert "UDP frames are taken from any address" in warning
    only_udp = bind_warning("10.0.0.5", AuthConfig(allow_unauthenticated=True, token_secrets=[KEY]))
    assert only_udp is not None
    assert "take no token" not in only_udp
    assert "auth.udp_allow or auth.udp_keys" in only_udp
    assert bind_warning("127.0.0.1", anyone) is None
    assert bind_warning("0.0.0.0", AuthConfig()) is None  # refused by check_bind instead
    guarded = AuthConfig(allow_unauthenticated=True, token_secrets=[KEY], udp_keys=[OTHER_KEY])
    assert bind_warning("0.0.0.0", guarded) is None


async def _hello_with(token: str | None) -> bytes:
    return encode_json(Hello(boot="b", kind="other", agent="tests", token=token))


async def test_ingest_session_needs_a_token_with_the_ingest_right(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, auth=Auth([KEY]))
    refused = [
        None,
        mint(OTHER_KEY, claims("ingest")),
        mint(KEY, claims("ingest", exp=10)),
        mint(KEY, claims("read")),
    ]
    for token in refused:
        async with open_ws(server.url("/ingest")) as ws:
            await ws.send_message((await _hello_with(token)).decode())
            assert await close_code(ws) == 1008
    assert server.counters.rejected_by_reason == {"unauthorized": 3, "forbidden": 1}
    async with open_ws(server.url("/ingest")) as ws:
        await ws.send_message((await _hello_with(mint(KEY, claims("ingest")))).decode())
        assert isinstance(await next_reply(ws), Welcome)
        await ws.send_message(encode_json(rtc(1)).decode())
        await wait_for(lambda: server.counters.frames_accepted == 1)


async def test_a_meeting_ingest_token_sends_that_meeting_only(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, auth=Auth([KEY]))
    async with open_ws(server.url("/ingest")) as ws:
        hello = await _hello_with(mint(KEY, claims("ingest", meeting="m1")))
        await ws.send_message(hello.decode())
        assert isinstance(await next_reply(ws), Welcome)
        batch = b"[%s,%s,%s]" % (
            encode_json(rtc(1, "m1")),
            encode_json(rtc(1, "m2")),
            encode_json(http_sample()),
        )
        await ws.send_message(batch.decode())
        await ws.send_message(encode_json(rtc(2, "m2")).decode())  # a single frame: whole
        replies = [await next_reply(ws) for _ in range(4)]
    errors = [(r.msg, r.index, r.reason) for r in replies if isinstance(r, ErrorReply)]
    assert errors == [(1, 1, "forbidden"), (1, 2, "forbidden"), (2, None, "forbidden")]
    assert Ack(msg=2, accepted=1, rejected=3) in replies
    frames, _boot = server.frames.receive_nowait()
    assert [(f.meeting, f.seq) for f in frames if isinstance(f, RtcSample)] == [("m1", 1)]
    assert server.counters.rejected_by_reason == {"forbidden": 3}
    assert server.counters.frames_accepted == 1
