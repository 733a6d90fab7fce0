"""The WebSocket ingest session's protocol core (collector/ingest/session.py), without sockets
or an event loop: PROTOCOL.md §7 as properties under any interleaving of messages (valid,
malformed, over the frame limit, outside the token's meeting, over a rate limit), ack ticks,
hand-offs to the consumer, pings and closes.

Each message the tests send carries what the protocol says must become of it (``expect``),
worked out from how it was built, not from the decoder; a fuzzed message (random bytes) only
has to leave the numbering, the acks and the counters right."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import collector.ingest.session as session_module
from collector.auth import OPEN, Denied
from collector.ingest.counters import TransportCounters
from collector.ingest.limits import Rate, SourceLimiter
from collector.ingest.session import (
    HEARTBEAT_TIMEOUT,
    Close,
    IngestSession,
    SessionSettings,
    SessionStateError,
)
from protocol import (
    Event,
    Frame,
    Hello,
    HttpSample,
    Limits,
    RtcSample,
    decode_message,
    encode_json,
    encode_msgpack,
)
from protocol.session import Ack, SessionMessage, Welcome
from protocol.tokens import Claims
from tests.helpers import hello, http_sample, rtc

MAX_FRAMES = 6  # frames per message, small so that batches go over it
MEETINGS = ("m1", "m2")
HEARTBEAT_S = 10.0
# A rate whose refill stays far below one frame over the times drawn here: bursts decide.
SLOW = 1e-9

Form = Literal["json-text", "json-bytes", "msgpack"]
FORMS: tuple[Form, ...] = ("json-text", "json-bytes", "msgpack")

# Batch elements the decoder rejects, with the reason PROTOCOL.md §6 gives them.
BAD_ELEMENTS: tuple[tuple[Any, str], ...] = (
    ({"t": "rtc", "m": "m1"}, "missing_field"),
    ({"t": "nope"}, "unknown_tag"),
    (3, "not_a_frame"),
    ({"t": "rtc", "m": "m1", "p": "p1", "c": "c", "q": -1, "ts": 1}, "out_of_range"),
)
# Messages rejected whole (index null), with their reason.
WHOLE: tuple[tuple[bytes, str], ...] = (
    (b"", "empty"),
    (b"42", "not_a_frame"),
    (b"{not json", "malformed"),
    (b"\xc1", "malformed"),
)


@dataclass(frozen=True)
class Item:
    """One element of a message: a frame, or a bad element and the reason it is rejected."""

    frame: Frame | None = None
    bad: Any = None
    reason: str = ""


@dataclass(frozen=True)
class Sent:
    """A message as the client sends it, and what it is made of: ``items`` (in a batch, or a
    single frame when not ``batched``), or a ``whole`` reason; ``fuzz``: unknown content."""

    data: str | bytes
    items: tuple[Item, ...] = ()
    batched: bool = True
    whole: str | None = None
    fuzz: bool = False


@dataclass
class Outcome:
    """What the protocol says becomes of a message."""

    frames: list[Frame]
    errors: list[tuple[int | None, str]]  # (index, reason) of each error reply, in order
    rejected: int  # what it adds to the ack's ``rejected``


def in_meeting(frame: Frame, meeting: str) -> bool:
    """PROTOCOL.md §7.8: a token limited to one meeting refuses rtc and event frames of
    another meeting and every http frame; a later hello is accepted."""
    if isinstance(frame, RtcSample | Event):
        return frame.meeting == meeting
    return not isinstance(frame, HttpSample)


def expect(sent: Sent, scope: str | None, allowance: list[int] | None) -> Outcome:
    """What PROTOCOL.md §6, §7.4 and §7.8 make of ``sent`` on a session limited to ``scope``
    with ``allowance[0]`` frames left under its rate limits (None: no limit); spends it."""
    if sent.whole is not None:
        return Outcome([], [(None, sent.whole)], 1)

    def index(i: int) -> int | None:
        return i if sent.batched else None

    errors = [(index(i), item.reason) for i, item in enumerate(sent.items) if item.frame is None]
    good = [(i, item.frame) for i, item in enumerate(sent.items) if item.frame is not None]
    rejected = len(errors)

    def refuse(refused: list[int], left: int, reason: str) -> None:
        nonlocal rejected
        rejected += len(refused)
        if left:  # some frames pass: an error for each refused one, in index order
            errors.extend((index(i), reason) for i in refused)
            errors.sort(key=lambda error: error[0] or 0)
        else:  # none passes: the whole message is refused
            errors.append((None, reason))

    if scope is not None and good:
        inside = [(i, frame) for i, frame in good if in_meeting(frame, scope)]
        if len(inside) < len(good):
            refuse(
                [i for i, frame in good if not in_meeting(frame, scope)], len(inside), "forbidden"
            )
            good = inside
    if allowance is not None and good:
        granted = min(len(good), allowance[0])
        allowance[0] -= granted
        if granted < len(good):
            refuse([i for i, _ in good[granted:]], granted, "rate_limited")
            good = good[:granted]
    return Outcome([frame for _, frame in good], errors, rejected)


def encode(value: Any, form: Form) -> bytes:
    """A frame (msgspec writes it as the protocol's encoders do), or any other value."""
    if form == "msgpack":
        return msgspec.msgpack.encode(value)
    return msgspec.json.encode(value)


def as_sent(data: bytes, form: Form) -> str | bytes:
    return data.decode() if form == "json-text" else data


def build(items: list[Item], batched: bool, form: Form) -> Sent:
    parts = [encode(item.frame if item.frame is not None else item.bad, form) for item in items]
    if not batched:
        return Sent(as_sent(parts[0], form), tuple(items), batched=False)
    if form == "msgpack":
        data = msgspec.msgpack.encode([msgspec.Raw(part) for part in parts])
    else:
        data = b"[" + b",".join(parts) + b"]"
    whole = "batch_too_large" if len(items) > MAX_FRAMES else None
    return Sent(as_sent(data, form), tuple(items), whole=whole)


meetings = st.sampled_from(MEETINGS)
good_frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(rtc, seq=st.integers(0, 1000), meeting=meetings),
    st.builds(
        lambda meeting: Event(meeting=meeting, participant="p1", kind="join", client_ts=1.0),
        meetings,
    ),
    st.builds(http_sample, seq=st.integers(1, 100)),
    st.just(hello()),
)
items = st.one_of(
    good_frames.map(lambda frame: Item(frame=frame)),
    st.sampled_from(BAD_ELEMENTS).map(lambda bad: Item(bad=bad[0], reason=bad[1])),
)
forms = st.sampled_from(FORMS)


