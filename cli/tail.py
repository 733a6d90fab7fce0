"""``bwmon tail``: a daemon's live meetings (or one meeting's participants) and alerts in the
terminal, read from ``/subscribe`` (PROTOCOL.md §12).

Three parts; only the last one touches a socket or a file:

* ``TailSession``: the client side of the protocol. One ``TopicMirror`` per topic keeps the
  state and the position and decides what to resume (§12.5); the session adds the recent alert
  transitions and, for each daemon message, says what to send back and which updates it applied;
* rendering: ``render`` (the table, ANSI colours only when asked) and ``update_line`` (one
  NDJSON line), pure functions of the session's state;
* ``run_tail``: connect, subscribe, read, redraw or print; on a lost connection reconnect with
  backoff and resume every topic where the mirrors stand.

Never writes anything but frames or NDJSON to stdout: status and errors go to stderr.

Exceptions::

    TailError          ends the command (exit 1): e.g. the daemon was never reached
    └── TopicRefused   the daemon refused a topic (unknown_topic, too_many_topics,
                       unauthorized, forbidden): exit 2
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TextIO

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from cli import console
from cli.console import bitrate as bitrate  # re-exported for callers of cli.tail
from cli.terminal import Terminal, resize_signals
from protocol.errors import BwmonError
from protocol.subscribe import (
    FORBIDDEN,
    TOO_MANY_TOPICS,
    UNAUTHORIZED,
    UNKNOWN_TOPIC,
    Alert,
    Authenticate,
    Delta,
    Entities,
    ServerMessage,
    Snapshot,
    Subscribe,
    SubscribeError,
    TopicMirror,
    Unsubscribe,
    server_json_decoder,
    server_msgpack_decoder,
)

BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 5.0
CLOSE_TIMEOUT_S: Final = 1.0
# §12.4: no message and no heartbeat for 2 heartbeat intervals (15 s by default): reconnect.
SILENCE_TIMEOUT_S: Final = 35.0
BATCH_S: Final = 0.05  # a publish tick's messages arrive together: draw once for all of them
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024  # a snapshot of a big daemon is large, not endless
RECENT_ALERTS: Final = 5
_json_encoder: Final = msgspec.json.Encoder()
_msgpack_encoder: Final = msgspec.msgpack.Encoder()

UpdateKind = Literal["snapshot", "delta", "alert"]


class TailError(BwmonError):
    """Ends ``bwmon tail`` with exit status 1."""


class TopicRefused(TailError):
    """The daemon refused a topic: a usage problem (exit status 2)."""


@dataclass(frozen=True, slots=True)
class TailOptions:
    host: str = "127.0.0.1"
    http_port: int = 8470
    meeting: str | None = None
    as_json: bool = False
    encoding: Literal["json", "msgpack"] = "json"
    count: int | None = None  # stop after this many updates
    duration_s: float | None = None  # stop after this many seconds
    token: str | None = field(default=None, repr=False)  # sent in an ``auth`` message
    # With ``--json`` or ``--count``: fail when no update came for this long while not
    # connected (at the start, or after the connection was lost). None: retry for ever.
    timeout_s: float | None = None
    interactive: bool = False  # the console: keys on stdin, a full screen on stdout

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.http_port}/subscribe"

    @property
    def topics(self) -> tuple[str, ...]:
        if self.interactive:
            # The console shows every page; a meeting opened with the keys is subscribed to
            # when opened. With --meeting it stays on that meeting (a token limited to one
            # meeting reads nothing else).
            if self.meeting is not None:
                return (f"meeting:{self.meeting}", "alerts", "http")
            return ("meetings", "alerts", "http")
        return ("meetings" if self.meeting is None else f"meeting:{self.meeting}", "alerts")


# -- the protocol, without I/O ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Update:
    """One applied snapshot, delta or alert. ``entities`` is the topic's whole state after
    applying, the mirror's own map: read it before the session receives the next message."""

    kind: UpdateKind
    topic: str
    epoch: str
    seq: int
    at: float | None
    entities: Entities | None = None
    alert: dict[str, Any] | None = None


@dataclass(slots=True)
class Received:
    """What one daemon message did: messages to send back, updates applied, a status line."""

    send: list[Subscribe] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    status: str | None = None


