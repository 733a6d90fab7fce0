"""The consoles' logic without a terminal: ordering, filters, width fitting, keys
(``cli.console``, ``cli.terminal.decode_keys``) and ``bwmon top``'s figures (``cli.top``)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from cli import console
from cli.console import (
    MEETINGS,
    PARTICIPANTS,
    ConsoleState,
    Follow,
    PageState,
    ScreenInput,
    fit_columns,
    natural_key,
    press,
    render_screen,
    sort_rows,
    visible_rows,
)
from cli.tail import TailError, TailOptions, TailSession, render_meetings, run_tail
from cli.terminal import decode_keys
from cli.top import TopError, TopModel, TopOptions, render_top, run_top
from protocol.subscribe import FORBIDDEN, Subscribe, SubscribeError, Unsubscribe
from tests.helpers import free_port

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def visible(line: str) -> str:
    return ANSI.sub("", line)


def meeting(level: str | None, quality: float | None, **more: Any) -> dict[str, Any]:
    return {
        "participants": 3,
        "up_bps": 2_000_000.0,
        "down_bps": 1_900_000.0,
        "quality": quality,
        "level": level,
        "relay_share": 0.0,
        "relay_cost": 0.0,
        "alerts": 0,
        **more,
    }


def participant(level: str, quality: float, relay: str = "direct", **more: Any) -> dict[str, Any]:
    return {
        "kind": "participant",
        "level": level,
        "quality": quality,
        "mos": 4.1,
        "loss_down_pct": 1.0,
        "loss_up_pct": 0.5,
        "rtt_ms": 60.0,
        "jitter_ms": 10.0,
        "up_bps": 1e6,
        "down_bps": 1e6,
        "relay": relay,
        "reasons": [],
        **more,
    }


MEETING_SET = {
    "m-10": meeting("good", 80),
    "m-2": meeting("fair", 55, relay_share=0.5, participants=9),
    "m-1": meeting("bad", 10, alerts=3),
    "m-0": meeting("good", 70),
    "m-3": meeting(None, None),
    "m-11": meeting("poor", 35, up_bps=9e6),
    "other-room": meeting("excellent", 95),
}


def where(state: ConsoleState) -> tuple[str, str | None]:
    """The page and the opened meeting (a call: mypy does not narrow them across keys)."""
    return state.page, state.opened


def ids(rows: list[tuple[str, Any]]) -> list[str]:
    return [i for i, _f in rows]


# -- ordering ----------------------------------------------------------------------------------


def test_ids_compare_with_their_numbers_as_numbers() -> None:
    names = ["m-10", "m-2", "m-1", "m-0", "m-1a", "a", "m-01"]
    assert sorted(names, key=natural_key) == ["a", "m-0", "m-01", "m-1", "m-1a", "m-2", "m-10"]


@given(st.lists(st.text(max_size=8), max_size=20))
def test_natural_order_is_a_total_order_on_any_ids(names: list[str]) -> None:
    ordered = sorted(names, key=natural_key)
    assert sorted(ordered, key=natural_key) == ordered
    assert sorted(ordered) == sorted(names)


def test_worst_first_by_level_then_score_then_id_and_unknown_last() -> None:
    rows = sort_rows(MEETING_SET, console.WORST)
    assert ids(rows) == ["m-1", "m-11", "m-2", "m-0", "m-10", "other-room", "m-3"]
    assert ids(sort_rows(MEETING_SET, console.WORST, reverse=True))[0] == "m-3"


def test_other_sorts_biggest_first_missing_last_and_reversible() -> None:
    by_parts = MEETINGS.sorts[[s.name for s in MEETINGS.sorts].index("participants")]
    rows = ids(sort_rows(MEETING_SET, by_parts))
    assert rows[0] == "m-2"
    assert rows[1:] == ["m-1", "m-11", "m-0", "m-10", "other-room", "m-3"]  # ties: worst first
    by_id = MEETINGS.sorts[1]
    assert ids(sort_rows(MEETING_SET, by_id)) == [
        "m-0",
        "m-1",
        "m-2",
        "m-3",
        "m-10",
        "m-11",
        "other-room",
    ]
    entities = {"a": meeting("good", 70, up_bps=None), "b": meeting("good", 70, up_bps=5.0)}
    up = MEETINGS.sorts[3]
    assert ids(sort_rows(entities, up)) == ["b", "a"]
    assert ids(sort_rows(entities, up, reverse=True)) == ["b", "a"]  # missing stays last


def test_the_plain_table_is_worst_first_too() -> None:
    text = render_meetings(MEETING_SET, {}, [])
    rows = [line.split()[0] for line in text.splitlines()[3:10]]
    assert rows == ["m-1", "m-11", "m-2", "m-0", "m-10", "other-room", "m-3"]


# -- filters -----------------------------------------------------------------------------------


def test_filters_by_text_level_band_and_relay() -> None:
    worst = console.WORST
    assert ids(visible_rows(MEETINGS, MEETING_SET, PageState(filter="M-1"), worst)) == [
        "m-1",
        "m-11",
        "m-10",
    ]
    poor_or_worse = console.BANDS.index("poor")
    assert ids(visible_rows(MEETINGS, MEETING_SET, PageState(band=poor_or_worse), worst)) == [
        "m-1",
        "m-11",
    ]
    assert ids(visible_rows(MEETINGS, MEETING_SET, PageState(relayed_only=True), worst)) == ["m-2"]
    people = {
        "p-1": participant("good", 80),
        "p-2": participant("bad", 5, relay="turn-tcp"),
        "p-3": participant("fair", 50, relay="turn-udp"),
    }
    shown = visible_rows(PARTICIPANTS, people, PageState(relayed_only=True), worst)
    assert ids(shown) == ["p-2", "p-3"]


# -- widths ------------------------------------------------------------------------------------


def screen_input(**more: Any) -> ScreenInput:
    values: dict[str, Any] = {
        "meetings": {f"meeting-with-a-long-name-{n}": meeting("good", 70 + n) for n in range(40)}
        | MEETING_SET,
        "meeting": {},
        "http": {},
        "open_alerts": 2,
        "link": "connected to ws://127.0.0.1:8470/subscribe",
        "connected": True,
        "updated_ago_s": 3.4,
    }
    values.update(more)
    return ScreenInput(**values)


@pytest.mark.parametrize(("width", "height"), [(60, 20), (80, 24), (200, 50), (20, 5), (1, 1)])
@pytest.mark.parametrize("page", ["meetings", "participants", "http"])
def test_every_screen_fits_the_terminal(width: int, height: int, page: str) -> None:
    state = ConsoleState()
    if page == "participants":
        state.page, state.opened = "participants", "m-1"
    elif page == "http":
        state.page = "http"
    routes = {
        f"api GET /v1/{'x' * n}": {
            "service": "api",
            "method": "GET",
            "route": f"/v1/{'x' * n}",
            "requests_per_s": float(n),
            "bytes_in_per_s": 100.0 * n,
            "bytes_out_per_s": 1e6,
            "status_per_s": [0, 10, 0, 0, 0.5],
            "p50_ms": 5.0,
            "p95_ms": 50.0,
            "p99_ms": 250.0,
        }
        for n in range(1, 30)
    }
    people = {f"p-{n}": participant("fair", 50 + n, relay="turn-tls") for n in range(30)}
    inputs = screen_input(meeting=people, http=routes)
    lines, shown = render_screen(state, inputs, width, height, color=True)
    assert len(lines) <= height
    assert all(len(visible(line)) <= width for line in lines), lines
    assert len(visible(lines[-1])) < width or width == 1  # never the bottom-right cell
    assert shown


def test_columns_drop_by_priority_and_the_id_shrinks_last() -> None:
    rows = sort_rows(MEETING_SET, console.WORST)
    cells = [[c.cell(i, f) for c in MEETINGS.columns] for i, f in rows]
    titles = [c.title for c in MEETINGS.columns]
    wide = [titles[i] for i, _w in fit_columns(MEETINGS.columns, cells, 200)]
    assert wide == titles
    at_60 = [titles[i] for i, _w in fit_columns(MEETINGS.columns, cells, 60)]
    assert at_60[:3] == ["MEETING", "LEVEL", "QUALITY"]
    assert "RELAY COST" not in at_60
    assert "RELAY %" not in at_60
    narrow = fit_columns(MEETINGS.columns, [[("x" * 40, None), *c[1:]] for c in cells], 20)
    assert [titles[i] for i, _w in narrow] == ["MEETING", "LEVEL"]
    assert narrow[0][1] == 9  # shrunk to what is left beside LEVEL ("excellent")
    assert sum(w for _i, w in narrow) + console.GAP == 20
    header, lines = console.table_lines(MEETINGS.columns, [("x" * 40, MEETING_SET["m-1"])], 20)
    assert re.fullmatch(r"x+…  bad", lines[0])
    assert len(lines[0]) <= 20
    assert len(header) <= 20


def test_wide_characters_count_as_two_cells() -> None:
    wide = "会議室-東京-" * 8 + "1"
    assert console.cells(wide) == 97
    assert console.cells("e\u0301") == 1  # a combining accent takes no cell
    assert console.cells(console.clip(wide, 20)) <= 20
    entities = {wide: meeting("bad", 3), "m-1": meeting("good", 80)}
    for width in (60, 80):
        lines, _ = render_screen(ConsoleState(), screen_input(meetings=entities), width, 10)
        assert all(console.cells(visible(line)) <= width for line in lines), lines
        assert lines[3].startswith("会議室")
        assert "…" in lines[3]


def test_before_the_first_update_it_waits_and_an_empty_meeting_is_not_live() -> None:
    lines, _ = render_screen(ConsoleState(), screen_input(meetings={}, updated_ago_s=None), 80, 8)
    assert lines[3] == "waiting for the daemon…"
    state = ConsoleState(page="participants", opened="m-9")
    lines, _ = render_screen(state, screen_input(meeting_received=False), 80, 8)
    assert lines[3] == "waiting for the daemon…"
    assert "m-9: 0 participants" in lines[0]
    lines, _ = render_screen(state, screen_input(meeting_received=True), 80, 8)
    assert lines[3] == "no participant live in this meeting"
    assert "meeting m-9: not live" in lines[0]


def test_the_clock_and_the_connection_state_stay_in_a_short_title() -> None:
    lines, _ = render_screen(ConsoleState(), screen_input(updated_ago_s=75.2), 40, 10)
    assert "updated 75 s ago" in lines[0]
    lost = screen_input(connected=False, link="reconnecting… (refused); next try in 2 s")
    lines, _ = render_screen(ConsoleState(), lost, 100, 10)
    assert "reconnecting… (refused); next try in 2 s" in lines[0]
    assert console.ago(None) == "waiting for the first update"
    assert console.ago(4000) == "updated 66 min ago"


# -- keys --------------------------------------------------------------------------------------


def test_keys_sort_filter_select_open_and_come_back() -> None:
    state = ConsoleState()
    rows = ["m-1", "m-11", "m-2"]
    assert press(state, "s", rows) == Follow()
    assert state.sort_key().name == "id"
    for _ in range(len(MEETINGS.sorts) - 1):
        press(state, "s", rows)
    assert state.sort_key().name == "worst"  # the cycle wraps
    press(state, "r", rows)
    assert state.current.reverse

    press(state, "/", rows)
    for key in ["m", "-", "1", "x", "backspace"]:
        press(state, key, rows)
    assert state.typing
    assert state.current.filter == "m-1"
    press(state, "q", rows)  # typed, not quit
    assert not state.quit
    assert state.current.filter == "m-1q"
    press(state, "backspace", rows)
    press(state, "enter", rows)
    assert (state.typing, state.current.filter) == (False, "m-1")
    press(state, "l", rows)
    press(state, "t", rows)
    assert state.current.band == 1
    assert state.current.relayed_only
    press(state, "esc", rows)  # clears every filter, stays
    assert (state.current.filter, state.current.band, state.current.relayed_only) == ("", 0, False)
    assert state.page == "meetings"

    press(state, "down", rows)
    assert state.current.selected == "m-1"
    for key in ["j", "j", "j", "down"]:
        press(state, key, rows)
    assert state.current.selected == "m-2"  # stays on the last
    press(state, "k", rows)
    press(state, "up", rows)
    press(state, "up", rows)
    assert state.current.selected == "m-1"
    press(state, "end", rows)
    assert state.current.selected == "m-2"
    press(state, "home", rows)
    press(state, "down", rows)
    assert press(state, "enter", rows) == Follow(subscribe="meeting:m-11")
    assert (state.page, state.opened) == ("participants", "m-11")

    press(state, "h", ["p-1"])
    assert where(state) == ("http", "m-11")
    press(state, "tab", [])
    assert where(state) == ("participants", "m-11")  # back where h was pressed
    press(state, "/", ["p-1"])
    press(state, "p", ["p-1"])
    press(state, "esc", ["p-1"])  # ends typing and clears
    assert (state.typing, state.current.filter) == (False, "")
    assert press(state, "esc", ["p-1"]) == Follow(unsubscribe="meeting:m-11")
    assert (state.page, state.opened, state.pages["meetings"].selected) == (
        "meetings",
        None,
        "m-11",
    )
    assert state.current.reverse  # the meetings page kept its sort

    press(state, "enter", rows)
    assert press(state, "backspace", ["p-1"]) == Follow(unsubscribe="meeting:m-11")
    press(state, "q", rows)
    assert state.quit


def test_enter_without_a_selection_opens_the_first_row_and_nothing_on_an_empty_page() -> None:
    state = ConsoleState()
    assert press(state, "enter", []) == Follow()
    assert press(state, "enter", ["m-5", "m-6"]) == Follow(subscribe="meeting:m-5")


def test_the_selection_scrolls_into_view() -> None:
    state = ConsoleState()
    inputs = screen_input()
    lines, shown = render_screen(state, inputs, 80, 10)
    for _ in range(20):
        press(state, "down", shown, 6)
    lines, shown = render_screen(state, inputs, 80, 10)
    selected = [line for line in lines if line.startswith("\x1b[7m")]
    assert len(selected) == 1
    assert visible(selected[0]).split()[0] == shown[19]


def test_terminal_bytes_become_keys() -> None:
    assert decode_keys("jk\x1b[A\x1b[B\x1bOA\r\n\t\x7f/") == (
        ["j", "k", "up", "down", "up", "enter", "enter", "tab", "backspace", "/"],
        "",
    )
    assert decode_keys("q\x1b") == (["q"], "\x1b")  # Escape, unless more follows soon
    assert decode_keys("\x1b[") == ([], "\x1b[")
    assert decode_keys("\x1b[5~\x1b[6~\x1b[H\x1b[F") == (["pgup", "pgdn", "home", "end"], "")
    assert decode_keys("\x1bq") == (["esc", "q"], "")
    assert decode_keys("\x1b[200~x") == (["x"], "")  # an unknown sequence is skipped


# -- the session -------------------------------------------------------------------------------


def test_a_session_follows_and_drops_an_opened_meeting() -> None:
    session = TailSession(TailOptions(interactive=True).topics)
    assert list(session.mirrors) == ["meetings", "alerts", "http"]
    assert session.follow("meeting:m-1") == Subscribe(topic="meeting:m-1")
    assert "meeting:m-1" in session.mirrors
    assert Subscribe(topic="meeting:m-1") in session.subscriptions()
    assert session.drop("meeting:m-1") == Unsubscribe(topic="meeting:m-1")
    assert "meeting:m-1" not in session.mirrors


def test_with_meeting_the_console_stays_on_it_and_a_meeting_token_is_enough() -> None:
    options = TailOptions(interactive=True, meeting="m-1")
    assert options.topics == ("meeting:m-1", "alerts", "http")
    session = TailSession(options.topics)
    for topic in ("alerts", "http"):
        refused = SubscribeError(code=FORBIDDEN, topic=topic, detail="token for one meeting")
        assert session.receive(refused).status is not None  # said, not fatal
    state = ConsoleState(page="participants", opened="m-1", pinned=True)
    assert press(state, "esc", []) == Follow()
    assert press(state, "backspace", []) == Follow()
    assert where(state) == ("participants", "m-1")


async def test_with_a_timeout_nothing_answering_is_an_error() -> None:
    options = TailOptions(http_port=free_port(), as_json=True, count=1, timeout_s=0.5)
    err = io.StringIO()
    with trio.fail_after(10), pytest.raises(TailError, match=r"no answer from ws://.* for 0\.5 s"):
        await run_tail(options, io.StringIO(), err)


# -- bwmon top ---------------------------------------------------------------------------------


def health(frames: int, rejected: int, drops: int, uptime: float = 100.0) -> dict[str, Any]:
    udp = {
        "messages": frames,
        "bytes": frames * 100,
        "frames_accepted": frames,
        "frames_rejected": rejected,
        "rejected_by_reason": {"bad_frame": rejected},
        "kernel_drops": drops,
    }
    ws = {
        "messages": 1,
        "bytes": 10,
        "frames_accepted": 2,
        "frames_rejected": 1,
        "rejected_by_reason": {"bad_frame": 1, "too_big": 0},
    }
    return {
        "status": "ok",
        "version": "1.2.3",
        "build": "compiled",
        "uptime_s": uptime,
        "ingest": {"udp": udp, "websocket": ws, "http": {}, "queue_batches": 2},
        "loop": {"lag_s": 0.0015, "lag_max_s": 0.2},
        "consumer": {"last_tick_age_s": 0.3},
        "aggregate": {"meetings": 5, "participants": 20, "refused_by_reason": {"meetings": 4}},
        "storage": {"backend": "mysql", "rows_written": frames // 10, "pending_rows": 7},
        "fanout": {"channel": "redis", "subscribers": 3, "sessions": 4},
        "http": {"connections_open": 6},
    }


def test_top_rates_come_from_counter_differences() -> None:
    model = TopModel()
    first = model.receive(health(100, 4, 0), now=10.0, wall=1.0)
    assert first.transports["udp"].frames_per_s is None
    assert first.rejected_by_reason["bad_frame"].total == 5  # udp's and the WebSocket's
    second = model.receive(health(300, 6, 10), now=12.0, wall=3.0)
    assert second.interval_s == 2.0
    assert second.transports["udp"].frames_per_s == 100.0
    assert second.transports["udp"].rejected_per_s == 1.0
    assert second.transports["websocket"].frames_per_s == 0.0
    assert second.rejected_by_reason["bad_frame"].per_s == 1.0
    assert second.kernel_drops == 10
    assert second.kernel_drops_per_s == 5.0
    assert second.storage.rows_written_per_s == 10.0
    assert second.storage.pending_rows == 7
    assert (second.subscribers, second.loop_lag_s, second.refused_at_caps) == (
        3,
        0.0015,
        {"meetings": 4},
    )
    restarted = model.receive(health(5, 0, 0, uptime=1.0), now=13.0, wall=4.0)
    assert restarted.transports["udp"].frames_per_s is None  # another daemon: no rate


@pytest.mark.parametrize(("width", "height"), [(60, 20), (80, 24), (200, 50), (10, 3)])
def test_top_fits_the_terminal(width: int, height: int) -> None:
    model = TopModel()
    model.receive(health(100, 4, 0), now=10.0, wall=1.0)
    sample = model.receive(health(300, 6, 10), now=12.0, wall=3.0)
    lines = render_top(sample, width, height, where="127.0.0.1:8470", ago_s=2.0, color=True)
    assert len(lines) == height
    assert all(len(visible(line)) <= width for line in lines)
    if width >= 60:
        assert "updated 2 s ago" in lines[0]
        text = "\n".join(lines)
        assert "  100  " in text
        assert "bad_frame" in text
        assert "kernel drops 10 (5.0/s)" in text
    down = render_top(sample, width, height, where="h:1", ago_s=9, problem="refused")
    assert all(len(line) <= width for line in down)
    if width >= 60:
        assert "unreachable: refused; retrying" in down[0]


async def test_top_with_a_timeout_nothing_answering_is_an_error() -> None:
    options = TopOptions(http_port=free_port(), count=1, timeout_s=0.3, interval_s=0.1)
    with trio.fail_after(10), pytest.raises(TopError, match=r"no answer from http://.* for 0\.3 s"):
        await run_top(options, io.StringIO(), io.StringIO())
