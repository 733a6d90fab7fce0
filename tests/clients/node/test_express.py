"""bwmon-node end to end: Express (the `compression` middleware in front of bwmon's and behind
it) and a bare node:http server in a real node process, emitting over UDP to a real daemon on
loopback. The per-route bytes the daemon stores equal exactly the body bytes this test's
clients sent and received (counted by http.client, which removes the chunked framing and
decompresses nothing), and requests and status classes match."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sqlite3
import subprocess
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cli.daemon_process import DaemonProcess, start_daemon
from tests.clients.node.conftest import NodeServers, node_path, start_node_servers

pytestmark = pytest.mark.e2e

Key = tuple[str, str]
STATUS = ("status_1xx", "status_2xx", "status_3xx", "status_4xx", "status_5xx")


class Ledger:
    """What the test's clients saw, per (route, method): requests, status classes, body bytes
    sent and received."""

    def __init__(self) -> None:
        self.rows: dict[Key, list[int]] = defaultdict(lambda: [0] * 8)

    def add(self, route: str, method: str, status: int, sent: int, received: int) -> None:
        row = self.rows[route, method]
        row[0] += 1
        row[status // 100] += 1
        row[6] += sent
        row[7] += received


def call(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, int]:
    """One request on its own connection: the status and the body bytes received."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        received = len(response.read())
    finally:
        conn.close()
    return response.status, received


def get(
    ledger: Ledger,
    port: int,
    path: str,
    route: str,
    headers: dict[str, str],
    expect: int = 200,
) -> int:
    status, received = call(port, "GET", path, headers=headers)
    assert status == expect, path
    ledger.add(route, "GET", status, 0, received)
    return received