class TailSession:
    """The topics of one ``bwmon tail`` and what it has applied of them, across connections."""

    def __init__(self, topics: Iterable[str], recent_alerts: int = RECENT_ALERTS) -> None:
        self.mirrors = {topic: TopicMirror(topic) for topic in topics}
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent_alerts)
        # Alerts announced by ``alert`` messages whose delta has not been applied yet: the
        # delta carries them again and they must not count twice.
        self._announced: list[tuple[int, dict[str, Any]]] = []

    def subscriptions(self) -> list[Subscribe]:
        """What to send on each (re)connection: every topic resumed where its mirror stands."""
        return [mirror.resume() for mirror in self.mirrors.values()]

    def follow(self, topic: str) -> Subscribe:
        """Add a topic (an opened meeting): what to send now on a live connection."""
        mirror = self.mirrors.setdefault(topic, TopicMirror(topic))
        return mirror.resume()

    def drop(self, topic: str) -> Unsubscribe:
        """Forget a topic; its later messages are ignored."""
        self.mirrors.pop(topic, None)
        return Unsubscribe(topic=topic)

    def receive(self, message: ServerMessage) -> Received:
        if isinstance(message, Snapshot | Delta):
            return self._state(message)
        if isinstance(message, Alert):
            return self._alert(message)
        if isinstance(message, SubscribeError):
            refused = message.code in (UNKNOWN_TOPIC, TOO_MANY_TOPICS, UNAUTHORIZED, FORBIDDEN)
            # A meeting-scoped token reads its meeting but not the alerts nor the HTTP routes
            # of every meeting.
            shown_without = ("alerts", "http")
            if refused and not (message.code == FORBIDDEN and message.topic in shown_without):
                raise TopicRefused(
                    f"the daemon refused {message.topic!r} ({message.code}): {message.detail}"
                )
            where = f" ({message.topic})" if message.topic else ""
            return Received(status=f"daemon: {message.code}{where}: {message.detail}")
        return Received()  # heartbeat, unsubscribed

    def _state(self, message: Snapshot | Delta) -> Received:
        mirror = self.mirrors.get(message.topic)
        if mirror is None:
            return Received()
        position = (mirror.epoch, mirror.seq)
        resubscribe = mirror.receive(message)
        if resubscribe is not None:
            return Received(send=[resubscribe])
        if isinstance(message, Delta) and (mirror.epoch, mirror.seq) == position:
            return Received()  # old news
        updates = self._transitions(message) if message.topic == "alerts" else []
        kind: UpdateKind = "snapshot" if isinstance(message, Snapshot) else "delta"
        updates.append(
            Update(kind, message.topic, message.epoch, message.seq, message.at, mirror.entities)
        )
        return Received(updates=updates)

    def _transitions(self, message: Snapshot | Delta) -> list[Update]:
        """The raises and clears an applied ``alerts`` delta carries that no ``alert`` message
        announced (a resumed, merged delta has none)."""
        updates: list[Update] = []
        if isinstance(message, Delta):
            announced = [alert for seq, alert in self._announced if seq <= message.seq]
            for alert in message.alerts:
                if alert in announced:
                    announced.remove(alert)
                    continue
                self.recent.append(alert)
                updates.append(_alert_update(message.topic, message.epoch, message.seq, alert))
            self._announced = [(s, a) for s, a in self._announced if s > message.seq]
        else:
            self._announced.clear()
        return updates

    def _alert(self, message: Alert) -> Received:
        mirror = self.mirrors.get(message.topic)
        if mirror is None:
            return Received()
        if mirror.epoch == message.epoch and mirror.seq is not None and message.seq <= mirror.seq:
            return Received()  # its delta is applied already (or in the snapshot held)
        self.recent.append(message.alert)
        self._announced.append((message.seq, message.alert))
        update = _alert_update(message.topic, message.epoch, message.seq, message.alert)
        return Received(updates=[update])


def _alert_update(topic: str, epoch: str, seq: int, alert: dict[str, Any]) -> Update:
    at = alert.get("at")
    return Update(
        "alert", topic, epoch, seq, at if isinstance(at, int | float) else None, alert=alert
    )


def update_line(update: Update) -> str:
    """One NDJSON line (without its newline) for ``--json``."""
    record: dict[str, Any] = {
        "topic": update.topic,
        "epoch": update.epoch,
        "seq": update.seq,
        "at": update.at,
        "kind": update.kind,
    }
    if update.kind == "alert":
        record["alert"] = update.alert
    else:
        record["entities"] = update.entities
    return _json_encoder.encode(record).decode()


