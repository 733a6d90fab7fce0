"""The subscriber's state without I/O (``collector.fanout.session``), under any interleaving of
publishes, lost deliveries, full sockets, client messages, epoch changes, channel outages and
the sender's turns (hypothesis's stateful testing).

The model: a ``DeltaLog`` is the channel (it applies every delta one by one: the oracle of a
topic's state), a ``TopicMirror`` per topic is the client (``protocol.subscribe.apply``), and the
rules do what ``collector.fanout.subscribers`` does around the state, with every await of its
sender (a fetch, a write) a point where anything else may happen. The properties:

* the client never gets a delta that does not follow what it holds (same epoch, ``prev`` its
  ``seq``), nor anything of a topic it does not hold;
* a gap (a delta the client did not get) always leads to a resynchronisation;
* merged deltas equal applying them one by one: once the sender has caught up, the client's
  copy of every topic is the channel's state at the channel's position;
* at most one ``unavailable`` error per topic and outage.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import collector.fanout.session
from collector.auth import Auth
from collector.fanout.channel import ChannelUnavailable
from collector.fanout.hub import DeltaLog, change
from collector.fanout.session import Position, SubscriberState
from protocol.subscribe import (
    Alert,
    Delta,
    Entities,
    ServerMessage,
    Snapshot,
    SubscribeError,
    TopicMirror,
    apply,
)

TOPICS = ("meetings", "alerts")
_json = msgspec.json.Encoder()


@dataclass(slots=True)
class Plain:
    """What the loop's ``Encoded`` is to the state: a message it queues."""

    message: ServerMessage


class Counters(dict[str, int]):
    def __missing__(self, key: str) -> int:
        return 0


def new_state(queue_messages: int = 64) -> SubscriberState[Plain]:
    return SubscriberState(True, queue_messages, Plain, Counters())


def client_message(**message: Any) -> str:
    return _json.encode(message).decode()


entities_st = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.dictionaries(
        st.sampled_from(["n", "x", "y"]), st.integers(0, 3) | st.none(), min_size=1, max_size=2
    ),
    max_size=3,
)


