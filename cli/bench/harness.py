"""What the benchmarks behind ``bwmon bench`` share (docs/BENCHMARKS.md).

- **The lossless rate search** (``rate_search``, ``lossless_search``): double the offered rate
  until a step loses ``MAX_LOSS`` or more, then bisect; the best lossless step is the figure.
- **The replayed workload** (``emit_options``): ``emit --replay`` of 20,000 full ``rtc``
  frames of 200 meetings of 5, and the decoder's ceiling on its datagrams (``decode_ceiling``).
- **The CPUs**: the daemon (or any receiver) on ``DAEMON_CPU``, the benchmark process and its
  senders on ``SENDER_CPU`` (``pinned_to_sender_cpu``), where the machine has both.
- **Helper children** (``ChildProcess``): one command line in on stdin, one JSON line out on
  stdout (``answer``, ``read_command`` on the child's side); stopped whatever happens.
- **A throwaway MariaDB/MySQL database** (``throwaway_database``), dropped at the end.
- **npm packages** (``npm_package``): a pinned version of one (StatsD, terser) in the
  benchmarks' cache, outside the repository, installed the first time.
- **The figures' arithmetic and printing**: percentiles, medians, loss, verdicts, JSON.

Ratios measured in the same run, not absolute figures, are what compare across machines.
This module imports no benchmark; each benchmark imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import asyncmy
import asyncmy.errors
import msgspec
import trio

from cli.daemon_process import DaemonProcess
from cli.emit import EmitOptions
from cli.synthetic import Profile
from collector.config import IngestConfig
from protocol import Limits, decode_message
from protocol.errors import BwmonError

MAX_LOSS = 0.001  # a step is lossless below this fraction of the frames sent
DAEMON_CPU = 0
SENDER_CPU = 1
MAX_OFFERED_FRAMES_PER_S = 2_000_000
REPLAY_FRAMES = 20_000
DATAGRAM_BUDGET = 1200  # bytes per datagram, as application servers' emitters pack frames
DROP_DEADLINE_S = 10.0  # for a statement on the throwaway database


# -- output ----------------------------------------------------------------------------------


def print_json(result: msgspec.Struct) -> None:
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


def meets(ok: bool) -> str:
    """A one-line summary's verdict on its target."""
    return "meets" if ok else "MISSES"


def passes(ok: bool) -> str:
    """A table row's verdict on its target."""
    return "pass" if ok else "FAIL"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[min(index, len(sorted_values) - 1)]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


# -- the rate search -------------------------------------------------------------------------


class UdpStep(msgspec.Struct):
    offered_frames_per_s: float
    sent_frames: int
    accepted_frames: int
    accepted_frames_per_s: float
    loss_fraction: float
    kernel_drops: int


SearchResult = tuple[UdpStep | None, list[UdpStep]]


def loss_fraction(sent: int, accepted: int) -> float:
    """The share of what was sent that the receiver did not count; 1 if nothing was sent."""
    return round(max(0.0, 1 - accepted / sent), 6) if sent else 1.0


def kernel_drops(before: dict[str, Any], after: dict[str, Any]) -> int:
    """Datagrams the daemon's socket dropped between two reads of ``/healthz``'s UDP section
    (0 where the platform does not tell)."""
    return (after.get("kernel_drops") or 0) - (before.get("kernel_drops") or 0)


def step_result(rate: float, seconds: float, sent: int, accepted: int, drops: int) -> UdpStep:
    """One step of a rate search: ``rate`` offered for ``seconds``, ``sent`` frames got out,
    the receiver counted ``accepted`` and its socket dropped ``drops`` datagrams."""
    return UdpStep(
        offered_frames_per_s=round(rate),
        sent_frames=sent,
        accepted_frames=accepted,
        accepted_frames_per_s=round(accepted / seconds, 1),
        loss_fraction=loss_fraction(sent, accepted),
        kernel_drops=drops,
    )


