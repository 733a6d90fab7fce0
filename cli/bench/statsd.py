"""StatsD (the Etsy daemon, npm ``statsd``) on loopback, for ``bwmon bench all`` to compare with.

What it must never do: fake a figure. Without Node.js or npm, or when the package cannot be
installed, ``prepare`` says why and the comparison is skipped.

- **Install.** ``npm install --prefix <cache> statsd@0.9.0`` into ``~/.cache/bwmon-bench/statsd``
  (``$XDG_CACHE_HOME`` if set), once; never inside the repository.
- **Run.** ``node stats.js <config>`` with a configuration written to a temporary directory: UDP
  on ``127.0.0.1`` at a free port, the management console on another, ``flushInterval`` 10 s,
  and two small modules of ours: a UDP server that is StatsD's own (``servers/udp.js``) plus the
  same receive buffer as the daemon's (``recvBufferSize``; the effective size is written to a
  file), and a do-nothing backend that registers for ``flush`` and records, before StatsD resets
  its counters, the ``statsd.metrics_received`` count of each flush.
- **Counting.** StatsD counts every metric line it parses in the counter
  ``statsd.metrics_received`` (stats.js, ``handlePacket``) and sets it back to 0 after each
  flush. Lines received so far = the lines the backend saw flushed (reported through the
  management ``stats`` command, from the backend's ``status`` handler) + the live counter
  (the management ``counters`` command); read ``stats``, ``counters``, ``stats`` again, and
  retry if a flush came in between.
- **The workload.** The participant-samples of the bwmon workload, each as StatsD lines: one
  line per numeric field of the ``rtc`` sample, ``bwmon.<meeting>.<participant>.<field>`` with
  the frame's short field name, cumulative counters as ``|c`` increments since the same
  participant's previous sample and the other numbers as ``|g`` gauges. Lines are packed in
  order, newline-separated, into datagrams of at most 1,200 bytes (the budget bwmon's emitters
  pack frames under); a sample's lines may continue in the next datagram.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from cli.bench.harness import (
    DATAGRAM_BUDGET,
    NpmUnavailable,
    npm_cache_dir,
    npm_installed,
    npm_package,
    terminate,
)
from protocol import RtcSample
from protocol.errors import BwmonError

STATSD_VERSION = "0.9.0"
FLUSH_INTERVAL_MS = 10_000
READY_TIMEOUT_S = 20.0
MGMT_TIMEOUT_S = 10.0

# The numeric fields of an rtc sample: the cumulative counters come before ``rtt_ms``.
_FIELDS = msgspec.structs.fields(RtcSample)
_FIRST_GAUGE = next(i for i, f in enumerate(_FIELDS) if f.name == "rtt_ms")
_IDENTITY = {"meeting", "participant", "connection", "seq", "client_ts"}
COUNTER_FIELDS = tuple(
    (f.name, f.encode_name) for f in _FIELDS[:_FIRST_GAUGE] if f.name not in _IDENTITY
)
GAUGE_FIELDS = tuple((f.name, f.encode_name) for f in _FIELDS[_FIRST_GAUGE:])

NOOP_BACKEND_JS = """\
// bwmon bench: a StatsD backend that does nothing with the metrics. It only adds up, at each
// flush (before StatsD sets its counters back to 0), how many metric lines StatsD received.
let flushes = 0;
let flushed = 0;
exports.init = function (startupTime, config, events, logger) {
  events.on('flush', function (timestamp, metrics) {
    flushes += 1;
    flushed += metrics.counters['statsd.metrics_received'] || 0;
  });
  events.on('status', function (write) {
    write(null, 'bwmon_noop', 'flushes', flushes);
    write(null, 'bwmon_noop', 'flushed_metrics_received', flushed);
  });
  return true;
};
"""

UDP_SERVER_JS = """\
// bwmon bench: StatsD's own UDP server (servers/udp.js) with the receive buffer the bwmon
// daemon asks for; the size the kernel gave is written to config.bwmonInfoFile.
const dgram = require('dgram');
const fs = require('fs');
exports.start = function (config, callback) {
  const server = dgram.createSocket(
    { type: 'udp4', recvBufferSize: config.bwmonReceiveBufferBytes }, callback);
  server.on('listening', function () {
    fs.writeFileSync(config.bwmonInfoFile,
      JSON.stringify({ receive_buffer_bytes: server.getRecvBufferSize() / 2 }));
  });
  server.bind(config.port, config.address);
  this.server = server;
  return true;
};
"""


class StatsdUnavailable(BwmonError):
    """StatsD cannot run here (no Node.js or npm, install failed, did not start): why."""


def installed_stats_js() -> Path | None:
    return npm_installed("statsd", STATSD_VERSION, "stats.js")


def prepare(install: bool) -> Path:
    """The path of StatsD's ``stats.js``, installing it into the cache if ``install``; raises
    ``StatsdUnavailable`` saying why it cannot run."""
    if not install and shutil.which("node") is not None and installed_stats_js() is None:
        raise StatsdUnavailable(
            f"statsd {STATSD_VERSION} is not installed in {npm_cache_dir('statsd')} and --quick "
            "does not install it: run `bwmon bench all` once (it installs with npm)"
        )
    try:
        return npm_package("statsd", STATSD_VERSION, "stats.js")
    except NpmUnavailable as exc:
        raise StatsdUnavailable(f"{exc}: the StatsD comparison is skipped") from None


# -- the workload ----------------------------------------------------------------------------


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def sample_lines(frames: list[RtcSample]) -> list[list[bytes]]:
    """Each participant-sample as StatsD lines: counters as increments since the participant's
    previous sample in ``frames`` (the first counts from 0), gauges as they are."""
    previous: dict[tuple[str, str, str], RtcSample] = {}
    out: list[list[bytes]] = []
    for frame in frames:
        key = (frame.meeting, frame.participant, frame.connection)
        before = previous.get(key)
        previous[key] = frame
        prefix = f"bwmon.{frame.meeting}.{frame.participant}."
        lines = []
        for name, short in COUNTER_FIELDS:
            value = getattr(frame, name)
            if value is None:
                continue
            old = getattr(before, name) if before is not None else None
            increment = value - old if old is not None and value >= old else value
            lines.append(f"{prefix}{short}:{_number(increment)}|c".encode())
        for name, short in GAUGE_FIELDS:
            value = getattr(frame, name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                lines.append(f"{prefix}{short}:{_number(value)}|g".encode())
        out.append(lines)
    return out


def pack_lines(
    samples: list[list[bytes]], budget: int = DATAGRAM_BUDGET
) -> list[tuple[bytes, int]]:
    """The samples' lines in order, newline-separated, in datagrams of at most ``budget``
    bytes; each datagram with its number of lines."""
    datagrams: list[tuple[bytes, int]] = []
    parts: list[bytes] = []
    size = 0
    for line in (line for lines in samples for line in lines):
        extra = len(line) + (1 if parts else 0)
        if parts and size + extra > budget:
            datagrams.append((b"\n".join(parts), len(parts)))
            parts, size, extra = [], 0, len(line)
        parts.append(line)
        size += extra
    if parts:
        datagrams.append((b"\n".join(parts), len(parts)))
    return datagrams


# -- the daemon ------------------------------------------------------------------------------


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_METRICS_RECEIVED = re.compile(r"'statsd\.metrics_received': (\d+)")
_STAT_LINE = re.compile(r"^bwmon_noop\.(\w+): (\d+)$", re.MULTILINE)


@dataclass
class StatsdProcess:
    process: subprocess.Popen[bytes]
    port: int
    mgmt_port: int
    workdir: Path
    receive_buffer_bytes: int = 0

    def _command(self, command: str) -> str:
        with socket.create_connection(("127.0.0.1", self.mgmt_port), MGMT_TIMEOUT_S) as conn:
            conn.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"END\n\n"):
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        return data.decode(errors="replace")

    def _flushed(self) -> tuple[int, int]:
        stats = dict(_STAT_LINE.findall(self._command("stats")))
        return int(stats.get("flushes", -1)), int(stats.get("flushed_metrics_received", 0))

    def received_lines(self) -> int:
        """Metric lines StatsD has received since it started."""
        for _ in range(10):
            flushes, flushed = self._flushed()
            match = _METRICS_RECEIVED.search(self._command("counters"))
            if flushes < 0 or match is None:
                raise StatsdUnavailable(f"statsd management console: unexpected answer\n{self.log}")
            if self._flushed()[0] == flushes:
                return flushed + int(match.group(1))
        raise StatsdUnavailable("statsd flushed during every count")

    @property
    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "statsd.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        terminate(self.process)


def pin_threads(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` (Node.js starts its worker threads before we can pin it)."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), {cpu})


def start_statsd(
    stats_js: Path, workdir: Path, receive_buffer_bytes: int, cpu: int | None
) -> StatsdProcess:
    """StatsD on loopback with the do-nothing backend, ready to count; pinned to ``cpu``."""
    backend, server = workdir / "bwmon_noop_backend.js", workdir / "bwmon_udp_server.js"
    backend.write_text(NOOP_BACKEND_JS)
    server.write_text(UDP_SERVER_JS)
    info = workdir / "statsd-udp.json"
    port, mgmt_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    config = {
        "port": port,
        "address": "127.0.0.1",
        "mgmt_address": "127.0.0.1",
        "mgmt_port": mgmt_port,
        "flushInterval": FLUSH_INTERVAL_MS,
        "backends": [str(backend)],
        "servers": [
            {
                "server": str(server),
                "port": port,
                "address": "127.0.0.1",
                "bwmonReceiveBufferBytes": receive_buffer_bytes,
                "bwmonInfoFile": str(info),
            }
        ],
        "automaticConfigReload": False,
    }
    config_path = workdir / "statsd-config.js"
    config_path.write_text(json.dumps(config, indent=2))
    with (workdir / "statsd.log").open("wb") as log:
        process = subprocess.Popen(
            ["node", str(stats_js), str(config_path)],
            cwd=stats_js.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    statsd = StatsdProcess(process, port, mgmt_port, workdir)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise StatsdUnavailable(f"statsd exited with {process.returncode}:\n{statsd.log}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                statsd.receive_buffer_bytes = json.loads(info.read_text())["receive_buffer_bytes"]
                statsd.received_lines()
                break
            if time.monotonic() > deadline:
                raise StatsdUnavailable(
                    f"statsd not ready after {READY_TIMEOUT_S} s:\n{statsd.log}"
                )
            time.sleep(0.1)
        if cpu is not None:
            pin_threads(process.pid, cpu)
    except BaseException:
        statsd.stop()
        raise
    return statsd


@contextlib.contextmanager
def running_statsd(
    stats_js: Path, workdir: Path, receive_buffer_bytes: int, cpu: int | None
) -> Iterator[StatsdProcess]:
    statsd = start_statsd(stats_js, workdir, receive_buffer_bytes, cpu)
    try:
        yield statsd
    finally:
        statsd.stop()
