"""``/subscribe`` sessions on real loopback sockets: snapshot then deltas, resume (replay or
snapshot), bad client messages, heartbeats, and a slow subscriber that gets a snapshot while
ingest goes on at full rate."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from collector.aggregate.engine import Engine
from collector.app import Daemon
from collector.auth import Auth
from collector.config import from_dict
from collector.fanout.channel import ChannelUnavailable, LocalChannel
from collector.fanout.hub import change
from collector.fanout.publisher import Publisher
from collector.fanout.subscribers import Fanout, FanoutSettings
from collector.http.server import HttpServer, HttpSettings
from protocol import encode_msgpack
from protocol.subscribe import (
    Delta,
    Entities,
    Heartbeat,
    ServerMessage,
    Snapshot,
    SubscribeError,
    TopicMirror,
    Unsubscribed,
    server_json_decoder,
    server_msgpack_decoder,
)
from protocol.tokens import Claims, mint
from tests.helpers import rtc, wait_for

_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()


class Hub:
    """A Fanout on a LocalChannel behind a real HTTP server; publishes by hand."""

    def __init__(self, channel: LocalChannel, fanout: Fanout, port: int) -> None:
        self.channel = channel
        self.fanout = fanout
        self.port = port
        self.states: dict[str, Entities] = {}

    async def set(self, topic: str, entities: Entities, at: float = 1.0) -> None:
        await self.channel.publish([change(topic, self.states.get(topic, {}), entities)], at)
        self.states[topic] = entities

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/subscribe"


async def start_hub(
    nursery: trio.Nursery,
    history: int = 120,
    channel: LocalChannel | None = None,
    auth: Auth | None = None,
    prepare: Callable[[str], Awaitable[None]] | None = None,
    **settings: Any,
) -> Hub:
    channel = channel or LocalChannel(history=history)
    auth = auth or Auth([])
    # Heartbeats start at a random phase: only the tests that want them get them.
    settings.setdefault("heartbeat_interval_s", 3600.0)
    fanout = Fanout(channel, FanoutSettings(**settings), lambda: auth, prepare)
    await nursery.start(channel.serve, fanout.deliver, fanout.on_epoch)
    http = HttpServer(
        http_routes={},
        ws_routes={"/subscribe": lambda ws, _request, wire: fanout.serve_session(ws, wire)},
        settings=HttpSettings(request_timeout_s=2),
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http.serve, listeners)
    return Hub(channel, fanout, listeners[0].socket.getsockname()[1])


@asynccontextmanager
async def subscriber(url: str) -> AsyncIterator[WebSocketConnection]:
    """A client connection (closing its TCP stream itself: trio-websocket 0.12's client leaks
    it when the server closed first)."""
    async with open_websocket_url(url, disconnect_timeout=2) as ws:
        try:
            yield ws
        finally:
            await ws._stream.aclose()


async def send(ws: WebSocketConnection, text: bool = True, **message: Any) -> None:
    await ws.send_message(_json.encode(message).decode() if text else _msgpack.encode(message))


async def receive(ws: WebSocketConnection, timeout_s: float = 5) -> ServerMessage:
    with trio.fail_after(timeout_s):
        data = await ws.get_message()
    if isinstance(data, str):
        return server_json_decoder.decode(data)
    return server_msgpack_decoder.decode(data)


async def nothing_more(ws: WebSocketConnection, wait_s: float = 0.3) -> None:
    with trio.move_on_after(wait_s):
        message = await ws.get_message()
        pytest.fail(f"unexpected message {message!r}")


@pytest.mark.parametrize("text", [True, False], ids=["json", "msgpack"])
async def test_a_subscriber_gets_a_snapshot_then_deltas(nursery: trio.Nursery, text: bool) -> None:
    hub = await start_hub(nursery)
    await hub.set("meetings", {"m1": {"participants": 1, "up_bps": 1e6}})
    async with subscriber(hub.url) as ws:
        await send(ws, text, t="subscribe", topic="meetings")
        snapshot = await receive(ws)
        assert isinstance(snapshot, Snapshot)
        assert snapshot.full
        assert (snapshot.seq, snapshot.entities) == (1, hub.states["meetings"])
        await hub.set("meetings", {"m1": {"participants": 2, "up_bps": 1e6}})
        await hub.set("http", {"api GET /": {"requests_per_s": 3}})  # not subscribed
        delta = await receive(ws)
        assert isinstance(delta, Delta)
        assert (delta.seq, delta.prev, delta.changed) == (2, 1, {"m1": {"participants": 2}})
        await nothing_more(ws)


async def test_deltas_to_an_up_to_date_subscriber_go_straight_to_its_socket(
    nursery: trio.Nursery,
) -> None:
    hub = await start_hub(nursery)
    await hub.set("meetings", {"m1": {"n": 0}})
    async with subscriber(hub.url) as ws:
        await send(ws, False, t="subscribe", topic="meetings")
        mirror = TopicMirror("meetings")
        assert mirror.receive(await receive(ws)) is None  # type: ignore[arg-type]
        for n in range(1, 6):
            await trio.testing.wait_all_tasks_blocked()  # its sender idle, nothing queued
            await hub.set("meetings", {"m1": {"n": n}})
            assert mirror.receive(await receive(ws)) is None  # type: ignore[arg-type]
        assert mirror.entities == {"m1": {"n": 5}}
    assert hub.fanout.counters["deltas_written_now"] == 5


async def test_a_first_subscriber_to_a_live_meeting_gets_all_of_it_at_once(
    nursery: trio.Nursery,
) -> None:
    engine = Engine()
    now = time.time()  # the daemon's clock
    for seq in range(1, 6):
        engine.add([rtc(seq=seq, participant="alice"), rtc(seq=seq, participant="bob")], now)
        now += 1
        engine.tick(now)
    channel = LocalChannel()
    publisher = Publisher(lambda: engine, channel, clock=lambda: now)
    assert await publisher.publish(now)  # the meetings topic; no meeting topic is wanted yet
    hub = await start_hub(nursery, channel=channel, prepare=publisher.prepare)
    async with subscriber(hub.url) as ws:
        await send(ws, t="subscribe", topic="meeting:m1")
        snapshot = await receive(ws)
    assert isinstance(snapshot, Snapshot)
    assert snapshot.seq >= 1
    kinds = {(f["kind"], f.get("participant", e)) for e, f in snapshot.entities.items()}
    assert kinds >= {("participant", "alice"), ("participant", "bob"), ("point", "alice")}


async def test_resume_replays_what_was_missed_as_one_delta(nursery: trio.Nursery) -> None:
    hub = await start_hub(nursery, history=5)
    mirror = TopicMirror("meetings")
    async with subscriber(hub.url) as ws:
        await send(ws, t="subscribe", topic="meetings")
        assert mirror.receive(await receive(ws)) is None  # type: ignore[arg-type]
        await hub.set("meetings", {"a": {"n": 1}})
        assert mirror.receive(await receive(ws)) is None  # type: ignore[arg-type]
    for n in range(2, 5):  # three deltas while away, within the history
        await hub.set("meetings", {"a": {"n": n}, f"b{n}": {"n": n}})
    async with subscriber(hub.url) as ws:
        await send(ws, **msgspec.to_builtins(mirror.resume()))
        replay = await receive(ws)
        assert isinstance(replay, Delta)
        assert (replay.prev, replay.seq) == (1, 4)
        assert mirror.receive(replay) is None
        assert mirror.entities == hub.states["meetings"]
        # Up to date: a resume from the current position sends nothing until the next change.
        await send(ws, **msgspec.to_builtins(mirror.resume()))
        await nothing_more(ws)
        await hub.set("meetings", {"a": {"n": 5}})
        nxt = await receive(ws)
        assert isinstance(nxt, Delta)
        assert (nxt.prev, nxt.seq) == (4, 5)
    assert hub.fanout.counters["resumed"] == 2


async def test_resume_gets_a_snapshot_when_history_or_epoch_do_not_match(
    nursery: trio.Nursery,
) -> None:
    hub = await start_hub(nursery, history=2)
    for n in range(1, 6):
        await hub.set("meetings", {"a": {"n": n}})
    epoch = hub.channel.epoch
    async with subscriber(hub.url) as ws:
        positions: list[dict[str, Any]] = [
            {"epoch": epoch, "seq": 1},
            {"epoch": "another", "seq": 4},
            {},
        ]
        for position in positions:
            await send(ws, t="subscribe", topic="meetings", **position)
            snapshot = await receive(ws)
            assert isinstance(snapshot, Snapshot), position
            assert (snapshot.seq, snapshot.entities) == (5, {"a": {"n": 5}})


async def test_bad_client_messages_get_errors_and_the_session_goes_on(
    nursery: trio.Nursery,
) -> None:
    hub = await start_hub(nursery)
    async with subscriber(hub.url) as ws:
        await ws.send_message("{not json")
        await ws.send_message('{"t": "subscribe", "topic": 5}')
        await ws.send_message('{"t": "publish", "topic": "meetings"}')
        await ws.send_message('{"t": "subscribe", "topic": "' + "x" * 5000 + '"}')
        await send(ws, t="subscribe", topic="meeting:has space")
        await send(ws, t="subscribe", topic="rooms")
        # A topic that is not valid is unknown_topic, whatever its length (§12.6).
        await send(ws, t="subscribe", topic="meeting:" + "m" * 129)
        await send(ws, t="unsubscribe", topic="x" * 3000)
        codes = []
        for _ in range(8):
            error = await receive(ws)
            assert isinstance(error, SubscribeError)
            codes.append(error.code)
        assert codes == ["bad_message"] * 4 + ["unknown_topic"] * 4
        for i in range(64):
            await send(ws, t="subscribe", topic=f"meeting:m{i}")
        await send(ws, t="subscribe", topic="meetings")
        messages = [await receive(ws) for _ in range(65)]
        assert sum(isinstance(m, Snapshot) for m in messages) == 64
        errors = [m for m in messages if isinstance(m, SubscribeError)]
        assert [e.code for e in errors] == ["too_many_topics"]
        await send(ws, t="unsubscribe", topic="meeting:m0")
        assert await receive(ws) == Unsubscribed(topic="meeting:m0")
        await hub.set("meeting:m0", {"p": {"n": 1}})
        await hub.set("meeting:m1", {"p": {"n": 1}})
        delta = await receive(ws)
        assert isinstance(delta, Delta)
        assert delta.topic == "meeting:m1"
    assert hub.fanout.counters["bad_messages"] == 4
    await wait_for(lambda: not hub.fanout.subscribers and not hub.fanout.by_topic)


async def test_heartbeats_flow_and_a_dead_subscriber_is_dropped(nursery: trio.Nursery) -> None:
    hub = await start_hub(nursery, heartbeat_interval_s=0.1, heartbeat_timeout_s=0.3)
    async with subscriber(hub.url) as ws:
        await send(ws, t="subscribe", topic="alerts")
        assert isinstance(await receive(ws), Snapshot)
        beat = await receive(ws)
        assert isinstance(beat, Heartbeat)
        assert beat.epoch == hub.channel.epoch
    # A client that stops reading stops answering pings (its one-message queue is full).
    async with stuck_subscriber(hub.port, nursery) as _:
        await wait_for(lambda: hub.fanout.counters["heartbeat_timeouts"] == 1)
        await wait_for(lambda: not hub.fanout.subscribers)


async def test_a_subscriber_that_does_not_answer_pings_is_closed_with_1011(
    nursery: trio.Nursery,
) -> None:
    # PROTOCOL.md §12.6: no pong within the timeout of a ping closes with 1011, reason
    # "heartbeat timeout" (as on /ingest, §7.6). The client reads everything, pongs nothing.
    hub = await start_hub(nursery, heartbeat_interval_s=0.1, heartbeat_timeout_s=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", hub.port)
    async with stream:
        client = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(client.send(Request(host="127.0.0.1", target="/subscribe")))
        pings = 0
        closed: CloseConnection | None = None
        with trio.fail_after(10):
            while closed is None:
                data = await stream.receive_some()
                assert data, "the daemon closed the TCP connection without a close frame"
                client.receive_data(data)
                for event in client.events():
                    if isinstance(event, AcceptConnection):
                        subscribe = TextMessage(data='{"t":"subscribe","topic":"alerts"}')
                        await stream.send_all(client.send(subscribe))
                    elif isinstance(event, Ping):
                        pings += 1  # and no Pong
                    elif isinstance(event, CloseConnection):
                        closed = event
    assert pings == 1
    assert (closed.code, closed.reason) == (1011, "heartbeat timeout")
    assert hub.fanout.counters["heartbeat_timeouts"] == 1


@asynccontextmanager
async def stuck_subscriber(port: int, nursery: trio.Nursery) -> AsyncIterator[WebSocketConnection]:
    """A subscriber to ``meeting:big`` that reads nothing, with a 4 KB receive buffer: the
    daemon's sends to it block after a few messages."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    async with trio.open_nursery() as inner:
        ws = await wrap_client_stream(
            inner, stream, "127.0.0.1", "/subscribe", message_queue_size=1
        )
        await send(ws, t="subscribe", topic="meeting:big")
        try:
            yield ws
        finally:
            await stream.aclose()
            inner.cancel_scope.cancel()