def rate_search(
    start_rate: float, refine_steps: int, max_rate: float = MAX_OFFERED_FRAMES_PER_S
) -> Generator[float, UdpStep, SearchResult]:
    """The lossless rate search, without I/O: yields each rate to offer and is sent back what
    the step at that rate measured. Double the offered rate until loss reaches ``MAX_LOSS``,
    then bisect ``refine_steps`` times; returns the best lossless step (None if even the first
    rate lost) and every step. Searches of several receivers can so take turns step by step."""
    steps: list[UdpStep] = []
    best: UdpStep | None = None
    failed_rate: float | None = None
    rate = start_rate
    while rate <= max_rate:
        result = yield rate
        steps.append(result)
        if result.loss_fraction >= MAX_LOSS:
            failed_rate = rate
            break
        best = result
        rate *= 2
    low = best.offered_frames_per_s if best else 0.0
    for _ in range(refine_steps if failed_rate else 0):
        assert failed_rate is not None
        rate = (low + failed_rate) / 2
        result = yield rate
        steps.append(result)
        if result.loss_fraction < MAX_LOSS:
            best, low = result, rate
        else:
            failed_rate = rate
    return best, steps


def lossless_search(
    step: Callable[[float], UdpStep],
    start_rate: float,
    refine_steps: int,
    max_rate: float = MAX_OFFERED_FRAMES_PER_S,
) -> SearchResult:
    """``rate_search`` for one receiver: ``step(rate)`` offers ``rate`` for one step and says
    what was sent and accepted."""
    search = rate_search(start_rate, refine_steps, max_rate)
    try:
        rate = next(search)
        while True:
            rate = search.send(step(rate))
    except StopIteration as done:
        result: SearchResult = done.value
        return result


# -- the workload ----------------------------------------------------------------------------


def emit_options(daemon: DaemonProcess, rate: float, seconds: float, **kw: Any) -> EmitOptions:
    """``emit`` replaying 20,000 realistic full ``rtc`` frames of 200 meetings of 5."""
    defaults: dict[str, Any] = dict(
        host="127.0.0.1",
        udp_port=daemon.udp_port,
        http_port=daemon.http_port,
        meetings=200,
        participants=5,
        rate=rate,
        duration_s=seconds,
        http_routes=0,
        joins=False,
        replay=REPLAY_FRAMES,
        profile=Profile(seed=7),
    )
    return EmitOptions(**(defaults | kw))


def daemon_udp_limits() -> Limits:
    """The limits the daemon decodes datagrams with, by default."""
    ingest = IngestConfig()
    return Limits(
        max_message_bytes=ingest.max_datagram_bytes,
        max_frames_per_message=ingest.max_frames_per_message,
    )


def decode_ceiling(datagrams: list[tuple[bytes, int]], seconds: float) -> float:
    """Frames per second that ``decode_message`` alone reaches on these datagrams."""
    limits = daemon_udp_limits()
    frames = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for data, _count in datagrams:
            frames += len(decode_message(data, limits).frames)
    return frames / (time.perf_counter() - started)


# -- the CPUs --------------------------------------------------------------------------------


def cpu_count() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


@contextlib.contextmanager
def pinned_to_sender_cpu() -> Iterator[bool]:
    """This process (and the children it starts) on ``SENDER_CPU``, leaving ``DAEMON_CPU`` to
    the receiver, where this process may run on both; yields whether it is pinned. The
    affinity it had comes back on the way out."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    pinned = {DAEMON_CPU, SENDER_CPU} <= allowed
    if pinned:
        os.sched_setaffinity(0, {SENDER_CPU})
    try:
        yield pinned
    finally:
        if pinned:
            os.sched_setaffinity(0, allowed)


# -- helper children -------------------------------------------------------------------------


class ClientFailed(BwmonError):
    """The client process exited, answered nonsense, or did not answer in time."""


def terminate(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def child(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Terminate (then kill) a child process on the way out, whatever happens."""
    try:
        yield process
    finally:
        terminate(process)