@st.composite
def messages(draw: st.DrawFn) -> Sent:
    """Any message a client may send after its hello, good or not."""
    kind = draw(st.sampled_from(["batch", "batch", "single", "whole", "too_many", "fuzz"]))
    form = draw(forms)
    if kind == "batch":
        return build(draw(st.lists(items, max_size=MAX_FRAMES)), batched=True, form=form)
    if kind == "single":
        return build([draw(items)], batched=False, form=form)
    if kind == "too_many":  # more frames than max_frames_per_message
        batch = draw(st.lists(items, min_size=MAX_FRAMES + 1, max_size=MAX_FRAMES + 3))
        return build(batch, batched=True, form=form)
    if kind == "whole":
        data, reason = draw(st.sampled_from(WHOLE))
        return Sent(
            data.decode() if draw(st.booleans()) and data != b"\xc1" else data, whole=reason
        )
    data = draw(st.binary(max_size=40).filter(lambda data: not decode_message(data).frames))
    return Sent(data, fuzz=True)


def settings(
    budget: int = 100, rate: Rate | None = None, limiter: SourceLimiter | None = None
) -> SessionSettings:
    return SessionSettings(
        limits=Limits(max_message_bytes=1 << 16, max_frames_per_message=MAX_FRAMES),
        heartbeat_interval_s=HEARTBEAT_S,
        max_error_replies_per_interval=budget,
        connection_rate=rate,
        source_limiter=limiter,
    )


def admit_all(_token: str | None) -> Claims | Denied:
    return OPEN


def open_session(
    config: SessionSettings,
    counters: TransportCounters,
    scope: str | None = None,
    text: bool = False,
) -> IngestSession:
    claims = Claims(rights=["ingest"], exp=2**53 - 1, meeting=scope)
    session = IngestSession(config, counters, lambda _token: claims, "7", source="10.0.0.1")
    first = encode_json(hello()).decode() if text else encode_msgpack(hello())
    assert isinstance(session.hello(first, 0.0), Welcome)
    return session


@dataclass
class Totals:
    processed: int = 0  # messages handed on: the ack's msg
    accepted: int = 0
    rejected: int = 0
    acks: list[Ack] = field(default_factory=list)


