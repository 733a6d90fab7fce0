"""``POST /ingest`` and ``/client/bwmon.js`` on the real daemon process.

Frames posted as JSON, JSON lines and MessagePack reach the live state (``/api/meetings``) with
the byte totals of their last sample; a mixed batch keeps its good frames; malformed, empty
and oversize bodies are answered with their reason code and counted under the ``http``
transport in ``/healthz`` and ``/metrics``; with token keys, a missing, bad, read-only or
meeting-limited token is refused as on WebSocket, from the header or the first hello. The
client module is served with its ETag, 304 and CORS, from the checkout and from a built wheel
installed nowhere but a directory (the bytes served are the file's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cli.daemon_process import DaemonProcess, running_daemon, start_daemon
from protocol import Event, Frame, Hello, encode_json, encode_json_lines, encode_msgpack
from protocol.tokens import Claims, mint
from tests.helpers import rtc

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
MODULE = ROOT / "clients" / "browser" / "bwmon.js"
KEY = "e2e-post-key-" + "z" * 24
MAX_BODY = 4096


def call(
    daemon: DaemonProcess,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}{target}",
        data=body,
        headers=headers or {},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _lower(error.headers.items()), error.read()


def _lower(headers: list[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def post(
    daemon: DaemonProcess, body: bytes, bearer: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "text/plain"}
    if bearer is not None:
        headers["authorization"] = f"Bearer {bearer}"
    status, answer_headers, answer = call(daemon, "/ingest", body, headers)
    assert answer_headers["access-control-allow-origin"] == "*"
    assert answer_headers["content-type"] == "application/json"
    return status, json.loads(answer)


def token(*rights: str, meeting: str | None = None) -> str:
    claims = Claims(rights=list(rights), exp=int(time.time()) + 600, meeting=meeting)  # type: ignore[arg-type]
    return mint(KEY, claims)


def hello(bearer: str | None = None, boot: str = "e2e-post") -> Hello:
    return Hello(boot=boot, kind="server", agent="e2e", token=bearer)


def live(daemon: DaemonProcess, meeting: str, participants: int) -> dict[str, Any]:
    """``/api/meetings/{meeting}`` once it shows ``participants``."""
    deadline = time.monotonic() + 10
    while True:
        status, _, body = call(daemon, f"/api/meetings/{meeting}")
        if status == 200:
            shown: dict[str, Any] = json.loads(body)
            if len(shown["participants"]) == participants:
                return shown
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def _config(tmp_path: Path, extra: str = "", backend: str = "none") -> Path:
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[storage]\nbackend = '{backend}'\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n"
        f"[ingest]\nmax_ws_message_bytes = {MAX_BODY}\n{extra}"
    )
    return config


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path / "daemon.log", ["--config", str(_config(tmp_path))]) as process:
        yield process


def test_posted_frames_are_applied_stored_and_counted(tmp_path: Path) -> None:
    config = _config(tmp_path, backend="sqlite")
    daemon = start_daemon(tmp_path / "first.log", ["--config", str(config)])
    try:
        # JSON: a hello first, whose boot the rtc frames take; each stream starts at q 0.
        batch: list[Frame] = [hello(), rtc(0, "room", "json"), rtc(1, "room", "json")]
        assert post(daemon, encode_json(batch)) == (
            200,
            {"accepted": 3, "rejected": 0, "errors": []},
        )
        # JSON lines and MessagePack, other participants of the same meeting.
        lines = encode_json_lines([rtc(0, "room", "lines"), rtc(2, "room", "lines")])
        assert post(daemon, lines) == (200, {"accepted": 2, "rejected": 0, "errors": []})
        packed = encode_msgpack([rtc(0, "room", "packed"), rtc(3, "room", "packed")])
        assert post(daemon, packed) == (200, {"accepted": 2, "rejected": 0, "errors": []})
        # A mixed batch: its good frames are applied, the bad one is listed.
        first, bad, last = (
            msgspec.json.decode(encode_json(rtc(q, "room", "mixed"))) for q in range(3)
        )
        mixed = msgspec.json.encode([first, bad | {"aob": -5}, last])
        status, answer = post(daemon, mixed)
        assert (status, answer["accepted"], answer["rejected"]) == (200, 2, 1)
        assert [(e["index"], e["reason"]) for e in answer["errors"]] == [(1, "out_of_range")]
        meeting = live(daemon, "room", 4)
        assert {name: p["connections"] for name, p in meeting["participants"].items()} == {
            "json": 1,
            "lines": 1,
            "packed": 1,
            "mixed": 1,
        }

        for body, status, reason in [
            (b"{nope", 400, "malformed"),
            (b"", 400, "empty"),
            (b"[" + b"1," * MAX_BODY + b"1]", 413, "too_large"),
        ]:
            got, answer = post(daemon, body)
            assert (got, answer["accepted"], answer["rejected"]) == (status, 0, 1)
            assert [(e["index"], e["reason"]) for e in answer["errors"]] == [(None, reason)]

        counted = daemon.settled_health()["ingest"]["http"]
        assert counted["messages"] == 6  # the too-large body was not read
        assert counted["frames_accepted"] == 9
        assert counted["rejected_by_reason"] == {
            "empty": 1,
            "malformed": 1,
            "out_of_range": 1,
            "too_large": 1,
        }
        _, _, metrics = call(daemon, "/metrics")
        assert b'bwmon_ingest_frames_accepted_total{transport="http"} 9' in metrics
        assert b'_rejected_total{transport="http",reason="too_large"} 1' in metrics
    finally:
        assert daemon.stop() == 0  # writes every open minute

    # Stored: each stream's total is its last sample's counter (rtc(q) carries 180,000 * q
    # video bytes; the first sample, q 0, counts in full).
    with running_daemon(tmp_path / "second.log", ["--config", str(config)]) as second:
        status, _, body = call(second, "/api/export?what=rtc&format=json&meeting=room")
    assert status == 200
    stored: dict[str, float] = {}
    for row in json.loads(body):
        stored[row["participant"]] = stored.get(row["participant"], 0) + row["video_bytes_sent"]
    assert stored == {"json": 180_000, "lines": 360_000, "packed": 540_000, "mixed": 360_000}


def test_a_browser_may_post_from_any_origin(daemon: DaemonProcess) -> None:
    status, headers, body = call(
        daemon,
        "/ingest",
        method="OPTIONS",
        headers={
            "origin": "https://meet.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type",
        },
    )
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == "*"
    assert "POST" in headers["access-control-allow-methods"]
    assert set(headers["access-control-allow-headers"].split(", ")) == {
        "content-type",
        "authorization",
    }


def test_tokens_are_required_and_scoped_as_on_websocket(tmp_path: Path) -> None:
    config = _config(tmp_path, f"[auth]\ntoken_secrets = ['{KEY}']\n")
    frames: list[Frame] = [rtc(0, "m1", "a"), rtc(0, "m2", "b")]
    with running_daemon(tmp_path / "daemon.log", ["--config", str(config)]) as daemon:
        status, headers, body = call(daemon, "/ingest", encode_json(frames))
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert json.loads(body)["errors"][0]["reason"] == "unauthorized"
        for bad, refused in (("bwm1.not.atoken", 401), (token("read"), 403)):
            status, answer = post(daemon, encode_json(frames), bearer=bad)
            assert (status, answer["accepted"]) == (refused, 0)
        status, answer = post(daemon, encode_json([hello(token("read")), *frames]))
        assert (status, answer["errors"][0]["reason"]) == (403, "forbidden")

        # In the first hello (a browser's way), or as a Bearer header (curl's).
        status, answer = post(daemon, encode_json([hello(token("ingest")), frames[0]]))
        assert (status, answer["accepted"]) == (200, 2)
        status, answer = post(daemon, encode_json([frames[1]]), bearer=token("ingest"))
        assert (status, answer["accepted"]) == (200, 1)

        # A meeting's token: the other meeting's frames are refused one by one.
        scoped = token("ingest", meeting="m1")
        join = Event(meeting="m1", participant="c", kind="join", client_ts=1.764e12)
        status, answer = post(daemon, encode_json([hello(scoped), rtc(1, "m2", "x"), join]))
        assert (status, answer["accepted"], answer["rejected"]) == (200, 2, 1)
        assert [(e["index"], e["reason"]) for e in answer["errors"]] == [(1, "forbidden")]
        status, answer = post(daemon, encode_json([rtc(1, "m2", "x")]), bearer=scoped)
        assert (status, answer["errors"]) == (
            403,
            [
                {
                    "index": None,
                    "reason": "forbidden",
                    "detail": "the token is limited to meeting 'm1'",
                }
            ],
        )
        rejected = daemon.settled_health()["ingest"]["http"]["rejected_by_reason"]
        assert rejected == {"unauthorized": 2, "forbidden": 4}
        log = daemon.log_path.read_text()
    assert KEY not in log
    assert scoped not in log


def test_the_client_module_is_served_from_the_checkout(daemon: DaemonProcess) -> None:
    source = MODULE.read_bytes()
    status, headers, body = call(daemon, "/client/bwmon.js")
    assert (status, body) == (200, source)
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["access-control-allow-origin"] == "*"
    status, again, body = call(
        daemon, "/client/bwmon.js", headers={"if-none-match": headers["etag"]}
    )
    assert (status, body, again["etag"]) == (304, b"", headers["etag"])
    status, head, body = call(daemon, "/client/bwmon.js", method="HEAD")
    assert (status, body, head["content-length"]) == (200, b"", str(len(source)))


def _copy_sources(target: Path) -> None:
    """What a wheel is built from: the project's files, no build output or caches."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "_built.py", "*.egg-info")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    for name in ("collector", "protocol", "cli"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)
    (target / "clients" / "browser").mkdir(parents=True)
    shutil.copy2(MODULE, target / "clients" / "browser" / "bwmon.js")


def test_a_built_wheel_ships_the_client_module_and_serves_it(tmp_path: Path) -> None:
    sources, wheels, installed = tmp_path / "src", tmp_path / "wheels", tmp_path / "installed"
    sources.mkdir()
    _copy_sources(sources)
    built = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--disable-pip-version-check"),
            *("--wheel-dir", str(wheels), str(sources)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BWMON_PURE": "1"},
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("bwmon-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("collector/http/files/bwmon.js") == MODULE.read_bytes()
        archive.extractall(installed)
    # The daemon run from the unpacked wheel: its directory comes first on sys.path.
    where = subprocess.run(
        [sys.executable, "-c", "import collector; print(collector.__file__)"],
        cwd=installed,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed)
    daemon = start_daemon(
        tmp_path / "daemon.log",
        ["--config", str(_config(tmp_path))],
        cwd=installed,
    )
    try:
        status, _, body = call(daemon, "/client/bwmon.js")
        assert (status, body) == (200, MODULE.read_bytes())
    finally:
        daemon.stop()