def big(n: int) -> Entities:
    """A state of about 100 KB that changes completely with ``n``."""
    return {f"p{i}": {"n": n, "pad": "x" * 1000} for i in range(100)}


async def test_a_slow_subscriber_gets_a_snapshot_and_ingest_keeps_its_rate(
    tmp_path: Any,
) -> None:
    config = from_dict(
        {
            "server": {"udp_port": 0, "http_port": 0},
            "storage": {"backend": "none"},
            "fanout": {"subscriber_queue_messages": 4},
        }
    )
    daemon = Daemon(config)
    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        await run_slow_subscriber_scenario(daemon, udp)
    assert daemon.engine.frames_by_kind["rtc"] == 6000


async def run_slow_subscriber_scenario(daemon: Daemon, udp: trio.socket.SocketType) -> None:
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(daemon.serve)
        url = f"ws://127.0.0.1:{addresses.http[1]}/subscribe"

        async def ingest(count: int) -> None:
            """Send ``count`` rtc frames as fast as the daemon takes them; all must count."""
            before = daemon.udp_counters.as_dict()["frames_accepted"]
            for seq in range(1, count + 1):
                await udp.sendto(encode_msgpack(rtc(seq)), addresses.udp)
                if seq % 100 == 0:
                    await trio.lowlevel.checkpoint()
            await wait_for(
                lambda: daemon.udp_counters.as_dict()["frames_accepted"] - before == count
            )

        states: dict[str, Entities] = {}

        async def publish(n: int) -> None:
            new = big(n)
            await daemon.channel.publish([change("meeting:big", states.get("b", {}), new)], n)
            states["b"] = new

        await ingest(2000)  # without subscribers
        async with subscriber(url) as fast, stuck_subscriber(addresses.http[1], nursery):
            await send(fast, t="subscribe", topic="meeting:big")
            mirror = TopicMirror("meeting:big")
            assert mirror.receive(await receive(fast)) is None  # type: ignore[arg-type]
            await wait_for(lambda: len(daemon.fanout.subscribers) == 2)
            for n in range(1, 41):
                await publish(n)
                assert mirror.receive(await receive(fast)) is None  # type: ignore[arg-type]
            await ingest(2000)  # the same with a stuck subscriber whose queue overflowed
            assert daemon.fanout.counters["queues_replaced"] >= 1
            assert mirror.entities == big(40)
        await ingest(2000)
        nursery.cancel_scope.cancel()


