"""The browser client end to end: real calls in the system Chromium, relayed or not through the
real coturn, instrumented with the module the real daemon serves (``/client/bwmon.js``), sending
to that daemon over its WebSocket session, with MariaDB storing the minute rows.

For each case the daemon's live state (``/api/meetings/{id}``, ``/api/meetings``) shows each
participant's path as getStats selected it (relayed and over which protocol, or only its peer
relayed) and a relay cost where relayed. Once the monitors have sent their last samples, the
live state's totals of every stream are the browser's own counters in the last getStats()
report the monitor read (the selected pairs' counters as PROTOCOL.md §8.3 counts them: each
pair's from 0), and each participant's relayed bytes are what its relayed samples moved. Once
the monitors are closed (a leave, everything acknowledged) and the daemon has written its
minutes, the stored totals of every stream are the counters of the last sample the client
sent. A daemon killed mid-call (its WebSocket cut, started again on the same state) loses none
of them, and neither does an ICE restart that moves the call from TURN to the direct pair.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from cli.daemon_process import DaemonProcess, start_daemon
from collector.aggregate.rtc import COUNTERS, TOTALS
from protocol import Event, RtcSample, decode_message
from tests.browser.call import CASES, RESTART, SIDES, Call, Case, open_call
from tests.browser.database import query
from tests.browser.turn import TurnServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request, WebSocket

pytestmark = pytest.mark.browser

INTERVAL_MS = 500
T = TypeVar("T")

# The browser's own counters: stats type, its field, the rtc counter they sum into per kind.
BROWSER_COUNTERS = (
    ("outbound-rtp", "bytesSent", "{kind}_bytes_sent"),
    ("outbound-rtp", "packetsSent", "{kind}_packets_sent"),
    ("inbound-rtp", "bytesReceived", "{kind}_bytes_received"),
    ("inbound-rtp", "packetsReceived", "{kind}_packets_received"),
)


@dataclass
class Sent:
    """Every frame the page sent to the daemon: its WebSocket messages and its POSTs to
    ``/ingest`` (the last flush), decoded by the daemon's own decoder."""

    rtc: list[RtcSample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("websocket", self._socket)
        page.on("request", self._request)

    def _socket(self, socket: WebSocket) -> None:
        socket.on("framesent", self._message)

    def _request(self, request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/ingest"):
            self._message(request.post_data_buffer or b"")

    def _message(self, payload: str | bytes) -> None:
        decoded = decode_message(payload.encode() if isinstance(payload, str) else payload)
        assert decoded.errors == []
        for frame in decoded.frames:
            if isinstance(frame, RtcSample):
                self.rtc.append(frame)
            elif isinstance(frame, Event):
                self.events.append(frame)

    def last(self, connection: str) -> RtcSample:
        """The stream's newest sample (the highest ``q``)."""
        return max((f for f in self.rtc if f.connection == connection), key=lambda f: f.seq)


def connection(meeting: str, side: str) -> str:
    return f"{meeting}-{side}"  # as page/monitored.js names them


def streams(meeting: str) -> list[str]:
    return [connection(meeting, side) for side in SIDES]


@contextmanager
def monitored_call(
    browser: Browser, pages_url: str, daemon: DaemonProcess, meeting: str
) -> Iterator[tuple[Call, Sent]]:
    """The call page with both sides' monitors loaded from the daemon, not yet connected."""
    with open_call(browser, pages_url) as call:
        sent = Sent()
        sent.watch(call.page)
        call.page.evaluate(
            """async ([daemon, meeting, intervalMs]) => {
                window.monitored = await import("./monitored.js");
                await window.monitored.instrument(daemon, meeting, intervalMs);
            }""",
            [f"http://127.0.0.1:{daemon.http_port}", meeting, INTERVAL_MS],
        )
        yield call, sent
        assert call.errors == []


def wait_for_samples(call: Call, sent: Sent, connections: list[str], count: int) -> None:
    """Until each connection has sent ``count`` more samples (a few seconds of call)."""
    start = {c: sum(f.connection == c for f in sent.rtc) for c in connections}
    done = wait_for(
        lambda: {c: sum(f.connection == c for f in sent.rtc) - start[c] for c in connections},
        lambda more: min(more.values()) >= count,
        pause=lambda: call.page.wait_for_timeout(100),
    )
    assert min(done.values()) >= count, done


def end_streams(call: Call) -> dict[str, list[dict[str, Any]]]:
    """Removes both connections from their monitors (each sends its last sample; the
    participants stay until the monitors close); returns the last getStats() report each
    monitor read."""
    call.page.evaluate("window.monitored.remove()")
    reads: dict[str, list[dict[str, Any]]] = call.page.evaluate("window.monitored.lastReads")
    return reads


def close_monitors(call: Call, daemon: DaemonProcess) -> None:
    """Closes both monitors, waits until the daemon has read everything."""
    call.page.evaluate("window.monitored.close()")
    stats: dict[str, dict[str, Any]] = call.page.evaluate("window.monitored.stats()")
    for side in SIDES:
        assert (stats[side]["rejected"], stats[side]["dropped"]) == (0, 0), stats
    daemon.settled_health()


def browser_counters(report: list[dict[str, Any]]) -> dict[str, int]:
    """The RTP counters of one getStats() report, summed per kind as PROTOCOL.md §4.3 says."""
    totals: dict[str, int] = defaultdict(int)
    for stat in report:
        for kind_of_stat, name, counter in BROWSER_COUNTERS:
            if stat["type"] == kind_of_stat and name in stat:
                totals[counter.format(kind=stat["kind"])] += stat[name]
    return dict(totals)


def get_json(daemon: DaemonProcess, target: str) -> Any:
    """``target``'s JSON answer, or None for a 404 (a meeting not live yet)."""
    try:
        url = f"http://127.0.0.1:{daemon.http_port}{target}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            if error.code == 404:
                return None
            raise


def wait_for(
    read: Callable[[], T],
    done: Callable[[T], bool],
    timeout_s: float = 15,
    pause: Callable[[], object] = lambda: time.sleep(0.1),
) -> T:
    """``read()`` until ``done`` holds of its value; the last value either way. ``pause``
    waits between two reads (a page's ``wait_for_timeout`` lets Playwright deliver its
    events meanwhile)."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        pause()
        value = read()
    return value


def live_paths(daemon: DaemonProcess, meeting: str) -> dict[str, Any]:
    """What the daemon's live state shows of the meeting's paths."""
    quoted = urllib.parse.quote(meeting, safe="")
    state = get_json(daemon, f"/api/meetings/{quoted}")
    summary = (get_json(daemon, "/api/meetings") or {"meetings": {}})["meetings"].get(meeting)
    participants = {} if state is None else state["participants"]
    return {
        "paths": {
            side: {k: shown[k] for k in ("relay", "turn_server", "remote_relayed")}
            for side, shown in participants.items()
        },
        "relayed": {side: shown["relayed_bytes"] > 0 for side, shown in participants.items()},
        "relay_cost": None if summary is None else summary["relay_cost"],
    }


def expected_paths(case: Case, turn: TurnServer) -> dict[str, Any]:
    return {
        side: {
            "relay": f"turn-{case.path(side)}" if case.relayed(side) else "direct",
            "turn_server": turn.server if case.relayed(side) else None,
            "remote_relayed": not case.relayed(side) and case.relayed(case.peer(side)),
        }
        for side in SIDES
    }


def assert_live_paths(daemon: DaemonProcess, meeting: str, case: Case, turn: TurnServer) -> None:
    expected = expected_paths(case, turn)
    relayed = {side: case.relayed(side) for side in SIDES}
    shown = wait_for(
        lambda: live_paths(daemon, meeting),
        lambda live: (
            live["paths"] == expected
            and live["relayed"] == relayed
            and live["relay_cost"] is not None
            and (live["relay_cost"] > 0) == any(relayed.values())
        ),
    )
    assert shown["paths"] == expected, shown
    assert shown["relayed"] == relayed, shown
    if any(relayed.values()):
        assert shown["relay_cost"] > 0, shown
    else:
        assert shown["relay_cost"] == 0, shown


def stored_totals(database: str, meeting: str) -> dict[str, dict[str, float]]:
    """Each stream's counters summed over its minute rows (every minute, every segment)."""
    sums = ", ".join(f"SUM({name})" for name in COUNTERS)
    rows = query(
        f"SELECT connection, {sums} FROM rtc_minute WHERE meeting = '{meeting}' "
        "GROUP BY connection",
        database,
    )
    return {
        str(row[0]): {
            name: float(str(value)) for name, value in zip(COUNTERS, row[1:], strict=True) if value
        }
        for row in rows
    }


PAIR_COUNTERS = ("pair_bytes_sent", "pair_bytes_received")


@dataclass
class PairCount:
    """What PROTOCOL.md §8.3 makes of a stream's selected-pair counters: each pair's counted
    from 0 (a new pair's first values in full), a pair selected again going on from its own
    last values; and of those bytes, the ones moved while this side relayed (``lct`` relay)."""

    totals: dict[str, int]
    relayed: int
    pairs: dict[str | None, list[int]]  # each pair's last values


def pair_count(sent: Sent, stream: str) -> PairCount:
    frames = {f.seq: f for f in sent.rtc if f.connection == stream}  # a resent one once
    pairs: dict[str | None, list[int]] = {}
    totals = dict.fromkeys(PAIR_COUNTERS, 0)
    pair, relayed, relayed_bytes = None, False, 0
    for frame in sorted(frames.values(), key=lambda f: f.seq):
        if frame.local_candidate is not None:
            relayed = frame.local_candidate == "relay"
        if frame.pair_id is not None:
            if pair is None and None in pairs:  # counters sent before any pair id: its own
                pairs[frame.pair_id] = pairs.pop(None)
            pair = frame.pair_id
        last = pairs.setdefault(pair, [0, 0])
        for k, name in enumerate(PAIR_COUNTERS):
            value = getattr(frame, name)
            if value is None:
                continue
            delta = value - last[k] if value >= last[k] else 0  # lower: a reset
            last[k] = value
            totals[name] += delta
            relayed_bytes += delta if relayed else 0
    return PairCount(totals, relayed_bytes, pairs)


def pair_totals(sent: Sent, stream: str) -> dict[str, int]:
    return pair_count(sent, stream).totals


def live_streams(daemon: DaemonProcess, meeting: str) -> dict[str, dict[str, Any]]:
    """The live state's participants, each with its streams by connection."""
    quoted = urllib.parse.quote(meeting, safe="")
    state = get_json(daemon, f"/api/meetings/{quoted}")
    participants: dict[str, dict[str, Any]] = {} if state is None else state["participants"]
    for shown in participants.values():
        shown["streams"] = {s["connection"]: s for s in shown["streams"]}
    return participants


def assert_live_totals(
    call: Call,
    daemon: DaemonProcess,
    meeting: str,
    sent: Sent,
    reads: dict[str, list[dict[str, Any]]],
) -> None:
    """Once the daemon has the last sample of both streams (the ``q`` it shows is the last
    one sent), each stream's live totals are the browser's counters of the last getStats()
    the monitor read, and its pair bytes and the participant's relayed bytes what §8.3 makes
    of the pair counters of every sample sent (``pair_count``)."""

    def shown() -> dict[str, dict[str, Any]]:
        call.page.wait_for_timeout(100)  # Playwright hands over the frames sent meanwhile
        return live_streams(daemon, meeting)

    def caught_up(participants: dict[str, dict[str, Any]]) -> bool:
        return all(
            participants.get(side, {}).get("streams", {}).get(c, {}).get("q") == sent.last(c).seq
            for side, c in ((side, connection(meeting, side)) for side in SIDES)
        )

    participants = wait_for(shown, caught_up)
    assert caught_up(participants), participants
    for side in SIDES:
        stream = connection(meeting, side)
        browser = browser_counters(reads[side])
        count = pair_count(sent, stream)
        expected = {**browser, **count.totals}
        live = participants[side]["streams"][stream]
        assert live["boot"] is not None
        assert dict(zip(TOTALS, live["bytes"], strict=True)) == {n: expected[n] for n in TOTALS}
        assert participants[side]["relayed_bytes"] == count.relayed
        # the last values of the pair selected last are the browser's too
        stats = {s["id"]: s for s in reads[side]}
        (transport,) = [s for s in reads[side] if s.get("selectedCandidatePairId")]
        pair = stats[transport["selectedCandidatePairId"]]
        assert count.pairs[pair["id"]] == [pair["bytesSent"], pair["bytesReceived"]]


def assert_no_byte_lost(
    database: str, meeting: str, sent: Sent, reads: dict[str, list[dict[str, Any]]]
) -> None:
    """The stored totals are the last sample's counters, which are the browser's. The selected
    pair's counters start again with each pair (``pair_totals``)."""
    stored = stored_totals(database, meeting)
    assert sorted(stored) == sorted(connection(meeting, side) for side in SIDES)
    for side in SIDES:
        last = sent.last(connection(meeting, side))
        counters = {name: getattr(last, name) for name in COUNTERS if getattr(last, name)}
        counters.update(pair_totals(sent, connection(meeting, side)))
        assert stored[connection(meeting, side)] == pytest.approx(counters)
        browser = browser_counters(reads[side])
        assert {name: counters[name] for name in browser} == browser
        assert all(browser.values())  # audio and video, sent and received


def daemon_config(tmp_path: Path, database: str) -> Path:
    config = tmp_path / "collector.toml"
    config.write_text(
        "[storage]\nbackend = 'mysql'\nmysql_user = 'root'\n"
        f"mysql_database = '{database}'\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n"
        # relay_cost is shown to 4 decimals: at this price a short call's first kB show
        "[aggregate]\nrelay_price_per_gb = 1000.0\n"
    )
    return config


@pytest.fixture
def config(tmp_path: Path, database: str) -> Path:
    return daemon_config(tmp_path, database)


@pytest.mark.parametrize("name", list(CASES))
def test_each_path_is_shown_live_and_every_byte_stored(
    browser: Browser,
    pages_url: str,
    turn: TurnServer,
    config: Path,
    database: str,
    tmp_path: Path,
    name: str,
) -> None:
    case, meeting = CASES[name], f"call-{name}"
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config)])
    try:
        with monitored_call(browser, pages_url, daemon, meeting) as (call, sent):
            call.start(case, turn)
            assert_live_paths(daemon, meeting, case, turn)
            wait_for_samples(call, sent, streams(meeting), 3)
            reads = end_streams(call)
            assert_live_totals(call, daemon, meeting, sent, reads)
            close_monitors(call, daemon)
        assert daemon.stop() == 0  # writes every open minute
    finally:
        daemon.stop()
    assert_no_byte_lost(database, meeting, sent, reads)
    kinds = [(e.participant, e.kind) for e in sent.events]
    assert {("a", "join"), ("b", "join"), ("a", "leave"), ("b", "leave")} <= set(kinds)