class SubscriberMachine(RuleBasedStateMachine):
    @initialize(
        history=st.integers(1, 4),
        queue_messages=st.integers(1, 6),
        topics=st.lists(st.sampled_from(TOPICS), unique=True),
    )
    def start(self, history: int, queue_messages: int, topics: list[str]) -> None:
        self.history = history
        self.epochs = 0
        self.log = DeltaLog(self._epoch(), history)
        self.states: dict[str, Entities] = {}
        self.state = new_state(queue_messages)
        self.auth = Auth([])
        self.mirrors: dict[str, TopicMirror] = {}  # the topics the client subscribed to
        self.told: set[str] = set()  # topics told "unavailable" since their last fetch
        self.down = False
        self.socket_full = False
        # The sender's turn: None (waiting), "resync" (between two fetches), "fetching" (a fetch
        # under way), "queue" (the queue's messages to write)
        self.turn: str | None = None
        self.fetch: tuple[str, Position] | None = None
        self.fetched: Snapshot | list[Delta] | ChannelUnavailable | None = None
        self.failed: set[str] = set()
        for topic in topics:
            self.subscribe(topic, resume=False)
        self.whole_turn()

    def _epoch(self) -> str:
        self.epochs += 1
        return f"e{self.epochs}"

    # -- the client -------------------------------------------------------------------------

    def client_gets(self, messages: list[Plain]) -> None:
        for plain in messages:
            message = plain.message
            if isinstance(message, Snapshot | Delta):
                mirror = self.mirrors.get(message.topic)
                assert mirror is not None, f"{message.topic} is not held by the client"
                if isinstance(message, Delta):
                    assert (mirror.epoch, mirror.seq) == (message.epoch, message.prev), (
                        "a delta that does not follow what the client holds",
                        (mirror.epoch, mirror.seq),
                        message,
                    )
                assert mirror.receive(message) is None
            elif isinstance(message, SubscribeError) and message.code == "unavailable":
                assert message.topic is not None
                assert message.topic not in self.told, "told twice in one outage"
                self.told.add(message.topic)
            elif isinstance(message, Alert):
                mirror = self.mirrors.get(message.topic)
                assert mirror is not None
                assert message.epoch == mirror.epoch
                assert mirror.seq is not None
                assert message.seq > mirror.seq

    def send(self, data: str) -> None:
        received = self.state.receive(data, self.auth)
        # The loop sends replies straight when it may, else queues them.
        for reply in received.replies:
            plain = Plain(reply)
            if self.state.idle and not self.socket_full:
                self.state.wrote(1)
                self.client_gets([plain])
            else:
                self.state.offer_reply(plain)

    @rule(topic=st.sampled_from(TOPICS), resume=st.booleans())
    def subscribe(self, topic: str, resume: bool) -> None:
        mirror = self.mirrors.get(topic)
        if resume and mirror is not None:
            position = msgspec.to_builtins(mirror.resume())
            self.send(_json.encode(position).decode())
        else:
            self.mirrors[topic] = TopicMirror(topic)
            self.send(client_message(t="subscribe", topic=topic))

    @rule(topic=st.sampled_from(TOPICS))
    def unsubscribe(self, topic: str) -> None:
        self.send(client_message(t="unsubscribe", topic=topic))
        self.mirrors.pop(topic, None)

    # -- the channel ------------------------------------------------------------------------

    def deliver(self, delta: Delta) -> None:
        """``Fanout.deliver`` for this one subscriber."""
        if delta.topic not in self.state.held:
            return
        alerts = [
            Plain(Alert(topic=delta.topic, epoch=delta.epoch, seq=delta.seq, alert=alert))
            for alert in delta.alerts
        ]
        out = [*alerts, Plain(delta)]
        if self.state.follows(delta) and self.state.idle and not self.socket_full:
            self.state.wrote(len(out))
            self.state.delivered(delta)
            self.client_gets(out)
            return
        for plain in out:
            self.state.offer(plain)

    @rule(
        topic=st.sampled_from(TOPICS), entities=entities_st, lost=st.booleans(), full=st.booleans()
    )
    def publish(self, topic: str, entities: Entities, lost: bool, full: bool = False) -> None:
        self.socket_full = full
        new = {e: dict(f) for e, f in entities.items()}
        topic_change = change(topic, self.states.get(topic, {}), new)
        if topic == "alerts" and topic_change:
            topic_change.events = [{"id": e, "state": "raised"} for e in topic_change.changed]
        if not topic_change:
            return
        delta = self.log.append(topic_change, 1.0)
        self.states[topic] = new
        if not lost:  # a lost delivery (Redis pub/sub dropped it) is a gap
            self.deliver(delta)

    @rule(
        topic=st.sampled_from(TOPICS),
        steps=st.lists(st.tuples(entities_st, st.booleans()), min_size=2, max_size=6),
    )
    def publish_several(self, topic: str, steps: list[tuple[Entities, bool]]) -> None:
        for entities, lost in steps:
            self.publish(topic, entities, lost)

    @rule()
    def epoch_changes(self) -> None:
        """The channel lost its state: a new epoch, every topic published again."""
        self.log = DeltaLog(self._epoch(), self.history)
        self.state.epoch_changed()
        for topic, entities in self.states.items():
            if entities:
                self.deliver(self.log.append(change(topic, {}, entities), 2.0))

    # -- the sender's turn, await by await --------------------------------------------------

    @precondition(lambda self: self.turn is None)
    @rule()
    def whole_turn(self) -> None:
        """A turn with nothing else happening at its awaits."""
        self.fetch_starts(self.down)
        while self.turn != "queue":
            if self.turn == "resync":
                self.fetch_starts(self.down)
            else:
                self.fetch_ends()
        self.queue_written()

    @precondition(lambda self: self.turn in (None, "resync"))
    @rule(down=st.booleans())
    def fetch_starts(self, down: bool) -> None:
        """The turn's next fetch (``down``: the channel is unavailable for it)."""
        self.down = down
        self.state.sending = True
        self.fetch = self.state.next_resync()
        if self.fetch is None:
            self.turn = "queue"
            return
        topic, (epoch, seq) = self.fetch
        if self.down:
            self.fetched = ChannelUnavailable("down")
        else:
            missed = self.log.since(topic, epoch, seq) if seq is not None else None
            self.fetched = self.log.snapshot(topic) if missed is None else missed
        self.turn = "fetching"

    @precondition(lambda self: self.turn == "fetching")
    @rule()
    def fetch_ends(self) -> None:
        assert self.fetch is not None
        topic, position = self.fetch
        fetched = self.fetched
        if isinstance(fetched, ChannelUnavailable):
            self.client_gets(self.state.unavailable_now(topic, str(fetched)))
            self.failed.add(topic)
        else:
            self.told.discard(topic)
            if isinstance(fetched, Snapshot):
                out = self.state.snapshot_fetched(fetched, Plain(fetched))
            else:
                assert fetched is not None
                out = self.state.missed_fetched(topic, position, fetched)
            self.client_gets(out)
        self.turn = "resync"

    @precondition(lambda self: self.turn == "queue")
    @rule()
    def queue_written(self) -> None:
        positions = {t: (m.epoch, m.seq) for t, m in self.mirrors.items()}
        pending = [p.message for p in self.state.queue]
        self.client_gets(self.state.take_queued())
        # A gap always leads to a resynchronisation: a queued delta newer than what the client
        # held was either written (or merged into what was) or its topic resynchronises.
        for message in pending:
            if not isinstance(message, Delta) or message.topic not in self.mirrors:
                continue
            epoch, seq = positions.get(message.topic, (None, None))
            if seq is None or message.epoch != epoch or message.seq <= seq:
                continue  # old news, or a snapshot is due (the topic holds no position)
            mirror = self.mirrors[message.topic]
            if mirror.seq is None or message.seq > mirror.seq:
                assert message.topic in self.state.resync, ("a gap left alone", message)
        self.state.retry(self.failed)
        self.failed.clear()
        self.state.sending = False
        self.turn = None

    # -- convergence ------------------------------------------------------------------------

    @invariant()
    def holds_what_the_client_subscribed_to(self) -> None:
        assert set(self.state.held) == set(self.mirrors)
        assert len(self.state.queue) <= self.state.queue_messages

    @invariant()
    def positions_agree_with_the_client(self) -> None:
        """The state's position of a topic is the client's, but while the topic is to be
        resynchronised (or being fetched, or waiting to be tried again)."""
        fetching = self.fetch[0] if self.turn == "fetching" and self.fetch else None
        for topic, mirror in self.mirrors.items():
            if topic in self.state.resync or topic in self.failed or topic == fetching:
                continue
            assert self.state.held[topic] == (mirror.epoch, mirror.seq), topic

    def teardown(self) -> None:
        """Once the channel is back, a last delta of every topic has been delivered and the
        sender has caught up, the client holds every subscribed topic as the channel does: the
        merged deltas it got equal the deltas applied one by one."""
        if not hasattr(self, "state"):
            return
        self.down = False
        self.socket_full = False
        for topic in TOPICS:  # a gap is seen at the next delta; make sure there is one
            last = {**self.states.get(topic, {}), "last": {"n": self.log.snapshot(topic).seq}}
            self.publish(topic, last, lost=False)
        for _ in range(8 * len(TOPICS) + 8):
            if self.turn in (None, "resync"):
                self.fetch_starts(down=False)
            elif self.turn == "fetching":
                self.fetch_ends()
            else:
                self.queue_written()
            if self.turn is None and self.idle_now():
                break
        assert self.idle_now()
        for topic, mirror in self.mirrors.items():
            expected = self.log.snapshot(topic)
            assert (mirror.epoch, mirror.seq) == (expected.epoch, expected.seq), topic
            assert mirror.entities == expected.entities, topic
            assert self.state.held[topic] == (expected.epoch, expected.seq)

    def idle_now(self) -> bool:
        return not self.state.resync and not self.state.queue


SubscriberMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
TestSubscriberState = SubscriberMachine.TestCase


def test_a_resume_fetched_before_the_client_subscribed_afresh_is_not_written() -> None:
    """The client resumes, then subscribes afresh while the missed deltas are being fetched:
    they would not follow what it holds now (nothing); it gets the snapshot of its new
    subscription instead."""
    machine = SubscriberMachine()
    machine.start(history=3, queue_messages=4, topics=["meetings"])
    machine.publish("meetings", {"a": {"n": 1}}, lost=False)
    machine.publish("meetings", {"a": {"n": 2}}, lost=True)
    machine.subscribe("meetings", resume=True)
    machine.fetch_starts(down=False)
    assert isinstance(machine.fetched, list)  # the delta missed since seq 1
    machine.subscribe("meetings", resume=False)
    machine.fetch_ends()  # writes nothing
    assert machine.mirrors["meetings"].seq is None
    machine.fetch_starts(down=False)
    machine.fetch_ends()
    assert machine.mirrors["meetings"].entities == {"a": {"n": 2}}
    machine.teardown()


# -- merging, directly ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(entities_st, min_size=1, max_size=8), entities_st)
def test_queued_deltas_go_out_merged_as_if_applied_one_by_one(
    states: list[Entities], start: Entities
) -> None:
    log = DeltaLog("e", history=100)
    if start:
        log.append(change("meetings", {}, start), 0.0)
    snapshot = log.snapshot("meetings")
    state = new_state(queue_messages=100)
    state.receive(client_message(t="subscribe", topic="meetings"), Auth([]))
    assert state.next_resync() == ("meetings", (None, None))
    assert state.snapshot_fetched(snapshot, Plain(snapshot)) == [Plain(snapshot)]
    one_by_one = {e: dict(f) for e, f in snapshot.entities.items()}
    before = start
    for entities in states:
        step = change("meetings", before, entities)
        before = entities
        if step:
            delta = log.append(step, 1.0)
            apply(one_by_one, delta)
            assert state.offer(Plain(delta))
    out = [p.message for p in state.take_queued()]
    assert len(out) <= 1
    client = {e: dict(f) for e, f in snapshot.entities.items()}
    for merged in out:
        assert isinstance(merged, Delta)
        assert (merged.prev, merged.seq) == (snapshot.seq, log.snapshot("meetings").seq)
        apply(client, merged)
    assert client == one_by_one == log.snapshot("meetings").entities
    assert state.held["meetings"] == ("e", log.snapshot("meetings").seq)


