"""The root of the daemon: builds the pieces from the configuration, restores what the last run
left, wires them, starts every service in one nursery and stops them in order.

``Daemon.__init__`` builds and wires: storage's sink, spool and journal first, then ``restore``
(``collector.storage.state``) reads the last checkpoint and the journal after it, and the
engine and the flusher are built from what it restored (never restored into objects already
wired); then fan-out, the consumer and the checkpoints that feed the flusher, ingest settings
and the TCP port's routes. What each piece computes lives with it; this module only connects
them. Each service reports its own health as a Struct;
``Daemon.health`` puts them together and ``collector.http.health`` serves them as ``/healthz``,
``/readyz`` and ``/metrics``.

Startup order, visible here and nowhere else: the frame consumer and its ticker (the aggregation
engine), the fan-out channel and publisher, storage, then UDP ingest, then the TCP port (HTTP:
health, ``/api``, the browser client's module and ``POST /ingest``; the WebSocket paths
``/ingest`` and ``/subscribe``). The alert notification sinks (``collector.notifications``)
start before all of them and stop after ingest, before the last checkpoint. ``serve`` reports
readiness through ``task_status`` with the bound addresses once all of them accept traffic.
Signals: SIGTERM and SIGINT stop the daemon.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import msgspec
import trio
from trio_websocket import WebSocketConnection

from collector.aggregate.engine import Output
from collector.aggregate.health import engine_health
from collector.auth import Auth, UnsafeBind, bind_warning, check_bind, check_startup
from collector.config import RELOADABLE, Config, ConfigError, reloaded
from collector.consumer import FrameConsumer, SessionBatch
from collector.fanout.channel import open_channel
from collector.fanout.health import FanoutHealth
from collector.fanout.publisher import Publisher
from collector.fanout.subscribers import Fanout, FanoutSettings
from collector.http.api import Api, token_authorization
from collector.http.health import DaemonHealth, HealthRoutes, HttpHealth, Readiness
from collector.http.live_metrics import LiveMetrics, MetricsSettings
from collector.http.server import HttpServer, HttpSettings, PostRoute, Request, Response
from collector.http.static import StaticRoutes
from collector.ingest.admission import Admission
from collector.ingest.counters import TransportCounters
from collector.ingest.health import IngestHealth, TransportHealth
from collector.ingest.post import IngestPost, Posted
from collector.ingest.udp import (
    UdpTurns,
    open_udp_socket,
    receive_buffer_size,
    serve_udp,
    udp_health,
)
from collector.ingest.websocket import SessionSettings, serve_ingest_session
from collector.logs import configure, get_logger
from collector.notifications.notifier import AlertNotifier, resolve
from collector.runtime import AsyncioBridge
from collector.runtime.loops import LoopLag
from collector.runtime.notify import Notifier, serve_watchdog
from collector.storage.flusher import REFUSED_FILE, Flusher
from collector.storage.health import NoStorageHealth, StorageHealth
from collector.storage.journal import Journal
from collector.storage.retention import run_retention
from collector.storage.sinks import MysqlSink, SqliteSink, open_sink
from collector.storage.spool import Spool
from collector.storage.state import Checkpointer, daemon_id, restore
from collector.wire import Wire
from protocol import Limits
from protocol.build import running_build
from protocol.errors import BwmonError

log = get_logger("app")

VERSION = "0.1.0"
# Seconds shutdown gives the notification sinks to deliver what is queued (at most the
# storage's shutdown deadline); the checkpoint keeps the rest.
NOTIFY_SHUTDOWN_S = 5.0


class ListenError(BwmonError):
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
        self.started_wall = time.time()
        self.udp_counters = TransportCounters()
        self.udp_turns = UdpTurns()
        self.ws_counters = TransportCounters()
        self.http_counters = TransportCounters()  # POST /ingest
        self.auth = Auth(config.auth.secrets())
        self.sink = open_sink(config.storage, bridge)
        storage = config.storage
        self.spool = (
            Spool(Path(storage.state_dir) / "spool", max_bytes=storage.spool_max_bytes)
            if self.sink is not None and storage.spool_max_bytes > 0
            else None
        )
        # Streams opened since the last checkpoint, on disk as they open.
        self.journal = Journal(self.state_dir) if self.sink is not None else None
        # What the last run left, restored before anything is built on it: the engine's open
        # state and the rows it had not written.
        restored = restore(
            self.state_dir, self.journal, config.aggregate, config.alerts.effective_rules()
        )
        self.engine = restored.engine
        # Alert notifications ([[notify]]): what the last run had not delivered goes first.
        self.notifier = AlertNotifier(
            resolve(config.notify),
            version=VERSION,
            active=self.engine.alerts.active(),
            restored=restored.notify,
            clock=time.time,
        )
        self.flusher = (
            Flusher(
                self.sink,
                flush_interval_s=storage.flush_interval_s,
                queue_max_rows=storage.queue_max_rows,
                retry_max_s=storage.retry_max_s,
                migrate=storage.auto_migrate,
                spool=self.spool,
                refused_path=Path(storage.state_dir) / REFUSED_FILE,
                pending=restored.pending,
            )
            if self.sink is not None
            else None
        )
        self.channel = open_channel(config.fanout, bridge, daemon_id(config.storage))
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
            lambda: self.auth,
            prepare=self.publisher.prepare,
        )
        self.consumer = FrameConsumer(
            self.engine,
            on_output=self.on_output,
            after_tick=self.publisher.on_tick,
            on_openings=self.journal.append if self.journal is not None else None,
        )
        self.checkpointer: Checkpointer | None = None
        if self.flusher is not None and self.journal is not None:
            self.checkpointer = Checkpointer(
                self.state_dir,
                self.engine,
                self.journal,
                self.flusher,
                self.consumer.take,
                errors=restored.errors,
                notifications=self.notifier.state,
            )
            self.flusher.before_flush = self.checkpointer.save  # before every flush attempt
        # Shared and mutable: a reload reconfigures them in place; ingest reads them as it goes.
        self.admission = Admission(config.auth, config.limits)
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
            connection_rate=self.admission.connection_rate,
            source_limiter=self.admission.source_limiter,
        )
        self.ingest_post = IngestPost(
            self.session_settings,
            self.http_counters,
            lambda token: self.auth.admit(token, "ingest"),
        )
        self.api = Api(
            self.channel,
            self.sink if isinstance(self.sink, SqliteSink | MysqlSink) else None,
            prepare=self.publisher.prepare,
            authorize=token_authorization(lambda: self.auth),
        )
        self.live_metrics = LiveMetrics(
            MetricsSettings(
                http_services=tuple(config.metrics.http_services),
                max_http_services=config.metrics.max_http_services,
                http_routes=tuple(config.metrics.routes()),
            )
        )
        self.health_routes = HealthRoutes(
            self.health,
            self.readiness,
            # Ten ticks (at least 10 s) without one: the aggregation ticker has stalled.
            stall_after_s=max(10.0, 10 * self.engine.settings.bucket_s),
            live_metrics=lambda: self.live_metrics.render(self.engine, time.time()),
        )
        self.http = HttpServer(
            http_routes={
                **self.health_routes.routes(),
                **self.api.routes(),
                **StaticRoutes().routes(),
            },
            ws_routes={"/ingest": self.ingest_session, "/subscribe": self.subscribe_session},
            post_routes={
                "/ingest": PostRoute(
                    self.post_ingest,
                    self.ingest_post.max_body_bytes,
                    lambda _request: _posted_response(self.ingest_post.too_large()),
                )
            },
            settings=HttpSettings(
                max_connections=config.server.max_connections,
                max_connections_per_source=config.limits.max_connections_per_source,
                request_timeout_s=config.server.http_request_timeout_s,
                busy_head_timeout_s=config.server.http_busy_head_timeout_s,
                max_ws_message_bytes=ingest.max_ws_message_bytes,
                cors_origins=tuple(config.server.cors_origins),
            ),
        )
        self.loop_lag = LoopLag()
        self._stop = trio.Event()
        self.stopped = trio.Event()
        self.draining = False  # set when shutdown starts: /readyz answers 503 from then on
        self._udp_sock: socket.socket | None = None
        self._frames_in: trio.MemorySendChannel[SessionBatch] | None = None

    @property
    def state_dir(self) -> Path:
        return Path(self.config.storage.state_dir)

    def reload(self, new: Config) -> list[str]:
        """Put a re-read configuration in force without dropping a connection or a buffered
        row: alert rules, tokens and keys, limits, the log level and the CORS origins
        (``RELOADABLE``, ``RELOADABLE_KEYS``).

        Loading the file validated it (``ConfigError``); the checks left, ``UnsafeBind`` (no
        authentication on a non-loopback host) and the keys of ``BWMON_TOKEN_SECRETS`` and
        ``BWMON_UDP_KEYS`` (``ConfigError``), come before any change. Returns the other
        sections that differ from the running ones; they keep their running values until a
        restart."""
        rules = new.alerts.effective_rules()  # unique names: loading the file checked them
        sinks = AlertNotifier.prepare(new.notify)  # their URLs and secrets readable (ConfigError)
        check_bind(self.config.server.host, new.auth)
        warning = bind_warning(self.config.server.host, new.auth)
        if warning is not None:
            log.warning("listening_unauthenticated", message=warning)
        # Its only failure, a bad allowlist, fails loading.
        self.admission.configure(new.auth, new.limits)
        self.http.settings = dataclasses.replace(
            self.http.settings,
            max_connections_per_source=new.limits.max_connections_per_source,
            cors_origins=tuple(new.server.cors_origins),
        )
        self.engine.set_rules(rules, time.time())
        self.notifier.apply(sinks, self.engine.alerts.active())
        self.auth = Auth(new.auth.secrets())
        configure(new.log.level, new.log.format)
        self.config, restart = reloaded(self.config, new)
        return restart

    def on_output(self, output: Output) -> None:
        """What the engine produced: rows to storage (held until the next checkpoint holds
        them too), alert transitions to fan-out and to the notification sinks (queued, never
        waited for), closed minutes to ``/metrics``' counters."""
        self.live_metrics.take(output)
        if self.checkpointer is not None:
            self.checkpointer.hold(output)
        if output.alerts:
            self.publisher.offer_alerts(output.alerts)
            self.notifier.offer(output.alerts)

    async def ingest_session(self, ws: WebSocketConnection, request: Request, _wire: Wire) -> None:
        assert self._frames_in is not None
        await serve_ingest_session(
            ws, self._frames_in, self.ws_counters, self.session_settings, self.auth, request.peer
        )

    def post_ingest(self, request: Request) -> Response:
        """``POST /ingest``: one message, its frames queued for the engine at once, never
        waited for. A full queue, or a daemon shutting down (the queue is being emptied for
        the last time), answers 503 before the message is read."""
        queue = self._frames_in
        if queue is None or self.draining:
            posted = self.ingest_post.busy(len(request.body), "the daemon is shutting down")
        elif (room := queue.statistics()).current_buffer_used >= room.max_buffer_size:
            posted = self.ingest_post.busy(len(request.body), "the ingest queue is full")
        else:
            posted = self.ingest_post.receive(
                request.body,
                request.headers.get("authorization"),
                request.peer,
                trio.current_time(),  # the clock of the rate buckets UDP and WebSocket share
            )
            if posted.frames:  # room was checked above, with no await since
                queue.send_nowait((posted.frames, posted.boot))
        return _posted_response(posted)

    async def subscribe_session(
        self, ws: WebSocketConnection, _request: Request, wire: Wire
    ) -> None:
        await self.fanout.serve_session(ws, wire)

    def health(self) -> DaemonHealth:
        """Every service's report (``/healthz``, ``/metrics``)."""
        queue = self._frames_in.statistics() if self._frames_in is not None else None
        storage: StorageHealth | NoStorageHealth = NoStorageHealth()
        if (checkpointer := self.checkpointer) is not None:
            storage = StorageHealth.of(
                self.config.storage.backend,
                checkpointer.flusher.health(),
                checkpointer.size_bytes,
                checkpointer.failures,
            )
        build = running_build()
        return DaemonHealth(
            status="ok",
            version=VERSION,
            build=build.name,  # compiled, or pure and why (protocol/build.py)
            build_reason=build.reason,
            compiled=build.compiled,
            uptime_s=round(time.monotonic() - self.started, 3),
            ingest=IngestHealth(
                udp=udp_health(self.udp_counters, self.udp_turns, self._udp_sock),
                websocket=TransportHealth.of(self.ws_counters),
                http=TransportHealth.of(self.http_counters),
                queue_batches=queue.current_buffer_used if queue else 0,
                queue_capacity_batches=self.config.ingest.queue_batches,
            ),
            loop=self.loop_lag.health(),
            consumer=self.consumer.health(self.started_wall),
            aggregate=engine_health(self.engine),
            storage=storage,
            fanout=FanoutHealth.of(
                "redis" if self.config.fanout.redis() else "local",
                self.channel.epoch,
                self.publisher.health(),
                self.fanout.health(),
                self.channel.health(),
            ),
            http=HttpHealth.of(self.http.counters),
            limits=self.admission.source_limiter.health(),
            notify=self.notifier.health(),
        )

    def readiness(self) -> Readiness:
        """Should traffic come here (``/readyz``, for a load balancer or an orchestrator)?

        ``draining`` once shutdown has started (SIGTERM): plain HTTP stays up while the
        daemon writes what it holds, WebSocket sessions are closed (1001) and new ones refused.
        ``not ready`` with ``reasons`` while the storage flusher's last attempt failed
        (``consecutive_failures > 0``: rows queue and spool instead of being written) or the
        database does not answer the flusher's probe within 2 s (``probe_error``), or the
        fan-out channel (Redis) refused the publisher's last call or serves from its local
        fallback (this daemon's meetings only); ready again once Redis takes the publishes.
        A row the database refuses is set aside and does not make storage unready. With
        ``backend = "none"`` storage never blocks readiness, and the in-process channel never
        fails. Otherwise ``ready``.
        """
        if self.draining:
            return Readiness(status="draining")
        reasons: list[str] = []
        if self.flusher is not None and (problem := self.flusher.problem()) is not None:
            reasons.append(f"storage: {problem}")
        if self.publisher.channel_error is not None:
            reasons.append(f"channel: {self.publisher.channel_error}")
        if self.channel.problem is not None:
            reasons.append(f"channel: {self.channel.problem}")
        if reasons:
            return Readiness(status="not ready", reasons=reasons)
        return Readiness(
            status="ready", version=VERSION, uptime_s=round(time.monotonic() - self.started, 3)
        )

    async def serve(
        self, *, task_status: trio.TaskStatus[Addresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        server, ingest = self.config.server, self.config.ingest
        check_startup(self.config)
        build = running_build()
        (log.info if build.name == "compiled" else log.warning)(
            "build", build=build.name, reason=build.reason, compiled=build.compiled
        )
        warning = bind_warning(server.host, self.config.auth)
        if warning is not None:
            log.warning("listening_unauthenticated", message=warning)
        frames_in, frames_out = trio.open_memory_channel[SessionBatch](ingest.queue_batches)
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
            # HTTP outlives the rest: while shutdown writes what the daemon holds, /readyz
            # answers "draining" and /healthz and /metrics answer too.
            async with trio.open_nursery() as http_nursery:
                # Notifications outlive the rest too: shutdown lets them deliver what is queued.
                await http_nursery.start(self.notifier.serve)
                try:
                    async with trio.open_nursery() as nursery:
                        await self._start_services(nursery, frames_out)
                        await http_nursery.start(self.http.serve, listeners)
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
                        self.notifier.public_url = _public_url(addresses.http)
                        task_status.started(addresses)
                        await self._stop.wait()
                        nursery.cancel_scope.cancel()
                finally:
                    self._udp_sock.close()
                    with trio.CancelScope(shield=True):
                        await self._shutdown(frames_out)
                    http_nursery.cancel_scope.cancel()
        finally:
            self._udp_sock.close()
            self.stopped.set()

    def stop(self) -> None:
        """Begin an orderly shutdown (SIGTERM): ``serve`` returns when it is done."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def hurry(self) -> None:
        """Shut down without waiting for the database (a second SIGTERM): the last flush
        stops trying and the rows it holds go to the spool."""
        if self.flusher is not None:
            self.flusher.hurry()

    async def _start_services(
        self,
        nursery: trio.Nursery,
        frames_out: trio.MemoryReceiveChannel[SessionBatch],
    ) -> None:
        """Everything but the TCP port, in the startup order of the module docstring."""
        storage, ingest = self.config.storage, self.config.ingest
        assert self._udp_sock is not None
        await nursery.start(self.consumer.consume, frames_out)
        await nursery.start(self.consumer.tick)
        await nursery.start(self.loop_lag.run)
        await nursery.start(self.channel.serve, self.fanout.deliver, self.fanout.on_epoch)
        await nursery.start(self.publisher.run)
        if (checkpointer := self.checkpointer) is not None:
            flusher = checkpointer.flusher
            # The restored state, on disk before the first frame: what this run counts is
            # a delta from it (and the journal's old files go).
            await checkpointer.save()
            await flusher.flush()  # migrates now: a schema problem shows at start
            await nursery.start(flusher.run)
            if storage.minute_retention_days > 0:
                await nursery.start(
                    run_retention,
                    flusher.sink,
                    storage.minute_retention_days,
                    storage.retention_interval_s,
                )
        await nursery.start(
            partial(serve_udp, turns=self.udp_turns),
            self._udp_sock,
            self.consumer.apply,
            self.udp_counters,
            self.udp_limits,
            ingest.udp_drain_per_pass,
            self.admission.udp,
        )

    async def _shutdown(self, frames_out: trio.MemoryReceiveChannel[SessionBatch]) -> None:
        """Ingest has stopped: aggregate what is still queued, close every open minute, flush
        within the deadline (the flusher spools what it cannot write in time)."""
        self.draining = True
        self.http.close_websockets()  # sessions close with 1001; none adds a frame from here
        now = time.time()
        while True:
            try:
                batch, boot = frames_out.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            self.engine.add(batch, now, boot)
        self.engine.close_minutes(now)
        self.consumer.take(self.engine.drain())
        # Before the checkpoint: it then holds exactly what was not delivered.
        await self.notifier.stop(min(NOTIFY_SHUTDOWN_S, self.config.storage.shutdown_deadline_s))
        if (checkpointer := self.checkpointer) is not None:
            flusher = checkpointer.flusher
            await checkpointer.save()  # the closed minutes' rows, held until one holds them
            await flusher.close(self.config.storage.shutdown_deadline_s)
            await checkpointer.save()
            checkpointer.journal.close()
            with trio.move_on_after(2):
                await flusher.sink.close()
            if self.spool is not None:
                self.spool.close()
            log.info("storage_closed", **msgspec.structs.asdict(flusher.health()))
        with trio.move_on_after(2):
            await self.channel.aclose()


def _public_url(address: tuple[str, int]) -> str:
    """The daemon's own base URL, for the links in notifications without ``public_url``."""
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    return f"http://{host}:{address[1]}"


def _posted_response(posted: Posted) -> Response:
    headers = []
    if posted.retry_after_s is not None:
        headers.append(("retry-after", str(posted.retry_after_s)))
    if posted.status == 401:
        headers.append(("www-authenticate", 'Bearer realm="bwmon"'))
    return Response.json(posted.status, posted.answer, headers)


async def run(
    config: Config,
    bridge: AsyncioBridge | None = None,
    on_ready: Callable[[Addresses], None] | None = None,
    reread: Callable[[], Config] | None = None,
) -> None:
    """Run a daemon until SIGTERM or SIGINT; on SIGHUP, ``reread`` the configuration and
    reload it (``Daemon.reload``; without ``reread`` SIGHUP is logged and ignored).

    ``bridge`` reaches the asyncio libraries (database and channel drivers) of later stages.
    Under systemd (``NOTIFY_SOCKET``), readiness, the listening addresses, watchdog pings,
    reloads and the stop are reported through ``collector.runtime.notify``.
    """
    daemon = Daemon(config, bridge)
    notifier = Notifier.from_environ()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                addresses = await nursery.start(daemon.serve)
                notifier.ready(
                    f"listening on udp {addresses.udp[0]}:{addresses.udp[1]}, "
                    f"http {addresses.http[0]}:{addresses.http[1]}"
                )
                await nursery.start(serve_watchdog, notifier)
                if on_ready is not None:
                    on_ready(addresses)
                nursery.start_soon(_cancel_when_stopped, daemon, nursery.cancel_scope)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        notifier.reloading()
                        _reload(daemon, reread)
                        notifier.ready("reloaded")
                        continue
                    name = signal.Signals(signum).name
                    if daemon.stopping:
                        # A second signal: stop retrying the database; spool what is left.
                        log.warning("stopping_now", signal=name)
                        daemon.hurry()
                        continue
                    log.info("stopping", signal=name)
                    notifier.stopping(f"stopping on {name}")
                    daemon.stop()
    finally:
        notifier.close()
    log.info("stopped")


async def _cancel_when_stopped(daemon: Daemon, scope: trio.CancelScope) -> None:
    await daemon.stopped.wait()
    scope.cancel()


def _reload(daemon: Daemon, reread: Callable[[], Config] | None) -> None:
    """One SIGHUP: re-read, validate, swap; an invalid configuration keeps the running one."""
    if reread is None:
        log.warning("reload_unsupported", reason="the daemon was started without a config file")
        return
    try:
        restart = daemon.reload(reread())
    except (ConfigError, ValueError, UnsafeBind) as exc:
        log.error("reload_failed", error=str(exc)[:500], kept="the running configuration")
        return
    log.info("reloaded", sections=list(RELOADABLE), need_restart=restart)
    if restart:
        log.warning(
            "reload_needs_restart",
            sections=restart,
            hint="these sections changed in the file; they apply after a restart",
        )