async def test_a_subscriber_that_reads_again_converges_to_the_snapshot(
    nursery: trio.Nursery,
) -> None:
    hub = await start_hub(nursery, queue_messages=4)
    mirror = TopicMirror("meeting:big")
    async with stuck_subscriber(hub.port, nursery) as ws:
        # It reads nothing while 60 changes of ~100 KB go out: its queue overflows.
        await wait_for(lambda: len(hub.fanout.subscribers) == 1)
        for n in range(1, 61):
            await hub.set("meeting:big", big(n))
            await trio.sleep(0.001)
        assert hub.fanout.counters["queues_replaced"] >= 1
        messages = 0
        with trio.fail_after(10):
            while mirror.seq != 60:
                message = await receive(ws)
                messages += 1
                assert isinstance(message, Snapshot | Delta)
                assert mirror.receive(message) is None
        assert mirror.entities == big(60)
        assert messages < 60  # some were replaced by a snapshot or merged


class DownChannel(LocalChannel):
    """Snapshots of ``meetings`` fail while ``down``."""

    down = True

    async def snapshot(self, topic: str) -> Snapshot:
        if self.down and topic == "meetings":
            raise ChannelUnavailable("injected outage")
        return await super().snapshot(topic)


async def test_an_unavailable_channel_gets_one_error_and_the_session_goes_on(
    nursery: trio.Nursery,
) -> None:
    channel = DownChannel()
    hub = await start_hub(nursery, channel=channel, heartbeat_interval_s=0.2)
    async with subscriber(hub.url) as ws:
        await send(ws, t="subscribe", topic="meetings")
        await send(ws, t="subscribe", topic="http")
        seen: list[ServerMessage] = [await receive(ws) for _ in range(2)]
        await hub.set("http", {"r": {"n": 1}})
        await hub.set("meetings", {"m": {"n": 1}})
        # the http delta and a heartbeat, while meetings still fails
        seen += [await receive(ws) for _ in range(2)]
        errors = [m for m in seen if isinstance(m, SubscribeError)]
        assert [(e.code, e.topic) for e in errors] == [("unavailable", "meetings")]
        assert any(isinstance(m, Snapshot) and m.topic == "http" for m in seen)
        assert any(isinstance(m, Delta) and m.topic == "http" for m in seen)
        channel.down = False
        with trio.fail_after(5):
            while True:
                message = await receive(ws)
                if isinstance(message, Snapshot):
                    break
        assert (message.topic, message.entities) == ("meetings", {"m": {"n": 1}})


