"""bwmon-client as an application installs it: a wheel built from clients/python, in a fresh
venv with nothing but its own dependencies, emits frames that a real daemon stores; the wheel
holds no file of the daemon's distribution, so both install side by side."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.clients.python.support import daemon, stored_routes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]

APP = """
import asyncio, importlib.util, sys
import bwmon_client, bwmon_client.asgi, bwmon_client.wsgi
for module in ("protocol", "trio", "asyncmy", "redis", "collector"):
    assert importlib.util.find_spec(module) is None, module
for module in (bwmon_client.wsgi, bwmon_client.asgi):
    assert module.__file__.endswith(sys.argv[2]), module.__file__
emitter = bwmon_client.configure("wheel", url=sys.argv[1], interval_s=3600)
for i in range(12):
    emitter.record("/v1/orders/{id}", "GET", 200 if i else 500, i, 1000 + i, 0.003)

def app(environ, start_response):
    environ["bwmon.route"] = "/v1/ping"
    start_response("200 OK", [("Content-Length", "4")])
    return [b"po", b"ng"]

middleware = bwmon_client.wsgi.BwmonWSGIMiddleware(app, emitter)
body = middleware({"REQUEST_METHOD": "GET"}, lambda status, headers, exc_info=None: None)
assert b"".join(body) == b"pong"
body.close()

class Route:
    path_format = "/v1/echo"

async def asgi_app(scope, receive, send):
    scope["route"] = Route()
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": body * 2})

async def asgi_request():
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"abc"}
    async def send(message):
        sent.append(message)
    scope = {"type": "http", "method": "POST", "path": "/v1/echo"}
    await bwmon_client.asgi.BwmonMiddleware(asgi_app, emitter)(scope, receive, send)
    assert sent[-1]["body"] == b"abcabc", sent

asyncio.run(asgi_request())
emitter.close()
assert emitter.stats()["send_errors"] == 0, emitter.stats()
"""

BESIDE = """
import bwmon_client.process_emitter
from protocol import decode_message, encode_msgpack
from protocol.frames import HttpSample
emitter = bwmon_client.Emitter("beside", url="udp://127.0.0.1:9")
emitter.record("/a", "GET", 200, 1, 2, 0.001)
(sample,) = emitter.snapshot()
assert type(sample) is not HttpSample  # the wheel's own copy of the frames module
assert decode_message(encode_msgpack(sample)).frames[0].bytes_out == 2
emitter.close(0)
"""


def build_wheel(tmp_path: Path) -> Path:
    """A wheel of clients/python built from a copy of the repository's layout (clients/python
    beside protocol/), as `pip wheel clients/python` builds it in a checkout."""
    tree = tmp_path / "repo"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.so", "_built.py")
    shutil.copytree(ROOT / "protocol", tree / "protocol", ignore=ignore)
    shutil.copytree(ROOT / "clients" / "python", tree / "clients" / "python", ignore=ignore)
    out = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    command = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run([*command, str(tree / "clients" / "python")], check=True, timeout=120)
    (wheel,) = out.glob("bwmon_client-*.whl")
    return wheel


def test_the_wheel_installs_alone_and_its_frames_are_stored(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "bwmon_client",
        "bwmon_client-0.1.0.dist-info",
    }
    assert "bwmon_client/_protocol/frames.py" in names
    # the middlewares compiled (clients/python/setup.py): this build has mypyc and a compiler
    for module in ("wsgi", "asgi"):
        assert f"bwmon_client/{module}{sysconfig.get_config_var('EXT_SUFFIX')}" in names
    for name in names:
        if name.endswith(".py"):
            source = zipfile.ZipFile(wheel).read(name).decode()
            assert "from protocol" not in source
            assert "import protocol" not in source

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "--python", str(python), "install", str(wheel)], check=True, timeout=300)
    listed = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m; print(*(d.name for d in m.distributions()))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert sorted(name.lower() for name in listed) == ["bwmon-client", "msgspec"]

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    with daemon(tmp_path) as process:
        url = f"udp://127.0.0.1:{process.udp_port}"
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        run = [python, "-c", APP, url, suffix]
        subprocess.run(run, check=True, timeout=60, cwd=tmp_path, env=env)
        process.settled_health()
        assert process.stop() == 0
    ping = stored_routes(tmp_path, "wheel")["/v1/ping", "GET"]
    assert (ping.requests, ping.status, ping.bytes_out) == (1, [0, 1, 0, 0, 0], 4)
    echo = stored_routes(tmp_path, "wheel")["/v1/echo", "POST"]
    assert (echo.requests, echo.status, echo.bytes_in, echo.bytes_out) == (
        1,
        [0, 1, 0, 0, 0],
        3,
        6,
    )
    row = stored_routes(tmp_path, "wheel")["/v1/orders/{id}", "GET"]
    assert (row.requests, row.status, row.bytes_in, row.bytes_out) == (
        12,
        [0, 11, 0, 0, 1],
        66,
        12_066,
    )

    # beside the daemon's own protocol package: each keeps its own modules
    beside = {**env, "PYTHONPATH": str(ROOT)}
    subprocess.run([python, "-c", BESIDE], check=True, timeout=60, cwd=tmp_path, env=beside)