class IngestSessionMachine(RuleBasedStateMachine):
    """One open session against the model of PROTOCOL.md §7: messages arrive, the loop hands
    their frames on (or not yet), ack intervals end, pings are answered or not, the peer
    closes."""

    @initialize(
        scope=st.none() | meetings,
        burst=st.none() | st.integers(1, 12),
        source_burst=st.none() | st.integers(1, 12),
        budget=st.integers(0, 4),
        text=st.booleans(),
    )
    def open(
        self,
        scope: str | None,
        burst: int | None,
        source_burst: int | None,
        budget: int,
        text: bool,
    ) -> None:
        self.scope = scope
        self.budget = budget
        self.text = text
        self.counters = TransportCounters()
        rate = Rate(SLOW, burst) if burst is not None else None
        limiter = SourceLimiter(SLOW, source_burst) if source_burst is not None else None
        self.session = open_session(settings(budget, rate, limiter), self.counters, scope, text)
        bursts = [b for b in (burst, source_burst) if b is not None]
        self.allowance = [min(bursts)] if bursts else None
        self.totals = Totals()
        self.pending: Outcome | None = None
        self.pending_fuzz = False
        self.pending_rejected = 0
        self.replies_left = budget  # error replies left in this ack interval
        self.now = 0.0
        self.next_ping = HEARTBEAT_S
        self.too_large = 0
        self.closed = False

    @precondition(lambda self: not self.closed and self.pending is None)
    @rule(sent=messages(), dt=st.floats(0, 3))
    def receive(self, sent: Sent, dt: float) -> None:
        self.now += dt
        before = (self.counters.messages, self.counters.bytes, self.counters.frames_rejected)
        frames = self.session.receive(sent.data, self.now)
        rejected = self.counters.frames_rejected - before[2]
        if sent.fuzz:
            assert frames == []
            outcome = Outcome([], [], rejected)
        else:
            outcome = expect(sent, self.scope, self.allowance)
            assert frames == outcome.frames
            assert rejected == outcome.rejected
        size = len(sent.data.encode() if isinstance(sent.data, str) else sent.data)
        assert (self.counters.messages, self.counters.bytes) == (before[0] + 1, before[1] + size)
        self.pending = outcome
        self.pending_fuzz = sent.fuzz

    @precondition(lambda self: not self.closed and self.pending is not None)
    @rule()
    def hand_on(self) -> None:
        """The loop handed the pending message's frames to the consumer."""
        outcome = self.pending
        assert outcome is not None
        replies = self.session.message_processed()
        self.pending = None
        totals = self.totals
        totals.processed += 1
        totals.accepted += len(outcome.frames)
        totals.rejected += outcome.rejected
        # Numbering (§7.2): every reply names the message just processed.
        assert all(reply.msg == totals.processed for reply in replies)
        # Budget (§7.4): replies are cut only when this interval's budget is spent.
        if self.pending_fuzz:
            assert len(replies) == min(self.replies_left, outcome.rejected)
            indexes = [reply.index for reply in replies]
            assert indexes in ([None], sorted(i for i in indexes if i is not None))
        else:
            wanted = outcome.errors[: self.replies_left]
            assert [(reply.index, reply.reason) for reply in replies] == wanted
        self.replies_left -= len(replies)
        for reply in replies:
            self.check_encoding(reply)

    @precondition(lambda self: not self.closed)
    @rule(dt=st.floats(0, 4), answered=st.booleans())
    def ack_interval_ends(self, dt: float, answered: bool) -> None:
        self.now += dt
        tick = self.session.tick(self.now)
        totals = self.totals
        state = (totals.processed, totals.accepted, totals.rejected)
        last = totals.acks[-1] if totals.acks else Ack(msg=0, accepted=0, rejected=0)
        if state == (last.msg, last.accepted, last.rejected):
            assert tick.ack is None  # nothing changed: no ack
        else:
            # An ack counts what was handed on, never the message still pending (§7.5).
            assert tick.ack == Ack(msg=state[0], accepted=state[1], rejected=state[2])
            assert tick.ack.msg >= last.msg
            assert tick.ack.accepted >= last.accepted
            assert tick.ack.rejected >= last.rejected
            totals.acks.append(tick.ack)
            self.check_encoding(tick.ack)
        self.replies_left = self.budget
        assert tick.ping == (self.now >= self.next_ping)
        if tick.ping:
            if answered:
                self.now += 1.0
                self.session.pong(self.now)
                self.next_ping = self.now + HEARTBEAT_S
            else:
                assert self.session.heartbeat_timeout() == Close(1011, "heartbeat timeout")
                assert self.session.close == HEARTBEAT_TIMEOUT
                self.closed = True

    @precondition(lambda self: not self.closed and self.pending is None)
    @rule(code=st.sampled_from([None, 1000, 1001, 1006, 1009]))
    def peer_closes(self, code: int | None) -> None:
        """The connection ends under the session: 1009 is a message over the size limit,
        refused by the WebSocket layer before the session sees it (§2.2)."""
        self.session.peer_closed(code)
        self.too_large += code == 1009
        self.closed = True

    @precondition(lambda self: self.closed)
    @rule(sent=messages())
    def a_closed_session_takes_nothing_more(self, sent: Sent) -> None:
        counters = self.counters.as_dict()
        with pytest.raises(SessionStateError):
            self.session.receive(sent.data, self.now)
        with pytest.raises(SessionStateError):
            self.session.message_processed()
        with pytest.raises(SessionStateError):
            self.session.tick(self.now)
        assert self.counters.as_dict() == counters

    @invariant()
    def counters_add_up(self) -> None:
        if not hasattr(self, "session"):
            return
        counters, totals = self.counters, self.totals
        pending = self.pending or Outcome([], [], 0)
        assert self.session.last_msg == totals.processed
        assert counters.frames_accepted == totals.accepted + len(pending.frames)
        rejected = totals.rejected + pending.rejected + self.too_large
        assert counters.frames_rejected == rejected
        assert sum(counters.rejected_by_reason.values()) == rejected
        assert counters.rejected_by_reason.get("too_large", 0) == self.too_large

    def check_encoding(self, reply: SessionMessage) -> None:
        """§7.1.3: JSON text replies after a text hello, MessagePack binary otherwise."""
        encoded = self.session.encode(reply)
        assert isinstance(encoded, str) == self.text
        if isinstance(encoded, str):
            assert msgspec.json.decode(encoded, type=SessionMessage) == reply
        else:
            assert msgspec.msgpack.decode(encoded, type=SessionMessage) == reply