def disconnect_mid_stream(port: int, path: str) -> int:
    """Read a streamed response partly, then go away; the bytes read (headers included)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        got = 0
        while got < 20_000:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += len(chunk)
    return got


def stored(db_path: Path, service: str) -> dict[Key, list[int]]:
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            f"SELECT route, method, SUM(requests), {', '.join(f'SUM({c})' for c in STATUS)},"
            " SUM(bytes_in), SUM(bytes_out) FROM http_minute WHERE service = ?"
            " GROUP BY route, method",
            (service,),
        ).fetchall()
    return {(r[0], r[1]): [int(v) for v in r[2:]] for r in rows}


def config(tmp_path: Path) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(f"[storage]\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.3\n")
    return path


def static_file(tmp_path: Path) -> Path:
    path = tmp_path / "static.txt"
    path.write_bytes(b"".join(b"line %d of a static file\n" % i for i in range(4000)))
    return path


def finish(servers: NodeServers, daemon: DaemonProcess) -> dict[str, Any]:
    """End the node process (its last flush), let the daemon read it, stop the daemon."""
    assert servers.terminate() == -15  # died of SIGTERM, after the flush
    health = daemon.settled_health()
    assert daemon.stop() == 0
    return health


def exercise(ports: dict[str, int], ledger: Ledger, file_size: int) -> None:
    upload = os.urandom(100_000)
    for prefix in ("front", "behind", "server"):
        port = ports[prefix]
        for encoding in ({"Accept-Encoding": "gzip"}, {}):
            at = f"/{prefix}"
            stream = get(ledger, port, f"{at}/stream", f"{at}/stream", encoding)
            file = get(ledger, port, f"{at}/file", f"{at}/file", encoding)
            if encoding:  # compressed where compression sits, in front or behind
                assert 0 < stream < 50_000
                assert 0 < file < file_size
            else:
                assert stream > 50_000
                assert file == file_size
            get(ledger, port, f"{at}/items/1", f"{at}/items/:id", encoding)
            get(ledger, port, f"{at}/items/4321", f"{at}/items/:id", encoding)
            get(ledger, port, f"{at}/cached", f"{at}/cached", encoding)
            fresh = encoding | {"If-None-Match": '"v1"'}
            assert get(ledger, port, f"{at}/cached", f"{at}/cached", fresh, 304) == 0
            get(ledger, port, f"{at}/boom", f"{at}/boom", encoding, 500)
            get(ledger, port, f"{at}/nowhere", "<unmatched>", encoding, 404)
            for path, route in ((f"/{prefix}/stream", "/stream"), (f"/{prefix}/file", "/file")):
                status, received = call(port, "HEAD", path, headers=encoding)
                assert (status, received) == (200, 0)
                ledger.add(f"/{prefix}{route}", "HEAD", status, 0, 0)
            for route in ("/upload", "/echo"):
                status, received = call(port, "POST", f"/{prefix}{route}", upload, encoding)
                assert status == 200
                ledger.add(f"/{prefix}{route}", "POST", status, len(upload), received)
    port = ports["bare"]
    for method, path, route, body in (
        ("GET", "/bare/stream", "/bare/stream", b""),
        ("HEAD", "/bare/stream", "/bare/stream", b""),
        ("POST", "/bare/upload", "/bare/upload", upload),
        ("GET", "/bare/size/12345", "/bare/size/{n}", b""),
        ("GET", "/elsewhere", "<unmatched>", b""),
    ):
        status, received = call(port, method, path, body)
        ledger.add(route, method, status, len(body), received)


def test_express_and_node_http_bytes_stored_equal_the_bytes_on_the_wire(
    tmp_path: Path, node_servers_factory: list[NodeServers]
) -> None:
    file = static_file(tmp_path)
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config(tmp_path))])
    try:
        # Samples only at exit: the last flush on SIGTERM must carry everything.
        servers = start_node_servers(
            {"udpPort": daemon.udp_port, "intervalMs": 3_600_000, "file": str(file)}
        )
        node_servers_factory.append(servers)
        ledger = Ledger()
        exercise(servers.ports, ledger, file.stat().st_size)
        gone = {
            route: disconnect_mid_stream(servers.ports[name], path)
            for name, path, route in (
                ("front", "/front/gone", "/front/gone"),
                ("behind", "/behind/gone", "/behind/gone"),
                ("server", "/server/gone", "/server/gone"),
                ("bare", "/bare/gone", "/bare/gone"),
            )
        }
        time.sleep(0.3)  # the server sees the clients go
        health = finish(servers, daemon)
    finally:
        daemon.stop()
    assert health["ingest"]["udp"]["frames_rejected"] == 0
    got = stored(tmp_path / "bwmon.db", "node-e2e")
    # A client gone mid-response: counted, with no status class, and what was written to it.
    for route, received in gone.items():
        row = got.pop((route, "GET"))
        assert row[:6] == [1, 0, 0, 0, 0, 0], route
        assert row[7] > 5000, route
        assert received > 5000
    assert got == dict(ledger.rows)


def test_200_concurrent_requests_of_different_sizes_give_exact_per_route_totals(
    tmp_path: Path, node_servers_factory: list[NodeServers]
) -> None:
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config(tmp_path))])
    try:
        servers = start_node_servers(
            {"udpPort": daemon.udp_port, "intervalMs": 200, "file": str(static_file(tmp_path))}
        )
        node_servers_factory.append(servers)
        ledger = Ledger()
        jobs: list[tuple[int, str, str, bytes, dict[str, str], str]] = []
        for i in range(200):
            size = (i * 7919) % 60_000
            name = ("front", "behind", "bare")[i % 3]
            headers = {"Accept-Encoding": "gzip"} if i % 2 else {}
            if name == "bare":
                job = ("GET", f"/bare/size/{size}", b"", "/bare/size/{n}")
            elif i % 5 == 4:
                job = ("POST", f"/{name}/upload", os.urandom(size), f"/{name}/upload")
            else:
                job = ("GET", f"/{name}/size/{size}", b"", f"/{name}/size/:n")
            method, path, body, route = job
            jobs.append((servers.ports[name], method, path, body, headers, route))
        with ThreadPoolExecutor(max_workers=200) as pool:
            results = list(pool.map(lambda j: call(j[0], j[1], j[2], j[3], j[4]), jobs))
        for (_, method, _, body, _, route), (status, received) in zip(jobs, results, strict=True):
            ledger.add(route, method, status, len(body), received)
        finish(servers, daemon)
    finally:
        daemon.stop()
    assert stored(tmp_path / "bwmon.db", "node-e2e") == dict(ledger.rows)


@pytest.mark.slow
def test_a_daemon_restart_keeps_the_stored_totals_exact(
    tmp_path: Path, node_servers_factory: list[NodeServers]
) -> None:
    """The daemon is stopped and started again on the same ports while the node process goes
    on sending its cumulative counters: nothing is lost or counted twice (PROTOCOL.md §8)."""
    settings = config(tmp_path)
    first = start_daemon(tmp_path / "first.log", ["--config", str(settings)])
    ports = ["--udp-port", str(first.udp_port), "--http-port", str(first.http_port)]
    servers = start_node_servers(
        {"udpPort": first.udp_port, "intervalMs": 200, "file": str(static_file(tmp_path))}
    )
    node_servers_factory.append(servers)
    ledger = Ledger()

    def burst(n: int) -> None:
        for i in range(n):
            status, received = call(servers.ports["front"], "GET", f"/front/size/{i * 97}")
            ledger.add("/front/size/:n", "GET", status, 0, received)

    try:
        burst(20)
        time.sleep(0.8)  # a few samples reach the first daemon
        first.settled_health()
        assert first.stop() == 0
        burst(15)  # counted while no daemon listens
        second = start_daemon(tmp_path / "second.log", ["--config", str(settings), *ports])
        try:
            burst(10)
            time.sleep(0.8)
            finish(servers, second)
        finally:
            second.stop()
    finally:
        first.stop()
    assert stored(tmp_path / "bwmon.db", "node-e2e") == dict(ledger.rows)


@pytest.mark.slow
def test_the_overhead_benchmark_prints_its_figures() -> None:
    """clients/node/bench/overhead.mjs, as `bwmon bench middleware` runs it (a short run)."""
    script = Path(__file__).parents[3] / "clients" / "node" / "bench" / "overhead.mjs"
    result = subprocess.run(
        ["node", str(script), "--json", "--requests", "600", "--batch", "200", "--warmup", "300"],
        env={**os.environ, "NODE_PATH": node_path(("express", "express-prom-bundle"))},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(result.stdout)["express"]
    apps = ("empty", "middleware", "instrument", "prom")
    assert set(figures) == {
        "bare_ns",
        *(f"{app}_ns" for app in apps),
        *(f"{app}_added_ns" for app in apps),
        "target_added_ns",
        "requests",
        "processes",
        "cpus",
    }
    assert figures["cpus"] == len(os.sched_getaffinity(0))
    assert figures["target_added_ns"] == 3000
    assert (figures["requests"], figures["processes"]) == (600 * 3, 3)
    assert 0 < figures["bare_ns"] < 10_000_000
    for app in apps:
        assert figures[f"{app}_added_ns"] == figures[f"{app}_ns"] - figures["bare_ns"], app