class ChildProcess:
    """A benchmark's helper child (``command``, pinned to ``cpu``, stderr to ``log``): one
    command line in, one JSON line out."""

    def __init__(self, command: list[str], cpu: int | None, log: Path) -> None:
        self.log = log
        with log.open("wb") as err:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
            )
        if cpu is not None:
            os.sched_setaffinity(self.process.pid, {cpu})
        self._buffer = b""

    def ask(self, command: str, timeout_s: float = 30.0) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        try:
            self.process.stdin.write(command.encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise ClientFailed(self._exited(command)) from None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ClientFailed(f"{self.log.stem}: no answer to {command!r} in {timeout_s} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise ClientFailed(self._exited(command))
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return msgspec.json.decode(line)

    def _exited(self, command: str) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        return (
            f"{self.log.stem} exited with {self.process.returncode} before answering "
            f"{command!r}: {self.log.read_text(errors='replace')[-2000:]}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ClientFailed, OSError, ValueError):
                self.ask("quit", timeout_s=0.1)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def answer(value: object) -> None:
    """A child's answer to one command: one JSON line on stdout, flushed."""
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


async def read_command() -> str:
    """A child's next command from stdin, stripped; empty at the end of input (the benchmark
    is gone)."""
    line: str = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return line.strip()


# -- a throwaway database --------------------------------------------------------------------


async def _query(server: dict[str, Any], statement: str, database: str | None) -> list[Any]:
    conn = await asyncmy.connect(db=database, **server)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(statement)
            return list(await cursor.fetchall())
    finally:
        conn.close()


def mysql_query(server: dict[str, Any], statement: str, database: str | None = None) -> list[Any]:
    """Run one statement on the MariaDB/MySQL ``server`` (within ``DROP_DEADLINE_S``); its
    rows."""
    return asyncio.run(asyncio.wait_for(_query(server, statement, database), DROP_DEADLINE_S))


@contextlib.contextmanager
def throwaway_database(
    server: dict[str, Any], unavailable: Callable[[str], Exception]
) -> Iterator[str]:
    """A new database ``bwmon_bench_<random>`` on ``server``, dropped on the way out whatever
    happens; ``unavailable(why)`` is raised if it cannot be created."""
    name = f"bwmon_bench_{secrets.token_hex(6)}"
    try:
        mysql_query(server, f"CREATE DATABASE {name}")
    except (OSError, TimeoutError, asyncmy.errors.Error) as exc:
        raise unavailable(f"mysql: cannot create {name}: {exc}") from exc
    try:
        yield name
    finally:
        with contextlib.suppress(OSError, TimeoutError, asyncmy.errors.Error):
            mysql_query(server, f"DROP DATABASE IF EXISTS {name}")


NPM_TIMEOUT_S = 300.0


class NpmUnavailable(BwmonError):
    """An npm package cannot be had here (no Node.js or npm, the install failed): why."""


def npm_cache_dir(package: str) -> Path:
    """Where the benchmarks keep ``package``: under the user's cache, never the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bwmon-bench" / package


def npm_installed(package: str, version: str, entry: str) -> Path | None:
    """``entry`` (a path inside the package) of ``package`` at exactly ``version`` in the
    cache, or None."""
    root = npm_cache_dir(package) / "node_modules" / package
    try:
        found = json.loads((root / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    path = root / entry
    return path if found == version and path.exists() else None


def npm_package(package: str, version: str, entry: str) -> Path:
    """``entry`` of ``package`` at ``version``, installed into the cache the first time;
    ``NpmUnavailable`` says why it cannot be."""
    if shutil.which("node") is None:
        raise NpmUnavailable("Node.js (`node`) not found")
    found = npm_installed(package, version, entry)
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise NpmUnavailable(f"npm not found: cannot install {package}")
    prefix = npm_cache_dir(package)
    prefix.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(prefix), f"{package}@{version}"]
    command += ["--no-audit", "--no-fund", "--ignore-scripts"]
    try:
        subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=NPM_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NpmUnavailable(f"npm install {package}@{version} failed: {exc}") from None
    found = npm_installed(package, version, entry)
    if found is None:
        raise NpmUnavailable(f"npm install did not leave {package} {version} in place")
    return found