def test_a_queue_that_overflows_is_replaced_by_a_resynchronisation() -> None:
    state = new_state(queue_messages=2)
    state.receive(client_message(t="subscribe", topic="meetings"), Auth([]))
    state.receive(client_message(t="subscribe", topic="http"), Auth([]))
    state.resync.clear()
    heartbeat = Plain(state.heartbeat(5.0, "e"))
    assert state.offer(heartbeat)
    assert state.offer_reply(heartbeat)
    assert not state.offer_reply(heartbeat)  # a reply is dropped, not worth a resync
    assert not state.offer(heartbeat)
    assert (list(state.queue), state.resync, state.replaced) == ([], {"meetings", "http"}, 1)


def test_a_token_expiry_closes_with_1008_and_the_heartbeat_takes_now() -> None:
    state = new_state()
    assert state.expires_in(100.0) == float("inf")  # no token yet
    assert state.heartbeat(12.5, "e1").at == 12.5
    state.heartbeat_missed()
    assert state.close == (1011, "heartbeat timeout")
    assert state.counters["heartbeat_timeouts"] == 1


# -- no I/O -----------------------------------------------------------------------------------


def test_the_state_imports_no_trio_socket_or_clock() -> None:
    path = Path(collector.fanout.session.__file__)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.partition(".")[0])
    assert imported.isdisjoint({"trio", "trio_websocket", "socket", "asyncio", "time"})
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, collector.fanout.session;"
            "print(sorted({'trio', 'socket', 'asyncio', 'trio_websocket'} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