TestIngestSession = IngestSessionMachine.TestCase


# The hello (§7.1, §7.8).

hello_forms = st.sampled_from(
    [
        (encode_json(hello()).decode(), True),
        (encode_json(hello()), False),
        (encode_msgpack(hello()), False),
        (encode_msgpack([hello()]), False),  # a batch of one hello is one hello
        (b"[" + encode_json(hello()) + b"]", False),
    ]
)


@given(form=hello_forms)
def test_one_hello_frame_opens_the_session(form: tuple[str | bytes, bool]) -> None:
    first, text = form
    counters = TransportCounters()
    session = IngestSession(settings(), counters, admit_all, "17")
    welcome = session.hello(first, 0.0)
    assert welcome == Welcome(
        session="17", ack_interval_s=1.0, max_message_bytes=1 << 16, max_frames=MAX_FRAMES
    )
    assert session.text is text
    assert session.boot == "test-boot"
    assert counters.as_dict()["frames_rejected"] == 0
    assert counters.messages == 0  # the hello is not a data message


@given(sent=messages())
def test_any_other_first_message_closes_with_1008_and_counts_one_rejection(sent: Sent) -> None:
    counters = TransportCounters()
    session = IngestSession(settings(), counters, admit_all, "1")
    outcome = session.hello(sent.data, 0.0)
    bad = [item.reason for item in sent.items if item.frame is None]
    if sent.fuzz:
        assert isinstance(outcome, Close)
        reason = outcome.reason
    elif sent.whole is not None or bad:
        reason = sent.whole or bad[0]  # the decoder's first rejection
    elif len(sent.items) == 1 and isinstance(sent.items[0].frame, Hello):
        assert isinstance(outcome, Welcome)
        return
    else:
        reason = "hello expected"
    assert outcome == Close(1008, reason)
    assert session.close == outcome
    counted = "no_hello" if reason == "hello expected" else reason
    assert counters.rejected_by_reason == {counted: 1}
    assert (counters.frames_rejected, counters.frames_accepted, counters.messages) == (1, 0, 0)
    with pytest.raises(SessionStateError):
        session.receive(encode_msgpack(rtc(1)), 1.0)


def test_no_message_in_time_closes_hello_expected() -> None:
    counters = TransportCounters()
    session = IngestSession(settings(), counters, admit_all, "1")
    assert session.no_hello() == Close(1008, "hello expected")
    assert counters.rejected_by_reason == {"no_hello": 1}


@given(code=st.sampled_from(["unauthorized", "forbidden"]), detail=st.text(max_size=20))
def test_a_refused_token_closes_with_1008_and_its_code(code: str, detail: str) -> None:
    counters = TransportCounters()
    session = IngestSession(settings(), counters, lambda _token: Denied(code, detail), "1")
    assert session.hello(encode_msgpack(hello()), 0.0) == Close(1008, f"{code}: {detail}")
    assert session.denied == Denied(code, detail)
    assert counters.rejected_by_reason == {code: 1}