class SlowChannel(LocalChannel):
    """Snapshots take a while, as from Redis: each waits until the test opens the ``gate``;
    they fail while ``down``; counts them."""

    down = False
    fetches = 0

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def snapshot(self, topic: str) -> Snapshot:
        self.fetches += 1
        await self.gate.wait()
        if self.down:
            raise ChannelUnavailable("injected outage")
        return await super().snapshot(topic)


def all_waiting_for(hub: Hub, topic: str, sessions: int) -> Callable[[], bool]:
    """``sessions`` sessions hold ``topic`` and each has begun to fetch its snapshot (its
    sender took the topic off its list to resynchronise): they share the fetch under way."""
    return lambda: (
        len(hub.fanout.subscribers) == sessions
        and all(
            topic in s.state.held and topic not in s.state.resync for s in hub.fanout.subscribers
        )
    )


async def test_subscribers_that_connect_together_share_one_snapshot_fetch(
    nursery: trio.Nursery,
) -> None:
    channel = SlowChannel()
    hub = await start_hub(nursery, channel=channel)
    await hub.set("meetings", {"m1": {"n": 1}, "m2": {"n": 2}})
    got: list[ServerMessage] = []

    async def one() -> None:
        async with subscriber(hub.url) as ws:
            await send(ws, t="subscribe", topic="meetings")
            got.append(await receive(ws))

    async with trio.open_nursery() as clients:
        for _ in range(20):
            clients.start_soon(one)
        await wait_for(all_waiting_for(hub, "meetings", 20))
        channel.gate.set()
    assert channel.fetches == 1
    assert all(
        isinstance(m, Snapshot) and (m.seq, m.entities) == (1, hub.states["meetings"]) for m in got
    ), got
    assert len(got) == 20

    # A failed fetch fails every session that waited on it: each is told once, and each gets
    # the snapshot when the channel is back.
    await wait_for(lambda: not hub.fanout.subscribers)
    channel.down, channel.fetches, channel.gate = True, 0, trio.Event()
    got.clear()
    told: list[ServerMessage] = []

    async def after_outage() -> None:
        async with subscriber(hub.url) as ws:
            await send(ws, t="subscribe", topic="meetings")
            first = await receive(ws)
            told.append(first)
            second = await receive(ws, timeout_s=10)
            got.extend([first, second])

    async with trio.open_nursery() as clients:
        for _ in range(5):
            clients.start_soon(after_outage)
        await wait_for(all_waiting_for(hub, "meetings", 5))
        channel.gate.set()  # the fetch they share fails
        await wait_for(lambda: len(told) == 5)
        # Back up, and as slow: the sessions retry and share one fetch again.
        channel.down, channel.gate = False, trio.Event()
        await wait_for(lambda: all("meetings" in s.state.resync for s in hub.fanout.subscribers))
        await wait_for(all_waiting_for(hub, "meetings", 5))
        channel.gate.set()
    errors = [m for m in got if isinstance(m, SubscribeError)]
    snapshots = [m for m in got if isinstance(m, Snapshot)]
    assert [e.code for e in errors] == ["unavailable"] * 5
    assert len(snapshots) == 5
    assert channel.fetches <= 3  # the retries are shared too (unshared: 10)


