"""The root of the daemon: binds the sockets, starts every service in one nursery, stops them.

Startup order, visible here and nowhere else: the frame consumer and its ticker (the aggregation
engine), the fan-out channel and publisher, storage, then UDP ingest, then the TCP port (HTTP and
the WebSocket paths ``/ingest`` and ``/subscribe``). ``serve`` reports readiness
through ``task_status`` with the bound addresses once all of them accept traffic. Signals:
SIGTERM and SIGINT stop the daemon.
"""

from __future__ import annotations

import gc
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import trio
from trio_websocket import WebSocketConnection

from collector.aggregate.engine import Engine, Output
from collector.config import Config, FanoutConfig, StorageConfig
from collector.consumer import FrameConsumer
from collector.fanout.channel import Channel, LocalChannel
from collector.fanout.publisher import Publisher
from collector.fanout.subscribers import Fanout, FanoutSettings
from collector.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from collector.http.metrics import render_metrics
from collector.http.server import HttpServer, HttpSettings, Response
from collector.ingest.counters import TransportCounters
from collector.ingest.udp import (
    kernel_drops,
    open_udp_socket,
    receive_buffer_size,
    serve_udp,
)
from collector.ingest.websocket import SessionSettings, serve_ingest_session
from collector.logs import get_logger
from collector.runtime import AsyncioBridge
from collector.runtime.notify import Notifier, serve_watchdog
from collector.runtime.steps import finish_between_tasks
from collector.storage import checkpoint
from collector.storage.flusher import Flusher, decode_batch, encode_batch
from collector.storage.retention import run_retention
from collector.storage.sinks import MysqlSink, Sink, SqliteSink
from collector.storage.spool import Spool
from protocol import Frame, Limits

log = get_logger("app")

VERSION = "0.1.0"


class ListenError(Exception):
    """A port could not be bound at start; the message names the transport and address."""


def _bind_error(what: str, host: str, port: int, exc: OSError) -> ListenError:
    return ListenError(f"cannot listen on {what} {host}:{port}: {exc.strerror or exc}")


@dataclass(frozen=True, slots=True)
class Addresses:
    """Where the daemon listens, as bound (port 0 in the config becomes a real port)."""

    udp: tuple[str, int]
    http: tuple[str, int]