# -- rendering, pure -------------------------------------------------------------------------

_LEVEL_COLOURS: Final = {
    "excellent": "32",
    "good": "32",
    "fair": "33",
    "poor": "31",
    "bad": "31",
}
_STATE_COLOURS: Final = {"raised": "31", "cleared": "32"}
_RESET: Final = "\x1b[0m"
CLEAR_SCREEN: Final = "\x1b[H\x1b[2J"

Cell = tuple[str, str | None]  # text, ANSI colour code


def _number(value: Any, digits: int = 0, suffix: str = "") -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def _clock(at: Any) -> str:
    if not isinstance(at, int | float) or at <= 0:
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(at))


def _paint(text: str, code: str | None, color: bool) -> str:
    return f"\x1b[{code}m{text}{_RESET}" if color and code else text


def _level(level: Any) -> Cell:
    if not isinstance(level, str):
        return ("-", None)
    return (level, _LEVEL_COLOURS.get(level))


def _table(header: Sequence[str], rows: Sequence[Sequence[Cell]], color: bool) -> list[str]:
    """Columns padded to their widest cell; the first is left-aligned, numbers right-aligned
    (a cell is a number when its header is in ``_RIGHT``)."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = []
    for row in [[(h, None) for h in header], *rows]:
        cells = []
        for i, (text, code) in enumerate(row):
            padded = text.rjust(widths[i]) if header[i] in _RIGHT else text.ljust(widths[i])
            cells.append(_paint(padded, code, color))
        lines.append("  ".join(cells).rstrip())
    return lines


_RIGHT: Final = frozenset(
    {"PARTS", "UP", "DOWN", "QUALITY", "RELAY %", "RELAY COST", "ALERTS"}
    | {"LOSS DN", "LOSS UP", "RTT", "JITTER", "MOS"}
)


def _alert_lines(
    open_alerts: Entities, recent: Iterable[Mapping[str, Any]], color: bool, meeting: str | None
) -> list[str]:
    def ours(alert: Mapping[str, Any]) -> bool:
        key = alert.get("key")
        return meeting is None or (isinstance(key, list) and key[:1] == [meeting])

    count = sum(1 for alert in open_alerts.values() if ours(alert))
    lines = [f"alerts: {count} open"]
    for alert in recent:
        if not ours(alert):
            continue
        state = str(alert.get("state", "?"))
        key = alert.get("key")
        where = "/".join(str(k) for k in key) if isinstance(key, list) else "-"
        value = alert.get("value")
        shown = "-" if value is None else f"{value:.3g}" if isinstance(value, float) else value
        painted = _paint(state.ljust(7), _STATE_COLOURS.get(state), color)
        lines.append(
            f"  {_clock(alert.get('at'))}  {painted}  {alert.get('severity', '-')}"
            f"  {alert.get('rule', '-')}  {where}"
            f"  value {shown}  threshold {alert.get('threshold', '-')}"
        )
    return lines


def render_meetings(
    meetings: Entities,
    open_alerts: Entities,
    recent: Iterable[Mapping[str, Any]],
    *,
    at: float = 0.0,
    color: bool = False,
) -> str:
    """The ``meetings`` topic as a table, the worst meeting first (``console.worst_key``),
    then the alerts."""
    rows: list[list[Cell]] = []
    for meeting_id, m in console.sort_rows(meetings, console.WORST):
        share = m.get("relay_share")
        rows.append(
            [
                (meeting_id, None),
                (_number(m.get("participants")), None),
                (bitrate(m.get("up_bps")), None),
                (bitrate(m.get("down_bps")), None),
                (_number(m.get("quality")), None),
                _level(m.get("level")),
                (_number(share * 100 if isinstance(share, int | float) else None, 0, "%"), None),
                (_number(m.get("relay_cost"), 4), None),
                (_number(m.get("alerts")), None),
            ]
        )
    lines = [f"{len(meetings)} live meetings  {_clock(at)}", ""]
    if rows:
        header = ("MEETING", "PARTS", "UP", "DOWN", "QUALITY", "LEVEL", "RELAY %", "RELAY COST")
        lines += _table((*header, "ALERTS"), rows, color)
    else:
        lines.append("no live meetings")
    lines += ["", *_alert_lines(open_alerts, recent, color, None)]
    return "\n".join(lines)


def render_meeting(
    meeting: str,
    entities: Entities,
    open_alerts: Entities,
    recent: Iterable[Mapping[str, Any]],
    *,
    at: float = 0.0,
    color: bool = False,
) -> str:
    """A ``meeting:<id>`` topic: one row per participant (its series points are left out),
    the worst first, then the meeting's alerts."""
    participants = console.participants_of(entities)
    rows: list[list[Cell]] = []
    for pid, p in console.sort_rows(participants, console.WORST):
        relay = str(p.get("relay") or "-")
        if p.get("turn_server"):
            relay += f" ({p['turn_server']})"
        reasons = p.get("reasons")
        rows.append(
            [
                (pid, None),
                (bitrate(p.get("up_bps")), None),
                (bitrate(p.get("down_bps")), None),
                (_number(p.get("loss_down_pct"), 1, "%"), None),
                (_number(p.get("loss_up_pct"), 1, "%"), None),
                (_number(p.get("rtt_ms"), 0, " ms"), None),
                (_number(p.get("jitter_ms"), 1, " ms"), None),
                (_number(p.get("mos"), 2), None),
                (_number(p.get("quality")), None),
                _level(p.get("level")),
                (relay, None),
                (",".join(str(r) for r in reasons) if reasons else "-", None),
            ]
        )
    if rows:
        lines = [f"meeting {meeting}: {len(rows)} participants  {_clock(at)}", ""]
        header = ("PARTICIPANT", "UP", "DOWN", "LOSS DN", "LOSS UP", "RTT", "JITTER", "MOS")
        lines += _table((*header, "QUALITY", "LEVEL", "RELAY", "REASONS"), rows, color)
    else:
        lines = [f"meeting {meeting} is not live  {_clock(at)}"]
    lines += ["", *_alert_lines(open_alerts, recent, color, meeting)]
    return "\n".join(lines)


