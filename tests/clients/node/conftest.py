"""Node test servers for the bwmon-node client: the npm packages they need come from the
benchmarks' cache folder (``cli.bench.harness.npm_package``), never from the repository."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.bench.harness import NpmUnavailable, npm_package

SERVER = Path(__file__).with_name("server.mjs")
# What the test servers and the overhead benchmark need (express-prom-bundle brings prom-client,
# its peer dependency).
PACKAGES = {"express": "5.1.0", "compression": "1.8.1", "express-prom-bundle": "8.0.0"}


def node_path(names: tuple[str, ...] = ("express", "compression")) -> str:
    """NODE_PATH holding the pinned ``names`` of PACKAGES, installed the first time."""
    try:
        entries = [npm_package(name, PACKAGES[name], "package.json") for name in names]
    except NpmUnavailable as exc:
        pytest.skip(str(exc))
    # .../<cache>/<package>/node_modules/<package>/package.json → .../node_modules
    return os.pathsep.join(str(entry.parents[1]) for entry in entries)


class NodeServers:
    """The node process of server.mjs: its ports, and its end by SIGTERM."""

    def __init__(self, process: subprocess.Popen[str], ports: dict[str, int]) -> None:
        self.process = process
        self.ports = ports

    def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (the monitor's last flush, then death by the signal); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)


def start_node_servers(config: dict[str, Any]) -> NodeServers:
    env = {**os.environ, "NODE_PATH": node_path()}
    process = subprocess.Popen(
        ["node", str(SERVER), json.dumps(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    process.stdout.close()  # server.mjs writes nothing else
    if not line:
        process.wait(10)
        raise RuntimeError(f"server.mjs exited with {process.returncode}")
    ports: dict[str, int] = json.loads(line)
    return NodeServers(process, ports)


@pytest.fixture
def node_servers_factory() -> Iterator[list[NodeServers]]:
    """Node servers started by a test, killed if the test left them running."""
    started: list[NodeServers] = []
    yield started
    for servers in started:
        if servers.process.poll() is None:
            servers.process.kill()
            servers.process.wait()