def test_a_daemon_killed_mid_call_loses_no_byte(
    browser: Browser,
    pages_url: str,
    turn: TurnServer,
    config: Path,
    database: str,
    tmp_path: Path,
) -> None:
    case, meeting = CASES["one-side"], "call-daemon-killed"
    first = start_daemon(tmp_path / "first.log", ["--config", str(config)])
    ports = ["--udp-port", str(first.udp_port), "--http-port", str(first.http_port)]
    second = None
    try:
        with monitored_call(browser, pages_url, first, meeting) as (call, sent):
            call.start(case, turn)
            assert_live_paths(first, meeting, case, turn)
            wait_for_samples(call, sent, streams(meeting), 3)
            first.process.kill()  # the WebSocket sessions end without a close
            first.process.wait()
            second = start_daemon(tmp_path / "second.log", ["--config", str(config), *ports])
            back = wait_for(
                lambda: call.page.evaluate("window.monitored.stats()"),
                lambda stats: all(stats[s]["connected"] and stats[s]["reconnects"] for s in SIDES),
            )
            assert all(back[s]["connected"] and back[s]["reconnects"] for s in SIDES), back
            assert_live_paths(second, meeting, case, turn)
            wait_for_samples(call, sent, streams(meeting), 3)  # on the new sessions
            reads = end_streams(call)
            assert_live_totals(call, second, meeting, sent, reads)
            close_monitors(call, second)
        assert second.stop() == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert_no_byte_lost(database, meeting, sent, reads)


def test_an_ice_restart_from_turn_to_direct_loses_no_byte(
    browser: Browser,
    pages_url: str,
    turn: TurnServer,
    config: Path,
    database: str,
    tmp_path: Path,
) -> None:
    meeting = "call-ice-restart"
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config)])
    try:
        with monitored_call(browser, pages_url, daemon, meeting) as (call, sent):
            call.start(RESTART, turn)
            assert_live_paths(daemon, meeting, RESTART, turn)
            call.restart_ice(turn)
            direct = wait_for(
                lambda: live_paths(daemon, meeting)["paths"],
                lambda paths: paths == expected_paths(CASES["direct"], turn),
            )
            assert direct == expected_paths(CASES["direct"], turn)
            reads = end_streams(call)
            assert_live_totals(call, daemon, meeting, sent, reads)
            close_monitors(call, daemon)
        assert daemon.stop() == 0
    finally:
        daemon.stop()
    assert_no_byte_lost(database, meeting, sent, reads)
    restarts = [e for e in sent.events if e.kind == "reconnect"]
    assert {e.participant for e in restarts} == set(SIDES)
    for side in SIDES:
        pairs = {f.pair_id for f in sent.rtc if f.connection == connection(meeting, side)}
        assert len(pairs) >= 2
