"""The notifier: alert transitions in (``offer``, from the aggregation tick, never waiting),
one sending task per ``[[notify]]`` sink out.

``offer`` only appends to each admitting sink's bounded queue and wakes its task, so ingest and
the engine never wait on a receiver (``delivery`` says what a full queue drops). Each sink's
task sends its queue in order, one transition per request, retrying with backoff; an
Alertmanager sink also posts its firing alerts again every ``resend_interval_s`` (Alertmanager
resolves an alert nobody re-sends after its ``resolve_timeout``).

Across restarts: ``state`` is what the checkpoint keeps (every sink's undelivered transitions,
in order), ``AlertNotifier(restored=...)`` puts them back in the queues of the sinks still
configured under the same name and kind. At shutdown, ``stop`` lets the tasks deliver what is
queued for a few seconds and cancels them; the checkpoint written after it holds exactly what
was not delivered. Delivered transitions are never in a checkpoint, so an orderly restart sends
nothing twice and forgets nothing; after a ``kill -9`` the transitions delivered since the last
checkpoint are sent again under the same delivery id (docs/RELIABILITY.md).

Reload (SIGHUP): ``prepare`` resolves the new sinks' URLs and secrets (``ConfigError`` before
any change), ``apply`` puts them in force: a sink of the same name and kind keeps its queue
with the new settings, a new one starts, one gone stops and its queue is dropped.

Never raises into the daemon: a failed request is counted and retried, a refused one counted
and dropped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import trio

from collector.aggregate.alerts import AlertEvent
from collector.config import NotifySinkConfig
from collector.logs import get_logger
from collector.notifications import payloads
from collector.notifications.client import Answer, DeliveryFailed, post
from collector.notifications.delivery import Backoff, SinkQueue, retryable
from collector.notifications.health import NotifyHealth, SinkHealth

log = get_logger("notify")

STATE_VERSION: Final = 1
AM_PATH: Final = "/api/v2/alerts"
RESEND_CHUNK: Final = 500  # alerts per resend request to Alertmanager

Post = Callable[[str, bytes, list[tuple[str, str]], float], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Resolved:
    """A sink's configuration with its URL and secret read (``prepare``)."""

    config: NotifySinkConfig
    url: str
    secret: bytes


def resolve(configs: Sequence[NotifySinkConfig]) -> list[Resolved]:
    """Read every sink's URL and secret now: ``ConfigError`` names the sink and the key."""
    return [Resolved(c, c.target(), c.signing_secret()) for c in configs]