class Daemon:
    """Everything one running daemon holds; built from a Config, run by ``serve``."""

    def __init__(self, config: Config, bridge: AsyncioBridge | None = None) -> None:
        self.config = config
        self.bridge = bridge
        self.started = time.monotonic()
        self.udp_counters = TransportCounters()
        self.ws_counters = TransportCounters()
        self.engine = Engine(config.aggregate, config.alerts.effective_rules())
        self.sink = open_sink(config.storage, bridge)
        storage = config.storage
        self.spool = (
            Spool(Path(storage.state_dir) / "spool", max_bytes=storage.spool_max_bytes)
            if self.sink is not None and storage.spool_max_bytes > 0
            else None
        )
        self.flusher = (
            Flusher(
                self.sink,
                flush_interval_s=storage.flush_interval_s,
                queue_max_rows=storage.queue_max_rows,
                retry_max_s=storage.retry_max_s,
                migrate=storage.auto_migrate,
                spool=self.spool,
                after_flush=self.checkpoint,
            )
            if self.sink is not None
            else None
        )
        self.channel = open_channel(config.fanout, bridge)
        self.publisher = Publisher(
            lambda: self.engine, self.channel, config.fanout.publish_interval_s
        )
        self.fanout = Fanout(
            self.channel,
            FanoutSettings(
                queue_messages=config.fanout.subscriber_queue_messages,
                heartbeat_interval_s=config.fanout.heartbeat_interval_s,
                heartbeat_timeout_s=config.fanout.heartbeat_timeout_s,
                max_subscribers=config.fanout.max_subscribers,
            ),
        )
        self.consumer = FrameConsumer(
            self.engine, on_output=self.on_output, after_tick=self.publisher.on_tick
        )
        ingest = config.ingest
        self.udp_limits = Limits(
            max_message_bytes=ingest.max_datagram_bytes,
            max_frames_per_message=ingest.max_frames_per_message,
        )
        self.session_settings = SessionSettings(
            limits=Limits(
                max_message_bytes=ingest.max_ws_message_bytes,
                max_frames_per_message=ingest.max_frames_per_message,
            ),
            hello_timeout_s=ingest.hello_timeout_s,
            heartbeat_interval_s=ingest.heartbeat_interval_s,
            heartbeat_timeout_s=ingest.heartbeat_timeout_s,
            ack_interval_s=ingest.ack_interval_s,
            max_error_replies_per_interval=ingest.max_error_replies_per_interval,
        )
        self.http = HttpServer(
            http_routes={
                "/healthz": self.healthz,
                "/readyz": self.readyz,
                "/metrics": self.metrics,
            },
            ws_routes={"/ingest": self.ingest_session, "/subscribe": self.fanout.serve_session},
            settings=HttpSettings(
                max_connections=config.server.max_connections,
                request_timeout_s=config.server.http_request_timeout_s,
                max_ws_message_bytes=ingest.max_ws_message_bytes,
            ),
        )
        self.checkpoint_bytes = 0
        self.checkpoint_errors = 0
        self.draining = False  # set when shutdown starts: /readyz answers 503 from then on
        self._udp_sock: socket.socket | None = None
        self._frames_in: trio.MemorySendChannel[list[Frame]] | None = None

    @property
    def state_dir(self) -> Path:
        return Path(self.config.storage.state_dir)

    async def checkpoint(self) -> None:
        """Save the engine's open state and the unwritten rows (after each flush attempt)."""
        assert self.flusher is not None
        gc.disable()  # millions of small objects: a collection mid-way would double the time
        try:  # in steps, letting ingest drain between them
            engine_state = await finish_between_tasks(self.engine.snapshot_steps())
        finally:
            gc.enable()
        state = {"engine": engine_state, "pending": encode_batch(self.flusher.pending)}
        try:
            self.checkpoint_bytes = await trio.to_thread.run_sync(
                checkpoint.save, self.state_dir, state
            )
        except checkpoint.CheckpointError as exc:
            self.checkpoint_errors += 1
            log.error("checkpoint_failed", error=str(exc))

    def restore(self) -> None:
        """Load the last checkpoint, if any, before the first frame."""
        if self.flusher is None:
            return
        try:
            state = checkpoint.load(self.state_dir)
            if state is None:
                return
            self.engine.restore(state["engine"], time.time())
            self.flusher.pending.merge(decode_batch(state["pending"]))
        except (checkpoint.CheckpointError, ValueError, KeyError, TypeError) as exc:
            self.checkpoint_errors += 1
            log.error("checkpoint_not_restored", error=str(exc)[:300])
            self.engine = Engine(self.config.aggregate, self.config.alerts.effective_rules())
            self.consumer.engine = self.engine
            return
        log.info(
            "checkpoint_restored",
            streams=len(self.engine.streams),
            routes=len(self.engine.routes),
            pending_rows=len(self.flusher.pending),
        )

    def on_output(self, output: Output) -> None:
        """What the engine produced: rows to storage, alert transitions to fan-out."""
        if self.flusher is not None:
            self.flusher.offer(output)
        if output.alerts:
            self.publisher.offer_alerts(output.alerts)

    async def ingest_session(self, ws: WebSocketConnection) -> None:
        assert self._frames_in is not None
        await serve_ingest_session(ws, self._frames_in, self.ws_counters, self.session_settings)

    def health(self) -> dict[str, Any]:
        udp = self.udp_counters.as_dict()
        if self._udp_sock is not None:
            udp["kernel_drops"] = kernel_drops(self._udp_sock)
            udp["receive_buffer_bytes"] = receive_buffer_size(self._udp_sock)
        return {
            "status": "ok",
            "version": VERSION,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "ingest": {"udp": udp, "websocket": self.ws_counters.as_dict()},
            "consumer": self.consumer.health(),
            "aggregate": self.engine.stats(),
            "storage": (
                {
                    "backend": self.config.storage.backend,
                    **self.flusher.health(),
                    "checkpoint_bytes": self.checkpoint_bytes,
                    "checkpoint_errors": self.checkpoint_errors,
                }
                if self.flusher is not None
                else {"backend": "none"}
            ),
            "fanout": {
                "channel": "redis" if self.config.fanout.redis() else "local",
                "epoch": self.channel.epoch,
                **self.publisher.counters,
                **self.fanout.health(),
            },
            "http": self.http.counters.as_dict(),
        }

    def healthz(self, _request: h11.Request) -> Response:
        """Liveness: 200 with every counter while the event loop answers."""
        return Response.json(200, self.health())

    def readyz(self, _request: h11.Request) -> Response:
        """Readiness, for a load balancer or an orchestrator: should traffic come here?

        503 ``draining`` once shutdown has started (today the TCP port closes as shutdown
        starts, so a client meets a refused connection rather than this answer).
        503 ``not ready`` with ``reasons`` while the
        storage flusher's last attempt failed (``consecutive_failures > 0``: rows queue and
        spool instead of being written); it is ready again after the next successful flush.
        With ``backend = "none"`` storage never blocks readiness. The fan-out channel is not
        checked: it has no cheap up/down signal, and ingest goes on while Redis is away.
        Otherwise 200 ``ready``.
        """
        if self.draining:
            return Response.json(503, {"status": "draining"})
        reasons: list[str] = []
        if self.flusher is not None and self.flusher.failures > 0:
            reasons.append(f"storage: last flush failed: {self.flusher.last_error or 'unknown'}")
        if reasons:
            return Response.json(503, {"status": "not ready", "reasons": reasons})
        return Response.json(
            200,
            {
                "status": "ready",
                "version": VERSION,
                "uptime_s": round(time.monotonic() - self.started, 3),
            },
        )

    def metrics(self, _request: h11.Request) -> Response:
        """Every counter of ``health()`` in the Prometheus text format."""
        return Response(200, render_metrics(self.health()).encode(), METRICS_CONTENT_TYPE)

    async def serve(
        self, *, task_status: trio.TaskStatus[Addresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        server, ingest, storage = self.config.server, self.config.ingest, self.config.storage
        frames_in, frames_out = trio.open_memory_channel[list[Frame]](ingest.queue_batches)
        self._frames_in = frames_in
        try:
            self._udp_sock = open_udp_socket(
                server.host, server.udp_port, ingest.udp_receive_buffer_bytes
            )
        except OSError as exc:
            raise _bind_error("UDP", server.host, server.udp_port, exc) from None
        try:
            listeners = await trio.open_tcp_listeners(server.http_port, host=server.host)
        except OSError as exc:
            self._udp_sock.close()
            raise _bind_error("TCP", server.host, server.http_port, exc) from None
        try:
            self.restore()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.consumer.consume, frames_out)
                await nursery.start(self.consumer.tick)
                await nursery.start(self.channel.serve, self.fanout.deliver, self.fanout.on_epoch)
                await nursery.start(self.publisher.run)
                if self.flusher is not None and self.sink is not None:
                    await self.flusher.flush()  # migrates now: a schema problem shows at start
                    await nursery.start(self.flusher.run)
                    if storage.minute_retention_days > 0:
                        await nursery.start(
                            run_retention,
                            self.sink,
                            storage.minute_retention_days,
                            storage.retention_interval_s,
                        )
                await nursery.start(
                    serve_udp,
                    self._udp_sock,
                    frames_in,
                    self.udp_counters,
                    self.udp_limits,
                    ingest.udp_drain_per_pass,
                )
                await nursery.start(self.http.serve, listeners)
                udp_addr = self._udp_sock.getsockname()
                http_addr = listeners[0].socket.getsockname()
                addresses = Addresses(
                    udp=(udp_addr[0], udp_addr[1]), http=(http_addr[0], http_addr[1])
                )
                log.info(
                    "ready",
                    udp=f"{addresses.udp[0]}:{addresses.udp[1]}",
                    http=f"{addresses.http[0]}:{addresses.http[1]}",
                    udp_receive_buffer_bytes=receive_buffer_size(self._udp_sock),
                )
                task_status.started(addresses)
        finally:
            self._udp_sock.close()
            with trio.CancelScope(shield=True):
                await self._shutdown(frames_out)

    async def _shutdown(self, frames_out: trio.MemoryReceiveChannel[list[Frame]]) -> None:
        """Ingest has stopped: aggregate what is still queued, close every open minute, flush
        within the deadline (the flusher spools what it cannot write in time)."""
        self.draining = True
        now = time.time()
        while True:
            try:
                batch = frames_out.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            self.engine.add(batch, now)
        self.engine.close_minutes(now)
        self.consumer.take(self.engine.drain())
        if self.flusher is not None and self.sink is not None:
            await self.flusher.close(self.config.storage.shutdown_deadline_s)
            with trio.move_on_after(2):
                await self.sink.close()
            if self.spool is not None:
                self.spool.close()
            log.info("storage_closed", **self.flusher.health())
        with trio.move_on_after(2):
            await self.channel.aclose()


def open_channel(fanout: FanoutConfig, bridge: AsyncioBridge | None) -> Channel:
    """The configured channel: Redis when a URL is set, else in process."""
    url = fanout.redis()
    if not url:
        return LocalChannel(history=fanout.history_deltas)
    if bridge is None:
        raise ValueError("the Redis channel needs the asyncio bridge")
    from collector.fanout.redis_channel import RedisChannel

    return RedisChannel(
        bridge,
        url,
        prefix=fanout.redis_key_prefix,
        history=fanout.history_deltas,
        interest_ttl_s=max(10.0, 5 * fanout.publish_interval_s),
        retry_max_s=fanout.redis_retry_max_s,
    )


def open_sink(storage: StorageConfig, bridge: AsyncioBridge | None) -> Sink | None:
    """The configured sink (not connected yet), or None for ``backend = "none"``."""
    if storage.backend == "none":
        return None
    if storage.backend == "sqlite":
        return SqliteSink(storage.sqlite_file(), storage.statement_timeout_s)
    if bridge is None:
        raise ValueError("the MySQL sink needs the asyncio bridge")
    return MysqlSink(
        bridge,
        host=storage.mysql_host,
        port=storage.mysql_port,
        user=storage.mysql_user,
        password=storage.password(),
        database=storage.mysql_database,
        statement_timeout_s=storage.statement_timeout_s,
    )


async def run(
    config: Config,
    bridge: AsyncioBridge | None = None,
    on_ready: Callable[[Addresses], None] | None = None,
) -> None:
    """Run a daemon until SIGTERM or SIGINT.

    ``bridge`` reaches the asyncio libraries (database and channel drivers) of later stages.
    Under systemd (``NOTIFY_SOCKET``), readiness, the listening addresses, watchdog pings and
    the stop are reported through ``collector.runtime.notify``.
    """
    daemon = Daemon(config, bridge)
    notifier = Notifier.from_environ()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                addresses = await nursery.start(daemon.serve)
                notifier.ready(
                    f"listening on udp {addresses.udp[0]}:{addresses.udp[1]}, "
                    f"http {addresses.http[0]}:{addresses.http[1]}"
                )
                await nursery.start(serve_watchdog, notifier)
                if on_ready is not None:
                    on_ready(addresses)
                async for signum in signals:
                    name = signal.Signals(signum).name
                    log.info("stopping", signal=name)
                    notifier.stopping(f"stopping on {name}")
                    nursery.cancel_scope.cancel()
                    break
    finally:
        notifier.close()
    log.info("stopped")