def _token(*rights: str, meeting: str | None = None, ttl_s: float = 3600) -> str:
    exp = int(time.time() + ttl_s)
    return mint(TOKEN_KEY, Claims(rights=list(rights), exp=exp, meeting=meeting))  # type: ignore[arg-type]


TOKEN_KEY = "s" * 32


async def test_subscribers_need_a_read_token_and_a_meeting_token_reads_its_meeting_only(
    nursery: trio.Nursery,
) -> None:
    hub = await start_hub(nursery, auth=Auth([TOKEN_KEY]))
    await hub.set("meetings", {"m1": {"participants": 1}, "m2": {"participants": 1}})
    await hub.set("meeting:m1", {"p1": {"mos": 4.1}})
    await hub.set("meeting:m2", {"p9": {"mos": 2.0}})
    async with subscriber(hub.url) as ws:
        await send(ws, t="subscribe", topic="meeting:m1")  # no token yet
        for token in ("bwm1.x.y", _token("read", ttl_s=-10), _token("ingest")):
            await send(ws, t="auth", token=token)
        codes = []
        for _ in range(4):
            error = await receive(ws)
            assert isinstance(error, SubscribeError)
            assert "bwm1." not in error.detail
            codes.append(error.code)
        assert codes == ["unauthorized", "unauthorized", "unauthorized", "forbidden"]
        await send(ws, t="auth", token=_token("read", meeting="m1"))
        for topic in ("meetings", "meeting:m2", "alerts", "http"):
            await send(ws, t="subscribe", topic=topic)
            refused = await receive(ws)
            assert isinstance(refused, SubscribeError)
            assert (refused.code, refused.topic) == ("forbidden", topic)
        await send(ws, t="subscribe", topic="meeting:m1")
        snapshot = await receive(ws)
        assert isinstance(snapshot, Snapshot)
        assert snapshot.entities == {"p1": {"mos": 4.1}}
        await hub.set("meeting:m2", {"p9": {"mos": 1.0}})
        await nothing_more(ws)
    counters = hub.fanout.counters
    assert (counters["refused_unauthorized"], counters["refused_forbidden"]) == (3, 5)


async def test_an_everything_token_reads_every_topic(nursery: trio.Nursery) -> None:
    hub = await start_hub(nursery, auth=Auth([TOKEN_KEY]))
    await hub.set("meetings", {"m1": {"participants": 1}})
    async with subscriber(hub.url) as ws:
        await send(ws, text=False, t="auth", token=_token("read", "ingest"))
        await send(ws, text=False, t="subscribe", topic="meetings")
        snapshot = await receive(ws)
        assert isinstance(snapshot, Snapshot)
        assert snapshot.entities == {"m1": {"participants": 1}}


async def test_the_session_ends_when_its_token_expires(nursery: trio.Nursery) -> None:
    hub = await start_hub(nursery, auth=Auth([TOKEN_KEY]))
    await hub.set("meetings", {"m1": {"participants": 1}})
    async with subscriber(hub.url) as ws:
        # Expiry is in whole seconds: this token lapses within two seconds.
        await send(ws, t="auth", token=_token("read", ttl_s=1))
        await send(ws, t="subscribe", topic="meetings")
        assert isinstance(await receive(ws), Snapshot)
        with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012 - read until it closes
            while True:
                await receive(ws, timeout_s=5)
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "token expired")
    assert hub.fanout.counters["tokens_expired"] == 1