class Sink:
    """One ``[[notify]]`` sink: its queue, its firing alerts (Alertmanager), its task."""

    def __init__(self, resolved: Resolved, notifier: AlertNotifier) -> None:
        self.notifier = notifier
        self.queue = SinkQueue(resolved.config.queue_max)
        self.firing: dict[str, AlertEvent] = {}  # alertmanager: the raised alerts, by id
        self.last_error: str | None = None
        self.wake = trio.Event()
        self.scope = trio.CancelScope()
        self.finished = trio.Event()  # its task has returned
        self.resend_at = math.inf
        self.use(resolved)

    def use(self, resolved: Resolved) -> None:
        self.config = resolved.config
        self.url = resolved.url
        if self.kind == "alertmanager" and not self.url.rstrip("/").endswith(AM_PATH):
            self.url = self.url.rstrip("/") + AM_PATH  # the base URL given, as Prometheus takes
        self.secret = resolved.secret
        self.queue.capacity = resolved.config.queue_max
        self.backoff = Backoff(resolved.config.retry_initial_s, resolved.config.retry_max_s)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> str:
        return self.config.kind

    def track(self, active: Iterable[AlertEvent]) -> None:
        """Alertmanager: the alerts raised before this sink started (a restart, a reload) are
        firing too."""
        if self.kind == "alertmanager":
            for event in active:
                if self.config.admits(event.rule, event.severity):
                    self.firing[event.id] = event

    def offer(self, event: AlertEvent) -> None:
        if not self.config.admits(event.rule, event.severity):
            return
        if self.kind == "alertmanager":
            if event.state == "raised":
                self.firing[event.id] = event
            else:
                self.firing.pop(event.id, None)
        self.queue.offer(event)
        self.wake.set()

    def health(self) -> SinkHealth:
        c = self.queue.counters
        return SinkHealth(
            name=self.name,
            kind=self.kind,
            sent=c.sent,
            failed=c.failed,
            retried=c.retried,
            rejected=c.rejected,
            dropped=c.dropped,
            resent=c.resent,
            queue_depth=len(self.queue),
            queue_capacity=self.queue.capacity,
            firing=len(self.firing),
            last_error=self.last_error,
        )

    # -- requests ---------------------------------------------------------------------------

    def _headers(self, body: bytes, delivery: str | None) -> list[tuple[str, str]]:
        headers = [
            ("content-type", "application/json"),
            ("user-agent", f"bwmon/{self.notifier.version}"),
        ]
        if delivery is not None:
            headers.append((payloads.DELIVERY_HEADER, delivery))
        if self.kind == "webhook" and self.secret:
            headers.append((payloads.SIGNATURE_HEADER, payloads.signature(self.secret, body)))
        headers += list(self.config.headers.items())
        return headers

    def _public_url(self) -> str:
        return self.config.public_url or self.notifier.public_url

    def request(self, event: AlertEvent, now: float) -> tuple[bytes, list[tuple[str, str]]]:
        """The body and headers that deliver ``event`` to this sink."""
        if self.kind == "webhook":
            body = payloads.webhook_body(event, now)
        elif self.kind == "slack":
            body = payloads.slack_body(event, payloads.alert_link(self._public_url(), event))
        else:
            body = payloads.alertmanager_body(
                [payloads.alertmanager_alert(event, self._public_url(), self.config.labels)]
            )
        return body, self._headers(body, payloads.delivery_id(event))

    async def _post(self, body: bytes, headers: list[tuple[str, str]]) -> Answer | None:
        """The answer, or None when none came (counted by the caller)."""
        try:
            return await self.notifier.post(self.url, body, headers, self.config.timeout_s)
        except DeliveryFailed as exc:
            self.last_error = str(exc)
            return None

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Send the queue in order until the notifier stops and the queue is empty (or a
        delivery fails while stopping: the checkpoint keeps the rest)."""
        try:
            with self.scope:
                while True:
                    try:
                        await self._run()
                        return
                    except Exception as exc:  # a bug here must not end the daemon
                        log.exception("notify_task_failed", sink=self.name, error=repr(exc)[:300])
                        if self.queue.current is not None:
                            self.queue.refused()  # not the same transition forever
                        await trio.sleep(1.0)
        finally:
            self.finished.set()

    async def _run(self) -> None:
        if self.kind == "alertmanager":
            # At once: Alertmanager may have resolved them while the daemon was down.
            self.resend_at = trio.current_time()
        while True:
            if trio.current_time() >= self.resend_at and not self.notifier.stopping:
                await self._resend()
            event = self.queue.next()
            if event is None:
                if self.notifier.stopping:
                    return
                self.wake = trio.Event()
                with trio.move_on_at(self.resend_at):
                    await self.wake.wait()
                continue
            if not await self._deliver(event) and self.notifier.stopping:
                return

    async def _deliver(self, event: AlertEvent) -> bool:
        """One attempt at ``event``; after a failure, the wait before the next. Whether the
        queue moved on (delivered or refused)."""
        body, headers = self.request(event, self.notifier.clock())
        answer = await self._post(body, headers)
        if answer is not None and 200 <= answer.status < 300:
            if self.queue.attempts > 1 or self.last_error is not None:
                log.info("notify_recovered", sink=self.name, attempts=self.queue.attempts)
            self.last_error = None
            self.queue.delivered()
            return True
        if answer is not None and not retryable(answer.status):
            self.last_error = f"HTTP {answer.status}"
            log.error(
                "notify_refused",
                sink=self.name,
                status=answer.status,
                delivery=payloads.delivery_id(event),
                answer=answer.body[:200].decode("utf-8", "replace"),
            )
            self.queue.refused()
            return True
        if answer is not None:
            self.last_error = f"HTTP {answer.status}"
        self.queue.failed()
        retry_after = answer.retry_after_s if answer is not None else None
        wait = self.backoff.wait(self.queue.attempts, self.notifier.rng, retry_after)
        if self.queue.attempts == 1:
            log.warning(
                "notify_failing", sink=self.name, error=self.last_error, retry_in_s=round(wait, 3)
            )
        if self.notifier.stopping:
            return False
        with trio.move_on_after(wait):
            await self.notifier.stop_requested.wait()  # a stop ends the wait: no retry then
        return False

    async def _resend(self) -> None:
        """Alertmanager: post every firing alert again (whatever the queue holds)."""
        self.resend_at = trio.current_time() + self.config.resend_interval_s
        firing = list(self.firing.values())
        public_url = self._public_url()
        for start in range(0, len(firing), RESEND_CHUNK):
            chunk = firing[start : start + RESEND_CHUNK]
            body = payloads.alertmanager_body(
                [payloads.alertmanager_alert(e, public_url, self.config.labels) for e in chunk]
            )
            answer = await self._post(body, self._headers(body, None))
            if answer is None or not 200 <= answer.status < 300:
                self.queue.counters.failed += 1
                if answer is not None:
                    self.last_error = f"HTTP {answer.status}"
                return  # the next resend tries again
            self.queue.counters.resent += len(chunk)


class AlertNotifier:
    """Every configured sink; see the module docstring."""

    def __init__(
        self,
        sinks: Sequence[Resolved],
        *,
        version: str,
        active: Iterable[AlertEvent] = (),
        restored: Any = None,
        post: Post = post,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.version = version
        self.post = post
        self.clock = clock  # wall time, for the bodies' sent_at
        self.rng = rng if rng is not None else random.Random()
        self.public_url = "http://127.0.0.1"  # the daemon sets its bound address
        self.stop_requested = trio.Event()
        self.stopped = trio.Event()
        self.sinks: dict[str, Sink] = {}
        self._nursery: trio.Nursery | None = None
        self._done = trio.Event()
        active = list(active)
        for resolved in sinks:
            self.sinks[resolved.config.name] = Sink(resolved, self)
            self.sinks[resolved.config.name].track(active)
        self._restore(restored)

    def _restore(self, restored: Any) -> None:
        if not restored:
            return
        lost = 0
        for name, saved in restored.get("sinks", {}).items():
            events = [msgspec.convert(e, AlertEvent) for e in saved.get("pending", [])]
            sink = self.sinks.get(name)
            if sink is None or sink.kind != saved.get("kind"):
                lost += len(events)
                continue
            sink.queue.extend(events)
        if lost:
            log.warning(
                "notify_pending_dropped",
                transitions=lost,
                reason="their sink is no longer configured (by that name and kind)",
            )

    @property
    def stopping(self) -> bool:
        return self.stop_requested.is_set()

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps: every sink's undelivered transitions, in order."""
        return {
            "version": STATE_VERSION,
            "sinks": {
                name: {
                    "kind": sink.kind,
                    "pending": [msgspec.to_builtins(e) for e in sink.queue],
                }
                for name, sink in self.sinks.items()
            },
        }

    def offer(self, events: Iterable[AlertEvent]) -> None:
        """Queue ``events`` for every sink that admits them; never waits."""
        for event in events:
            for sink in self.sinks.values():
                sink.offer(event)

    def health(self) -> NotifyHealth:
        return NotifyHealth(sinks=[sink.health() for sink in self.sinks.values()])

    @staticmethod
    def prepare(configs: Sequence[NotifySinkConfig]) -> list[Resolved]:
        return resolve(configs)

    def apply(self, sinks: Sequence[Resolved], active: Iterable[AlertEvent] = ()) -> None:
        """Put reloaded sinks in force (module docstring); ``active``: the alerts raised now,
        firing for a new Alertmanager sink."""
        active = list(active)
        wanted = {r.config.name: r for r in sinks}
        for name in list(self.sinks):
            resolved = wanted.get(name)
            if resolved is None or resolved.config.kind != self.sinks[name].kind:
                gone = self.sinks.pop(name)
                gone.scope.cancel()
                if len(gone.queue):
                    log.warning("notify_sink_removed", sink=name, dropped=len(gone.queue))
        for name, resolved in wanted.items():
            sink = self.sinks.get(name)
            if sink is not None:
                sink.use(resolved)
                sink.wake.set()
                continue
            sink = self.sinks[name] = Sink(resolved, self)
            sink.track(active)
            if self._nursery is not None:
                self._nursery.start_soon(sink.run)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every sink's task until ``stop``."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for sink in self.sinks.values():
                    nursery.start_soon(sink.run)
                task_status.started()
                await self.stopped.wait()
        finally:
            self._nursery = None
            self._done.set()

    async def stop(self, deadline_s: float) -> None:
        """Deliver what is queued for at most ``deadline_s``, then end every task: the
        transitions not delivered stay queued for the checkpoint."""
        self.stop_requested.set()
        for sink in self.sinks.values():
            sink.wake.set()
        if self._nursery is not None:
            with trio.move_on_after(deadline_s):
                for sink in list(self.sinks.values()):
                    await sink.finished.wait()
        for sink in self.sinks.values():
            sink.scope.cancel()
        self.stopped.set()
        if self._nursery is not None:
            await self._done.wait()