@pytest.mark.parametrize(("code", "counted"), [(None, {}), (1000, {}), (1009, {"too_large": 1})])
def test_a_connection_closed_before_the_hello_counts_only_a_message_too_large(
    code: int | None, counted: dict[str, int]
) -> None:
    counters = TransportCounters()
    IngestSession(settings(), counters, admit_all, "1").peer_closed(code)
    assert counters.rejected_by_reason == counted


def test_a_message_is_processed_once_and_in_order() -> None:
    session = open_session(settings(), TransportCounters())
    with pytest.raises(SessionStateError):
        session.message_processed()  # nothing received
    assert session.receive(encode_msgpack(rtc(1)), 1.0) == [rtc(1)]
    with pytest.raises(SessionStateError):
        session.receive(encode_msgpack(rtc(2)), 1.0)  # the first is not handed on yet
    assert session.tick(1.0).ack is None  # nor acked
    assert session.message_processed() == []
    assert session.tick(2.0).ack == Ack(msg=1, accepted=1, rejected=0)


@pytest.mark.parametrize(
    ("shutting_down", "close"),
    [(True, (1001, "daemon shutting down")), (False, (1011, "internal error"))],
)
def test_a_session_ended_by_an_exception_closes_with_1001_or_1011(
    shutting_down: bool, close: tuple[int, str]
) -> None:
    session = open_session(settings(), TransportCounters())
    assert session.abort(shutting_down) == Close(*close)
    assert session.close == Close(*close)


# Rate limits over time (§5.2): the allowance refills, and only its exhaustion refuses frames.


@given(
    per_s=st.floats(0.5, 50),
    burst=st.integers(1, 20),
    sends=st.lists(st.tuples(st.floats(0, 2), st.integers(1, 8)), max_size=30),
)
def test_the_connection_rate_passes_its_burst_plus_its_refill_and_no_more(
    per_s: float, burst: int, sends: list[tuple[float, int]]
) -> None:
    session = open_session(settings(rate=Rate(per_s, burst)), TransportCounters())
    now, accepted = 0.0, 0
    for dt, count in sends:
        now += dt
        sent: list[Frame] = [rtc(seq) for seq in range(count)]
        frames = session.receive(encode_msgpack(sent), now)
        session.message_processed()
        assert frames == sent[: len(frames)]  # the first ones pass
        accepted += len(frames)
        assert accepted <= burst + per_s * now + 1e-6
    assert session.accepted == accepted


@given(
    burst=st.integers(1, 12),
    source_burst=st.integers(1, 12),
    counts=st.lists(st.integers(1, MAX_FRAMES), max_size=8),
)
def test_frames_pass_within_the_tighter_of_the_connection_and_source_limits(
    burst: int, source_burst: int, counts: list[int]
) -> None:
    config = settings(rate=Rate(SLOW, burst), limiter=SourceLimiter(SLOW, source_burst))
    session = open_session(config, TransportCounters())
    for count in counts:
        session.receive(encode_msgpack([rtc(seq) for seq in range(count)]), 1.0)
        session.message_processed()
    assert session.accepted == min(sum(counts), burst, source_burst)
    assert session.accepted + session.rejected == sum(counts)


@given(bursts=st.lists(st.integers(1, 8), min_size=2, max_size=3), data=st.data())
def test_sessions_from_one_address_share_its_allowance(
    bursts: list[int], data: st.DataObject
) -> None:
    limiter = SourceLimiter(SLOW, sum(bursts))
    sessions = [open_session(settings(limiter=limiter), TransportCounters()) for _ in bursts]
    for _ in range(10):
        session = data.draw(st.sampled_from(sessions))
        session.receive(encode_msgpack([rtc(1)] * data.draw(st.integers(1, 5))), 1.0)
        session.message_processed()
    total = sum(session.accepted for session in sessions)
    sent = sum(session.accepted + session.rejected for session in sessions)
    assert total == min(sent, sum(bursts))


# The core does no I/O.


def test_the_session_core_imports_no_trio_socket_or_clock() -> None:
    tree = ast.parse(Path(session_module.__file__).read_text(encoding="utf-8"))
    modules = {
        alias.name if isinstance(node, ast.Import) else f"{node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    tops = {module.partition(".")[0] for module in modules}
    assert tops.isdisjoint({"trio", "trio_websocket", "socket", "asyncio", "time", "anyio"})
    assert "time" in sys.stdlib_module_names  # the check names real modules
