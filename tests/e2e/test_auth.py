"""Authentication on the real daemon process: wrong, expired and out-of-scope tokens are
refused on ``/ingest``, ``/subscribe`` and ``/api``; a meeting-scoped token reads its meeting
and no other; no log line (at debug level) holds a token or a key; and a daemon asked to listen
beyond loopback without authentication refuses to start and says what to set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from cli.daemon_process import DaemonProcess, running_daemon
from cli.main import EXIT_CONFIG
from protocol import encode_msgpack
from protocol.frames import Hello
from protocol.subscribe import Snapshot, SubscribeError, server_json_decoder
from protocol.tokens import Claims, mint
from tests.helpers import rtc

pytestmark = pytest.mark.e2e

KEY = "e2e-token-key-" + "x" * 24
OTHER_KEY = "someone-elses-key-" + "y" * 20


def token(*rights: str, meeting: str | None = None, ttl_s: float = 600, key: str = KEY) -> str:
    exp = int(time.time() + ttl_s)
    return mint(key, Claims(rights=list(rights), exp=exp, meeting=meeting))  # type: ignore[arg-type]


def http(daemon: DaemonProcess, target: str, bearer: str | None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}{target}")
    if bearer is not None:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


async def ingest(daemon: DaemonProcess, hello_token: str | None) -> int | None:
    """Open ``/ingest`` with this hello; the close code, or None when the session was admitted
    (then one rtc frame of meeting m1 is sent)."""
    url = f"ws://127.0.0.1:{daemon.http_port}/ingest"
    async with open_websocket_url(url, disconnect_timeout=2) as ws:
        try:
            hello = Hello(boot="e2e", kind="server", agent="tests", token=hello_token)
            await ws.send_message(encode_msgpack(hello))
            with trio.fail_after(5):
                await ws.get_message()  # welcome
                await ws.send_message(encode_msgpack(rtc(1, "m1", "p1")))
                await ws.get_message()  # the ack: the frame was handed on
            return None
        except ConnectionClosed as closed:
            return closed.reason.code if closed.reason is not None else None
        finally:
            await ws._stream.aclose()


async def subscribe(ws: WebSocketConnection, topic: str) -> Snapshot | SubscribeError:
    await ws.send_message(json.dumps({"t": "subscribe", "topic": topic}))
    with trio.fail_after(5):
        message = server_json_decoder.decode(await ws.get_message())
    assert isinstance(message, Snapshot | SubscribeError)
    return message


async def test_tokens_are_checked_everywhere_and_never_logged(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[storage]\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n"
        f"[auth]\ntoken_secrets = ['{KEY}']\n[log]\nlevel = 'debug'\nformat = 'json'\n"
    )
    refused_ingest = {
        "missing": None,
        "wrong key": token("ingest", key=OTHER_KEY),
        "expired": token("ingest", ttl_s=-5),
        "read only": token("read"),
        "garbage": "bwm1.not.atoken",
    }
    reader_m1 = token("read", meeting="m1")
    everything = token("read")
    refused_api = [None, token("read", key=OTHER_KEY), token("read", ttl_s=-5), token("ingest")]
    with running_daemon(tmp_path / "daemon.log", ["--config", str(config)]) as daemon:
        codes = {name: await ingest(daemon, t) for name, t in refused_ingest.items()}
        assert codes == dict.fromkeys(refused_ingest, 1008)
        assert await ingest(daemon, token("ingest", "read")) is None  # admitted; m1 is live

        url = f"ws://127.0.0.1:{daemon.http_port}/subscribe"
        async with open_websocket_url(url, disconnect_timeout=2) as ws:
            refused = await subscribe(ws, "meetings")
            assert isinstance(refused, SubscribeError)
            assert refused.code == "unauthorized"
            for bad in (token("read", key=OTHER_KEY), token("read", ttl_s=-5)):
                await ws.send_message(json.dumps({"t": "auth", "token": bad}))
                error = server_json_decoder.decode(await ws.get_message())
                assert isinstance(error, SubscribeError)
                assert error.code == "unauthorized"
            await ws.send_message(json.dumps({"t": "auth", "token": reader_m1}))
            for topic in ("meetings", "meeting:m2", "alerts"):
                out_of_scope = await subscribe(ws, topic)
                assert isinstance(out_of_scope, SubscribeError)
                assert out_of_scope.code == "forbidden"
            own = await subscribe(ws, "meeting:m1")
            assert isinstance(own, Snapshot)
            await ws._stream.aclose()

        for refused_token in refused_api:
            status, body = http(daemon, "/api/meetings", refused_token)
            assert status == (403 if refused_token == refused_api[-1] else 401), body
        for target in (
            "/api/meetings",
            "/api/meetings/m2",
            "/api/export?what=rtc&meeting=m2",
            "/api/series?meeting=m2",
            "/api/series",
        ):
            status, body = http(daemon, target, reader_m1)
            assert (status, body["error"].split(":")[0]) == (403, "forbidden"), target
        status, body = http(daemon, "/api/meetings/m1", reader_m1)
        assert status == 200
        assert set(body["participants"]) == {"p1"}
        status, body = http(daemon, "/api/series?meeting=m1&points=10", reader_m1)
        assert (status, body["meeting"], len(body["t"])) == (200, "m1", 10)
        status, body = http(daemon, "/api/meetings", everything)
        assert status == 200
        assert set(body["meetings"]) == {"m1"}
        status, _ = http(daemon, "/healthz", None)  # operations endpoints stay open
        assert status == 200
        health = daemon.health()
    assert health["ingest"]["websocket"]["rejected_by_reason"] == {
        "unauthorized": 4,
        "forbidden": 1,
    }
    assert health["fanout"]["refused_forbidden"] == 3
    log_text = (tmp_path / "daemon.log").read_text()
    events = [json.loads(line)["event"] for line in log_text.splitlines()]
    assert events.count("ingest_session_refused") == 5
    assert "subscriber_refused" in events  # a debug line
    secrets = [KEY, OTHER_KEY, reader_m1, everything, *refused_api, *refused_ingest.values()]
    for secret in secrets:
        if secret is not None:
            assert secret not in log_text
            assert secret.split(".")[-1] not in log_text  # not even the signature


@pytest.mark.parametrize(
    ("auth", "missing"),
    [
        ("", "auth.token_secrets"),
        (f"token_secrets = ['{KEY}']\n", "auth.udp_allow or auth.udp_keys"),
    ],
)
def test_a_non_loopback_bind_without_authentication_refuses_to_start(
    tmp_path: Path, auth: str, missing: str
) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nstate_dir = '{tmp_path}'\n[auth]\n{auth}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BWMON_")}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "--config", str(config), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == EXIT_CONFIG  # a configuration error: systemd does not restart
    assert "refusing to listen on 0.0.0.0 without authentication" in result.stderr
    assert missing in result.stderr
    assert "allow_unauthenticated" in result.stderr


def test_allow_unauthenticated_beyond_loopback_starts_with_a_warning(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text("[storage]\nbackend = 'none'\n[auth]\nallow_unauthenticated = true\n")
    args = ["--config", str(config), "--host", "0.0.0.0"]  # the last --host wins
    with running_daemon(tmp_path / "daemon.log", args) as daemon:
        assert daemon.health()["status"] == "ok"
        events = daemon.log_events()
    (warning,) = [e for e in events if e["event"] == "listening_unauthenticated"]
    assert warning["level"] == "warning"
    assert warning["message"].startswith("listening on 0.0.0.0 without authentication")
    names = [e["event"] for e in events]
    assert names.index("listening_unauthenticated") < names.index("ready")