def render(session: TailSession, *, color: bool = False) -> str:
    """The session's current frame: the meetings table, or one meeting's participants."""
    alerts = session.mirrors.get("alerts")
    open_alerts = alerts.entities if alerts is not None else {}
    for topic, mirror in session.mirrors.items():
        if topic == "meetings":
            return render_meetings(
                mirror.entities, open_alerts, session.recent, at=mirror.at, color=color
            )
        if topic.startswith("meeting:"):
            return render_meeting(
                topic.removeprefix("meeting:"),
                mirror.entities,
                open_alerts,
                session.recent,
                at=mirror.at,
                color=color,
            )
    return "\n".join(_alert_lines(open_alerts, session.recent, color, None))


# -- the connection loop ---------------------------------------------------------------------


class _Silent(Exception):
    """Neither a message nor a heartbeat for ``SILENCE_TIMEOUT_S``."""


_CONNECTION_ERRORS: Final = (
    HandshakeError,
    ConnectionClosed,
    OSError,
    trio.BrokenResourceError,
    _Silent,
)


def wants_color(out: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """ANSI colour only on a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""
    return out.isatty() and not environ.get("NO_COLOR")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        if reason is None:
            return "connection closed"
        return f"closed: {reason.code}" + (f" {reason.reason}" if reason.reason else "")
    cause = exc.__cause__ or exc.__context__
    text = str(cause) if cause is not None and isinstance(exc, HandshakeError) else str(exc)
    return text or type(exc).__name__


class _Tail:
    """One run of the command. Stopping (duration, count, Ctrl-C, a closed stdout) cancels only
    the read loop of a live connection, so that the close handshake still runs: trio-websocket
    reads the daemon's reply in its reader task, which a wider cancel would end first."""

    def __init__(self, options: TailOptions, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.out = out
        self.err = err
        self.terminal = out.isatty()
        self.color = wants_color(out)
        self.session = TailSession(options.topics)
        self.updates = 0
        self.frames = 0
        self.connected = False  # ever
        self.applied = False  # on the current connection
        self.dirty = False
        self.output_closed = False
        self.timed_out = False
        self.stopping = False
        self.wake = trio.Event()
        self.done = trio.CancelScope()
        self.reading: trio.CancelScope | None = None  # while a connection reads
        self.ws: WebSocketConnection | None = None  # while a connection reads
        self.last_update: float | None = None  # trio time of the last update applied
        self.failure: TailError | None = None

    async def run(self) -> None:
        with self.done:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._on_signals)
                if self.options.duration_s is not None:
                    nursery.start_soon(self._timer, self.options.duration_s)
                if self.options.timeout_s is not None:
                    nursery.start_soon(self._watchdog, self.options.timeout_s)
                if not self.options.as_json:
                    nursery.start_soon(self._redraw)
                self._start_tasks(nursery)
                await self._connect_loop()
                nursery.cancel_scope.cancel()
        self._draw()
        if self.failure is not None:
            raise self.failure
        if self.timed_out and not self.connected:
            raise TailError(f"could not reach {self.options.url}")

    def stop(self) -> None:
        self.stopping = True
        if self.reading is not None:
            self.reading.cancel()
        else:
            self.done.cancel()

    async def _timer(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.timed_out = True
        self.stop()

    def _start_tasks(self, nursery: trio.Nursery) -> None:
        """More tasks for the time of the run (the console's)."""

    async def _watchdog(self, timeout_s: float) -> None:
        """Fail when no update was applied for ``timeout_s`` while not connected: nothing
        answers (at the start, or since the connection was lost)."""
        quiet_since = trio.current_time()
        while True:
            await trio.sleep(min(0.1, timeout_s))
            if self.applied:
                quiet_since = trio.current_time()
            elif trio.current_time() - quiet_since >= timeout_s:
                self.failure = TailError(f"no answer from {self.options.url} for {timeout_s:g} s")
                self.stop()
                return

    async def _on_signals(self) -> None:
        """Ctrl-C (or SIGTERM) ends the command cleanly: the connection is closed properly."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.stop()
                return

    async def _connect_loop(self) -> None:
        delay = BACKOFF_FIRST_S
        while True:
            self.applied = False
            try:
                await self._connection()
                reason = "connection ended"  # only a stop ends it without an error
            except TailError as exc:
                self.failure = exc
                return
            except _CONNECTION_ERRORS as exc:
                reason = _describe(exc)
            if self.stopping:
                return
            if self.applied:
                delay = BACKOFF_FIRST_S
            self._status(f"reconnecting… ({reason}); next try in {delay:g} s")
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _connection(self) -> None:
        async with open_websocket_url(
            self.options.url,
            connect_timeout=CONNECT_TIMEOUT_S,
            disconnect_timeout=CLOSE_TIMEOUT_S,
            max_message_size=MAX_MESSAGE_BYTES,
        ) as ws:
            try:
                with trio.CancelScope() as self.reading:
                    if self.stopping:
                        return
                    self.connected = True
                    self.ws = ws
                    self._status(f"connected to {self.options.url}")
                    await self._read(ws)
            finally:
                self.reading = None
                self.ws = None
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(CLOSE_TIMEOUT_S):
                        await ws.aclose()
                    # trio-websocket 0.12 leaves its client's stream open when the server
                    # closed first; closing it twice is harmless.
                    await ws._stream.aclose()

    async def _read(self, ws: WebSocketConnection) -> None:
        if self.options.token:
            await self._send(ws, Authenticate(token=self.options.token))
        for subscribe in self.session.subscriptions():
            await self._send(ws, subscribe)
        while True:
            with trio.move_on_after(SILENCE_TIMEOUT_S) as silence:
                data = await ws.get_message()
            if silence.cancelled_caught:
                raise _Silent(f"nothing from the daemon for {SILENCE_TIMEOUT_S:g} s")
            await self._handle(ws, data)

    async def _send(
        self, ws: WebSocketConnection, message: Subscribe | Unsubscribe | Authenticate
    ) -> None:
        if self.options.encoding == "json":
            await ws.send_message(_json_encoder.encode(message).decode())
        else:
            await ws.send_message(_msgpack_encoder.encode(message))

    async def _handle(self, ws: WebSocketConnection, data: str | bytes) -> None:
        try:
            if isinstance(data, str):
                message = server_json_decoder.decode(data)
            else:
                message = server_msgpack_decoder.decode(data)
        except msgspec.DecodeError as exc:
            self._status(f"ignored a message the daemon sent: {exc}")
            return
        received = self.session.receive(message)
        if received.status is not None:
            self._status(received.status)
        for subscribe in received.send:
            await self._send(ws, subscribe)
        count = self.options.count
        for update in received.updates:
            self.updates += 1
            self.applied = True
            self.last_update = trio.current_time()
            if self.options.as_json:
                self._write(update_line(update) + "\n")
            else:
                self.dirty = True
                self.wake.set()
            if count is not None and self.updates >= count:
                self.stop()
                return

    async def _redraw(self) -> None:
        while True:
            await self.wake.wait()
            await trio.sleep(BATCH_S)
            self.wake = trio.Event()
            self._draw()

    def _draw(self) -> None:
        if not self.dirty or self.output_closed:
            return
        self.dirty = False
        frame = render(self.session, color=self.color)
        if self.terminal:
            self._write(f"{CLEAR_SCREEN}{frame}\n")
        else:  # a log of frames, a blank line between two
            self._write(f"\n{frame}\n" if self.frames else f"{frame}\n")
        self.frames += 1

    def _write(self, text: str) -> None:
        if self.output_closed:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:  # the reader went away (| head): stop quietly
            self.output_closed = True
            self.stop()
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())

    def _status(self, text: str) -> None:
        self.err.write(f"bwmon tail: {text}\n")
        self.err.flush()


class _Console(_Tail):
    """The interactive console (``options.interactive``): pages drawn by ``cli.console`` on
    the whole terminal, keys read from stdin, redrawn on every update, key and resize, and
    every second so that the "updated N s ago" clock keeps ticking. Status lines go to the
    screen, not to stderr (the same terminal)."""

    def __init__(self, options: TailOptions, out: TextIO, err: TextIO) -> None:
        super().__init__(options, out, err)
        self.screen = Terminal(out)
        self.state = console.ConsoleState()
        if options.meeting is not None:
            self.state.opened = options.meeting
            self.state.page = self.state.before_http = "participants"
            self.state.pinned = True
        self.link = f"connecting to {options.url}…"
        self.linked = False  # connected now
        self.notice: str | None = None
        self.rows: list[str] = []  # the ids of the rows shown, in order
        self.body = 10

    async def run(self) -> None:
        with self.screen.raw():
            await super().run()

    def _start_tasks(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._keys)
        nursery.start_soon(self._resizes)
        nursery.start_soon(self._tick)

    def _status(self, text: str) -> None:
        if text.startswith(("connected", "reconnecting")):
            self.link = text
            self.linked = text.startswith("connected")
        else:
            self.notice = text
        self.dirty = True
        self.wake.set()

    async def _keys(self) -> None:
        while (keys := await self.screen.read_keys()) is not None:
            for key in keys:
                self.notice = None
                follow = console.press(self.state, key, self.rows, self.body)
                if follow.unsubscribe is not None:
                    await self._follow(self.session.drop(follow.unsubscribe))
                if follow.subscribe is not None:
                    await self._follow(self.session.follow(follow.subscribe))
                if self.state.quit:
                    self.stop()
                    return
            self.dirty = True
            self._draw()

    async def _follow(self, message: Subscribe | Unsubscribe) -> None:
        """Send on the live connection, if any: a new connection subscribes to every topic
        the session holds anyway."""
        if self.ws is not None:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await self._send(self.ws, message)

    async def _resizes(self) -> None:
        with resize_signals() as signals:
            async for _ in signals:
                self.dirty = True
                self._draw()

    async def _tick(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.dirty = True
            self._draw()

    def _draw(self) -> None:
        if not self.dirty or self.output_closed:
            return
        self.dirty = False
        width, height = self.screen.size()
        lines, self.rows = console.render_screen(
            self.state, self._screen_input(), width, height, color=self.color
        )
        self.body = max(1, height - 4)
        if self.notice is not None and lines:
            lines[-1] = console.clip(self.notice, width - 1)
        self.screen.draw(lines)

    def _screen_input(self) -> console.ScreenInput:
        def entities(topic: str) -> Entities:
            mirror = self.session.mirrors.get(topic)
            return mirror.entities if mirror is not None else {}

        meeting_topic = f"meeting:{self.state.opened}"
        mirror = self.session.mirrors.get(meeting_topic)
        ago = None if self.last_update is None else trio.current_time() - self.last_update
        return console.ScreenInput(
            meetings=entities("meetings"),
            meeting=entities(meeting_topic),
            http=entities("http"),
            open_alerts=len(entities("alerts")),
            link=self.link,
            connected=self.linked,
            updated_ago_s=ago,
            meeting_received=mirror is not None and mirror.seq is not None,
        )


async def run_tail(
    options: TailOptions, out: TextIO | None = None, err: TextIO | None = None
) -> None:
    """Show or stream the topics until ``options`` says stop, Ctrl-C, ``q`` in the console,
    or stdout closes. Raises ``TailError``."""
    runner = _Console if options.interactive else _Tail
    await runner(options, out or sys.stdout, err or sys.stderr).run()
