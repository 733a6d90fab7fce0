"""The per-process HTTP emitter: cumulative counters per (route, method), sent by a thread.

``Emitter.record`` is the request path: it appends the request to a short queue (one
``deque.append``, atomic, no lock) and, every ``FOLD_EVERY`` requests, folds the queue into the
routes' counters in one pass under one lock — a pass over several requests finds the counters'
code and data in the CPU's caches, where one request's update after a framework's request finds
them evicted (``bwmon bench middleware``). It does no I/O and never raises; whatever reads the
counters (a sample, ``totals``, ``stats``) folds the queue first, so nothing read lags. A
background thread (started on the first ``record``) takes a snapshot every ``interval_s`` and
sends one ``http`` frame (PROTOCOL.md §4.4) per route that changed, and per route unchanged for
``REFRESH_S``, so the daemon never takes a quiet route of a live process for a gone one (§8.5).

Identity per process: ``service``, ``instance`` (``host:pid`` by default) and a random ``boot``
nonce. A forked child (``os.register_at_fork``) starts as a new process: a new boot, counters
from zero, its own thread and socket; the parent's counts stay the parent's. A daemon that is
down costs nothing but dropped datagrams: the state is bounded by ``max_routes`` and the next
sample carries the totals again (§8.1). At exit, ``atexit`` sends a last sample within
``EXIT_TIMEOUT_S``.

Routes past ``max_routes`` distinct (route, method) pairs go to the route ``OVERFLOW_ROUTE``, so
the totals stay right; ``stats()["overflow_requests"]`` counts the requests it took.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
import weakref
from bisect import bisect_left
from collections.abc import Iterable
from typing import Final, Protocol

from protocol.codec import encode_msgpack
from protocol.emitter import DEFAULT_BUDGET, UdpEmitter, pack
from protocol.frames import (
    HTTP_LATENCY_BOUNDS_MS,
    HTTP_LATENCY_BUCKETS,
    MAX_COUNTER,
    MAX_ID_CHARS,
    STATUS_CLASSES,
    Hello,
    HttpSample,
    is_identifier,
)
from protocol.signing import ENVELOPE_BYTES, sign_datagram

__all__ = [
    "DEFAULT_URL",
    "EXIT_TIMEOUT_S",
    "METHODS",
    "OTHER_METHOD",
    "OVERFLOW_ROUTE",
    "REFRESH_S",
    "UNMATCHED_ROUTE",
    "Emitter",
]

AGENT: Final = "bwmon-python/0.1"
DEFAULT_URL: Final = "udp://127.0.0.1:8470"
UNMATCHED_ROUTE: Final = "<unmatched>"
OVERFLOW_ROUTE: Final = "<overflow>"
OTHER_METHOD: Final = "_OTHER"
METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
)
REFRESH_S: Final = 30.0  # an unchanged route is sent again after this long
FOLD_EVERY: Final = 16  # requests queued by record() before the recording thread folds them
EXIT_TIMEOUT_S: Final = 2.0  # the last flush at interpreter exit
HTTP_TIMEOUT_S: Final = 5.0  # one POST /ingest
# Frames per POST body or WebSocket message at most: under the daemon's default cap (1,000).
MAX_FRAMES_PER_MESSAGE: Final = 500

_BOUNDS: Final = tuple(float(b) for b in HTTP_LATENCY_BOUNDS_MS)
# Layout of a stream's counts: requests, bytes in, bytes out, latency sum (ms), then the status
# classes, then the latency buckets.
_REQ, _BI, _BO, _LS = 0, 1, 2, 3
_ST: Final = 4
_LH: Final = _ST + STATUS_CLASSES
_WIDTH: Final = _LH + HTTP_LATENCY_BUCKETS


class _Stream:
    """One (route, method) of this process: its counts and its sample number."""

    __slots__ = ("changed", "counts", "method", "route", "sent_at", "seq")

    def __init__(self, route: str, method: str) -> None:
        self.route = route
        self.method = method
        self.counts: list[float] = [0] * _WIDTH
        self.seq = 0
        self.changed = True
        self.sent_at = 0.0


def _identifier(text: str, fallback: str) -> str:
    """``text`` as an identifier (PROTOCOL.md §4.1): whitespace and unprintable characters
    become ``_``, cut to 128 characters; ``fallback`` when nothing is left."""
    if is_identifier(text):
        return text
    cleaned = "".join(c if c.isprintable() and not c.isspace() else "_" for c in text)
    cleaned = cleaned[:MAX_ID_CHARS]
    return cleaned if is_identifier(cleaned) else fallback


def _default_instance() -> str:
    return _identifier(f"{socket.gethostname()}:{os.getpid()}", str(os.getpid()))


class Transport(Protocol):
    def send(self, samples: list[HttpSample], hello: Hello) -> None: ...

    def close(self) -> None: ...


class _Udp:
    """Datagrams of at most 1,200 bytes (protocol/emitter.py), signed with ``key`` when given
    (PROTOCOL.md §2.3); the socket is made on the first send, in the flusher's thread, so that
    constructing an emitter resolves no name."""

    def __init__(self, host: str, port: int, key: str | None) -> None:
        self.host = host
        self.port = port
        self.key = key.encode() if key else None
        self.budget = DEFAULT_BUDGET - (ENVELOPE_BYTES if key else 0)
        self.udp: UdpEmitter | None = None

    def send(self, samples: list[HttpSample], hello: Hello) -> None:
        if self.udp is None:
            self.udp = UdpEmitter(self.host, self.port, self.budget)
        for datagram, count in pack((encode_msgpack(s) for s in samples), self.budget):
            if self.key is not None:
                datagram = sign_datagram(self.key, datagram, time.time())
            # A refusal is often the ICMP error of an earlier datagram (the daemon was down),
            # reported on this send: this datagram was not sent, so try it once more.
            if not self.udp.send_datagram(datagram, count):
                self.udp.send_datagram(datagram, count)

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
            self.udp = None


class _HttpPost:
    """``POST /ingest`` (PROTOCOL.md §2.4): one request per batch of frames, the token in an
    ``Authorization`` header."""

    MAX_BODY: Final = 256 * 1024

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.headers = {"content-type": "application/msgpack"}
        if token is not None:
            self.headers["authorization"] = f"Bearer {token}"

    def send(self, samples: list[HttpSample], hello: Hello) -> None:
        for start in range(0, len(samples), MAX_FRAMES_PER_MESSAGE):
            encoded = (encode_msgpack(s) for s in samples[start : start + MAX_FRAMES_PER_MESSAGE])
            for body, _count in pack(encoded, self.MAX_BODY):
                request = urllib.request.Request(self.url, body, self.headers, method="POST")
                with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:
                    answer.read()

    def close(self) -> None:
        pass


def _transport(url: str, token: str | None, udp_key: str | None) -> Transport:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "udp":
        if not parts.hostname or parts.port is None:
            raise ValueError(f"udp URL needs a host and a port: {url!r}")
        return _Udp(parts.hostname, parts.port, udp_key)
    if parts.scheme == "http":
        path = parts.path if parts.path not in ("", "/") else "/ingest"
        return _HttpPost(urllib.parse.urlunsplit(("http", parts.netloc, path, "", "")), token)
    if parts.scheme == "ws":
        from bwmon_client.websocket import WebSocketTransport

        return WebSocketTransport(url, token)
    raise ValueError(f"unsupported URL scheme {parts.scheme!r} (udp://, http:// or ws://)")


# Every live emitter, for the fork and exit hooks (weak: an emitter dropped by its owner goes).
_EMITTERS: weakref.WeakSet[Emitter] = weakref.WeakSet()


class Emitter:
    """Per-process HTTP counters for one service, sent to a bwmon daemon by a thread.

    ``url``: ``udp://host:port`` (the default, ``udp://127.0.0.1:8470``), ``http://host:port``
    (``POST /ingest``) or ``ws://host:port/ingest`` (a WebSocket session). ``instance``: the
    process's name in its service (``host:pid`` by default, taken again after a fork).
    ``interval_s``: seconds between samples. ``max_routes``: distinct (route, method) pairs
    before the overflow route. ``token``: an access token with the ``ingest`` right, for
    ``http://`` and ``ws://``. ``udp_key``: a key of the daemon's ``auth.udp_keys``, to sign
    each datagram (PROTOCOL.md §2.3; UDP takes no token).
    """

    def __init__(
        self,
        service: str,
        *,
        url: str = DEFAULT_URL,
        instance: str | None = None,
        interval_s: float = 10.0,
        max_routes: int = 2000,
        token: str | None = None,
        udp_key: str | None = None,
    ) -> None:
        if not is_identifier(service):
            raise ValueError(f"service must be an identifier (PROTOCOL.md §4.1): {service!r}")
        if instance is not None and not is_identifier(instance):
            raise ValueError(f"instance must be an identifier (PROTOCOL.md §4.1): {instance!r}")
        if not 0 < interval_s <= 3600:
            raise ValueError(f"interval_s must be in (0, 3600]: {interval_s!r}")
        if max_routes < 1:
            raise ValueError(f"max_routes must be at least 1: {max_routes!r}")
        self.service = service
        self.url = url
        self.interval_s = float(interval_s)
        self.max_routes = max_routes
        self.token = token
        self.udp_key = udp_key
        self._fixed_instance = instance
        _transport(url, token, udp_key)  # refuses a bad URL now, at configuration time
        self._new_process()
        _EMITTERS.add(self)

    def _new_process(self) -> None:
        """The state of a process that has counted nothing yet: at construction, and in a
        forked child (where another thread may have held the parent's lock at the fork)."""
        self.instance = self._fixed_instance or _default_instance()
        self.boot = os.urandom(8).hex()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._streams: dict[tuple[str, str], _Stream] = {}
        # (route as given, method) → its stream: the given names, cleaned only on first sight
        self._index: dict[tuple[str | None, str], _Stream] = {}
        # (route, method, status, bytes in, bytes out, latency) of requests not folded yet
        self._pending: collections.deque[tuple[str | None, str, int | None, int, int, float]] = (
            collections.deque()
        )
        self._overflow_requests = 0
        self._record_errors = 0
        self._send_errors = 0
        self.last_error: str | None = None  # of sending: for a human, never raised
        self._samples_sent = 0
        self._flushes = 0
        self._started = False
        self._closed = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._transport: Transport | None = None

    # -- the request path --------------------------------------------------------------------

    def record(
        self,
        route: str | None,
        method: str,
        status: int | None,
        bytes_in: int,
        bytes_out: int,
        latency_s: float,
    ) -> None:
        """Count one completed request. ``route``: the template the framework resolved (None:
        no route matched); ``status``: None when the client went away before the response
        ended. No I/O, never raises."""
        pending = self._pending
        pending.append((route, method, status, bytes_in, bytes_out, latency_s))
        if len(pending) >= FOLD_EVERY or not self._started:
            self._fold()

    def _fold(self) -> None:
        """Fold the queued requests into the counters; start the flusher on the first."""
        try:
            with self._lock:
                self._fold_locked()
            if not self._started:
                self._start()
        except Exception:
            self._record_errors += 1

    def _fold_locked(self) -> None:
        """Fold the queued requests into their routes' counters; under the lock (every pop
        is, so the queue cannot empty under this loop)."""
        pending = self._pending
        index = self._index
        while pending:
            route, method, status, bytes_in, bytes_out, latency_s = pending.popleft()
            try:  # every value checked before the first count changes
                ms = latency_s * 1000.0
                if not ms >= 0.0:  # also NaN
                    ms = 0.0
                bucket = _LH + bisect_left(_BOUNDS, ms)
                klass = -1
                if status is not None and 100 <= status <= 599:
                    klass = _ST + status // 100 - 1
                if bytes_in < 0 or bytes_out < 0:
                    bytes_in, bytes_out = max(bytes_in, 0), max(bytes_out, 0)
                stream = index.get((route, method))
                if stream is None:
                    stream = self._stream(route, method)
                counts = stream.counts
                counts[_REQ] += 1
                counts[_BI] += bytes_in
                counts[_BO] += bytes_out
                counts[_LS] += ms
                counts[bucket] += 1
                if klass >= 0:
                    counts[klass] += 1
                stream.changed = True
            except Exception:  # a caller's value of the wrong type: that request only
                self._record_errors += 1

    def _stream(self, route: str | None, method: str) -> _Stream:
        """The stream of a (route, method) not in the index yet; under the lock."""
        name = UNMATCHED_ROUTE if route is None else _identifier(str(route), UNMATCHED_ROUTE)
        verb = method if method in METHODS else OTHER_METHOD
        stream = self._streams.get((name, verb))
        if stream is None:
            if len(self._streams) >= self.max_routes:
                self._overflow_requests += 1
                name = OVERFLOW_ROUTE
                stream = self._streams.get((name, verb))
                if stream is None:  # the overflow routes may pass max_routes by their methods
                    stream = self._streams[name, verb] = _Stream(name, verb)
                return stream  # not indexed: the index stays bounded
            stream = self._streams[name, verb] = _Stream(name, verb)
        if len(self._index) < 2 * self.max_routes:
            self._index[route, method] = stream
        elif stream.route == OVERFLOW_ROUTE:
            self._overflow_requests += 1
        return stream

    # -- sending -----------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            self._thread = threading.Thread(target=self._run, name="bwmon-emitter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # the event is set by close() only
        while not self._wake.wait(self.interval_s):
            self.flush()
        self.flush(final=True)
        self._close_transport()

    def snapshot(self, *, everything: bool = False) -> list[HttpSample]:
        """The samples due now, each with the next sample number of its stream: the routes
        that changed since their last sample, those unchanged for ``REFRESH_S``, or every
        route (``everything``)."""
        now = time.monotonic()
        taken: list[tuple[_Stream, int, list[float]]] = []
        with self._lock:
            self._fold_locked()
            for stream in self._streams.values():
                if everything or stream.changed or now - stream.sent_at >= REFRESH_S:
                    taken.append((stream, stream.seq, stream.counts[:]))
                    stream.seq += 1
                    stream.changed = False
                    stream.sent_at = now
        ts = time.time() * 1000.0
        return [self._sample(stream, seq, counts, ts) for stream, seq, counts in taken]

    def _sample(self, stream: _Stream, seq: int, counts: list[float], ts: float) -> HttpSample:
        def counter(value: float) -> int:
            return min(int(value), MAX_COUNTER)

        return HttpSample(
            service=self.service,
            instance=self.instance,
            boot=self.boot,
            route=stream.route,
            method=stream.method,
            seq=seq,
            client_ts=ts,
            requests=counter(counts[_REQ]),
            status=[counter(c) for c in counts[_ST:_LH]],
            bytes_in=counter(counts[_BI]),
            bytes_out=counter(counts[_BO]),
            latency_hist=[counter(c) for c in counts[_LH:]],
            latency_sum_ms=min(counts[_LS], 1e15),
        )

    def hello(self) -> Hello:
        return Hello(
            boot=self.boot,
            kind="server",
            agent=AGENT,
            host=socket.gethostname()[:MAX_ID_CHARS],
            pid=os.getpid(),
            token=self.token,
        )

    def flush(self, *, final: bool = False) -> int:
        """Send the samples due now (``final``: every route); return how many were sent.
        Errors of the transport are counted, never raised."""
        try:
            samples = self.snapshot(everything=final)
            if not samples:
                return 0
            with self._send_lock:
                self._flushes += 1
                if self._transport is None:
                    self._transport = _transport(self.url, self.token, self.udp_key)
                self._transport.send(samples, self.hello())
                self._samples_sent += len(samples)
            return len(samples)
        except Exception as exc:
            self._send_errors += 1
            self.last_error = repr(exc)
            return 0

    def close(self, timeout_s: float = EXIT_TIMEOUT_S) -> None:
        """Stop the thread after a last sample of every route, waiting at most ``timeout_s``
        for it (a transport that hangs is left to the thread, a daemon thread)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._fold_locked()
        self._wake.set()
        if thread is None:
            if self._streams:
                self.flush(final=True)
            self._close_transport()
        elif thread is not threading.current_thread():
            thread.join(timeout_s)

    def _close_transport(self) -> None:
        with self._send_lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def stats(self) -> dict[str, int]:
        """Counts of this process's emitter: routes, overflowed requests, samples sent,
        flushes, and errors of ``record`` and of sending (each counted, never raised)."""
        with self._lock:
            self._fold_locked()
        udp = self._transport.udp if isinstance(self._transport, _Udp) else None
        return {
            "routes": len(self._streams),
            "overflow_requests": self._overflow_requests,
            "samples_sent": self._samples_sent,
            "flushes": self._flushes,
            "datagrams_dropped": udp.dropped if udp is not None else 0,
            "record_errors": self._record_errors,
            "send_errors": self._send_errors,
        }

    def totals(self) -> dict[tuple[str, str], dict[str, object]]:
        """The counts of every route so far, as the next sample would carry them."""
        with self._lock:
            self._fold_locked()
            items = [(key, s.counts[:]) for key, s in self._streams.items()]
        return {
            key: {
                "requests": int(c[_REQ]),
                "status": [int(x) for x in c[_ST:_LH]],
                "bytes_in": int(c[_BI]),
                "bytes_out": int(c[_BO]),
                "latency_hist": [int(x) for x in c[_LH:]],
                "latency_sum_ms": c[_LS],
            }
            for key, c in items
        }


def _after_fork_in_child() -> None:
    # Nothing logged here (a fork hook may run with locks of other threads held).
    for emitter in list(_EMITTERS):
        if emitter._transport is not None:
            with contextlib.suppress(Exception):
                emitter._transport.close()  # the child's copy of the parent's socket
        emitter._new_process()


def _at_exit() -> None:
    emitters: Iterable[Emitter] = list(_EMITTERS)
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    for emitter in emitters:
        emitter.close(max(deadline - time.monotonic(), 0.0))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
