"""The pages of ``bwmon tail``'s console, without I/O: rows sorted and filtered, columns fitted
to the terminal's width, keys turned into changes of state.

A page is a table over one topic's entities: the live meetings, one meeting's participants,
or the HTTP routes. ``ConsoleState`` holds what the keys chose (page, sort, filters, the
selected row); ``press`` applies one key and returns what the connection must do (subscribe to
an opened meeting, unsubscribe from a closed one); ``render_screen`` draws a whole screen as
lines no wider than the terminal. Never reads the terminal nor the clock: the caller passes
both.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

PageName = Literal["meetings", "participants", "http"]
Fields = Mapping[str, Any]
Cell = tuple[str, str | None]  # text, ANSI colour code

LEVELS: Final = ("bad", "poor", "fair", "good", "excellent")  # worst first
_LEVEL_RANK: Final = {level: rank for rank, level in enumerate(LEVELS)}
_LEVEL_COLOURS: Final = {
    "excellent": "32",
    "good": "32",
    "fair": "33",
    "poor": "31",
    "bad": "1;31",
}
# ``l`` cycles through these: every row, then rows at this level or worse.
BANDS: Final[tuple[str | None, ...]] = (None, "bad", "poor", "fair", "good")
ELLIPSIS: Final = "…"
GAP: Final = 2  # spaces between two columns
_RESET: Final = "\x1b[0m"
_SELECTED: Final = "7"  # reverse video


# -- ordering --------------------------------------------------------------------------------

_DIGITS: Final = re.compile(r"([0-9]+)")


def natural_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """``m-2`` before ``m-10``: runs of digits compare as numbers, the rest as text."""
    return tuple(
        (0, int(part), part) if part[0] in "0123456789" else (1, 0, part)
        for part in _DIGITS.split(text)
        if part
    )


def level_rank(fields: Fields) -> int:
    """0 for ``bad`` … 4 for ``excellent``; an unknown level after them all."""
    level = fields.get("level")
    return _LEVEL_RANK.get(level, len(LEVELS)) if isinstance(level, str) else len(LEVELS)


def _num(fields: Fields, key: str) -> float | None:
    value = fields.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def worst_key(entity_id: str, fields: Fields) -> tuple[Any, ...]:
    """Worst first: by quality level, then the quality score, then the id (numbers as
    numbers). An entity without a level or a score goes after those with one."""
    quality = _num(fields, "quality")
    return (level_rank(fields), math.inf if quality is None else quality, natural_key(entity_id))


@dataclass(frozen=True, slots=True)
class SortKey:
    """One way ``s`` can order a page. ``descending``: the biggest first unless reversed.
    Entities without the value go last either way; ties are broken worst-first."""

    name: str
    value: Callable[[str, Fields], Any]
    descending: bool = False


def _field(key: str) -> Callable[[str, Fields], float | None]:
    return lambda _id, fields: _num(fields, key)


def _loss(_id: str, fields: Fields) -> float | None:
    values = [
        v for v in (_num(fields, "loss_down_pct"), _num(fields, "loss_up_pct")) if v is not None
    ]
    return max(values) if values else None


def _route_name(_id: str, fields: Fields) -> tuple[Any, ...]:
    return natural_key(f"{fields.get('service', '')} {fields.get('route', '')}")


def sort_rows(
    entities: Mapping[str, Fields], sort: SortKey, reverse: bool = False
) -> list[tuple[str, Fields]]:
    rows = sorted(entities.items(), key=lambda item: worst_key(*item))
    if sort.name == "worst":
        return rows[::-1] if reverse else rows
    if sort.name == "id":
        rows.sort(key=lambda item: natural_key(item[0]), reverse=reverse)
        return rows
    known = [(sort.value(i, f), i, f) for i, f in rows]
    missing = [(i, f) for v, i, f in known if v is None]
    present = [(v, i, f) for v, i, f in known if v is not None]
    present.sort(key=lambda t: t[0], reverse=sort.descending != reverse)  # stable: ties worst-first
    return [(i, f) for _v, i, f in present] + missing


# -- columns and pages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """``priority``: 0 is never dropped; when the columns do not fit, the one with the highest
    number goes first. ``shrink``: the column may be cut down to this many characters (with an
    ellipsis) before a column with priority 0 would not fit."""

    title: str
    cell: Callable[[str, Fields], Cell]
    priority: int
    right: bool = False
    shrink: int | None = None


def bitrate(bps: float | None) -> str:
    """``2450000`` → ``2.45 Mb/s``: three significant digits in the largest fitting unit."""
    return _scaled(bps, ("b/s", "kb/s", "Mb/s", "Gb/s"))


def byterate(per_s: float | None) -> str:
    """``1530`` → ``1.53 kB/s``."""
    return _scaled(per_s, ("B/s", "kB/s", "MB/s", "GB/s"))


def byte_count(count: float | None) -> str:
    return _scaled(count, ("B", "kB", "MB", "GB", "TB"))


def _scaled(value: float | None, units: Sequence[str]) -> str:
    if value is None:
        return "-"
    value = float(value)
    unit = units[0]
    for bigger in units[1:]:
        if abs(value) < 999.5:
            break
        value, unit = value / 1000, bigger
    if unit == units[0]:
        return f"{value:.0f} {unit}"
    digits = 2 if abs(value) < 9.995 else 1 if abs(value) < 99.95 else 0
    return f"{value:.{digits}f} {unit}"


def number(value: Any, digits: int = 0, suffix: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def _level_cell(_id: str, fields: Fields) -> Cell:
    level = fields.get("level")
    if not isinstance(level, str):
        return ("-", None)
    return (level, _LEVEL_COLOURS.get(level))


def _id_cell(entity_id: str, _fields: Fields) -> Cell:
    return (entity_id, None)


def _plain(render: Callable[[Fields], str]) -> Callable[[str, Fields], Cell]:
    return lambda _id, fields: (render(fields), None)


def _share(fields: Fields) -> str:
    share = _num(fields, "relay_share")
    return number(None if share is None else share * 100, 0, "%")


def _relay(fields: Fields) -> str:
    relay = str(fields.get("relay") or "-")
    return f"{relay} ({fields['turn_server']})" if fields.get("turn_server") else relay


def _reasons(fields: Fields) -> str:
    reasons = fields.get("reasons")
    return ",".join(str(r) for r in reasons) if isinstance(reasons, list) and reasons else "-"


def _errors(fields: Fields) -> str:
    status = fields.get("status_per_s")
    requests = _num(fields, "requests_per_s")
    if not isinstance(status, list) or len(status) < 5 or not requests:
        return "-"
    failed = sum(float(v) for v in status[4:5] if isinstance(v, int | float))
    return number(100 * failed / requests, 1, "%")


def _route_cell(_id: str, fields: Fields) -> Cell:
    return (f"{fields.get('method', '?')} {fields.get('route', '?')}", None)


@dataclass(frozen=True, slots=True)
class Page:
    name: PageName
    columns: tuple[Column, ...]
    sorts: tuple[SortKey, ...]
    noun: str  # what a row is, for the title

    def filter_text(self, entity_id: str, fields: Fields) -> str:
        if self.name == "http":
            return (
                f"{fields.get('service', '')} {fields.get('method', '')} {fields.get('route', '')}"
            )
        return entity_id


WORST: Final = SortKey("worst", lambda i, f: worst_key(i, f))
_ID: Final = SortKey("id", lambda i, _f: natural_key(i))

MEETINGS: Final = Page(
    "meetings",
    (
        Column("MEETING", _id_cell, 0, shrink=8),
        Column("LEVEL", _level_cell, 0),
        Column("QUALITY", _plain(lambda f: number(f.get("quality"))), 1, right=True),
        Column("PARTS", _plain(lambda f: number(f.get("participants"))), 2, right=True),
        Column("UP", _plain(lambda f: bitrate(_num(f, "up_bps"))), 5, right=True),
        Column("DOWN", _plain(lambda f: bitrate(_num(f, "down_bps"))), 4, right=True),
        Column("RELAY %", _plain(_share), 6, right=True),
        Column("RELAY COST", _plain(lambda f: number(f.get("relay_cost"), 4)), 7, right=True),
        Column("ALERTS", _plain(lambda f: number(f.get("alerts"))), 3, right=True),
    ),
    (
        WORST,
        _ID,
        SortKey("participants", _field("participants"), descending=True),
        SortKey("up", _field("up_bps"), descending=True),
        SortKey("down", _field("down_bps"), descending=True),
        SortKey("relay", _field("relay_share"), descending=True),
        SortKey("cost", _field("relay_cost"), descending=True),
        SortKey("alerts", _field("alerts"), descending=True),
    ),
    "meetings",
)

PARTICIPANTS: Final = Page(
    "participants",
    (
        Column("PARTICIPANT", _id_cell, 0, shrink=8),
        Column("LEVEL", _level_cell, 0),
        Column("QUALITY", _plain(lambda f: number(f.get("quality"))), 1, right=True),
        Column("MOS", _plain(lambda f: number(f.get("mos"), 2)), 2, right=True),
        Column("LOSS DN", _plain(lambda f: number(f.get("loss_down_pct"), 1, "%")), 3, right=True),
        Column("LOSS UP", _plain(lambda f: number(f.get("loss_up_pct"), 1, "%")), 6, right=True),
        Column("RTT", _plain(lambda f: number(f.get("rtt_ms"), 0, " ms")), 4, right=True),
        Column("JITTER", _plain(lambda f: number(f.get("jitter_ms"), 1, " ms")), 5, right=True),
        Column("UP", _plain(lambda f: bitrate(_num(f, "up_bps"))), 8, right=True),
        Column("DOWN", _plain(lambda f: bitrate(_num(f, "down_bps"))), 7, right=True),
        Column("RELAY", _plain(_relay), 9),
        Column("REASONS", _plain(_reasons), 10),
    ),
    (
        WORST,
        _ID,
        SortKey("mos", _field("mos")),
        SortKey("loss", _loss, descending=True),
        SortKey("rtt", _field("rtt_ms"), descending=True),
        SortKey("jitter", _field("jitter_ms"), descending=True),
        SortKey("up", _field("up_bps"), descending=True),
        SortKey("down", _field("down_bps"), descending=True),
    ),
    "participants",
)

HTTP: Final = Page(
    "http",
    (
        Column("ROUTE", _route_cell, 0, shrink=10),
        Column("SERVICE", _plain(lambda f: str(f.get("service") or "-")), 6, shrink=6),
        Column("REQ/S", _plain(lambda f: number(f.get("requests_per_s"), 1)), 0, right=True),
        Column("IN", _plain(lambda f: byterate(_num(f, "bytes_in_per_s"))), 3, right=True),
        Column("OUT", _plain(lambda f: byterate(_num(f, "bytes_out_per_s"))), 2, right=True),
        Column("5XX", _plain(_errors), 7, right=True),
        Column("P50", _plain(lambda f: number(f.get("p50_ms"), 1, " ms")), 5, right=True),
        Column("P95", _plain(lambda f: number(f.get("p95_ms"), 1, " ms")), 4, right=True),
        Column("P99", _plain(lambda f: number(f.get("p99_ms"), 1, " ms")), 1, right=True),
    ),
    (
        SortKey("requests", _field("requests_per_s"), descending=True),
        SortKey("route", _route_name),
        SortKey("in", _field("bytes_in_per_s"), descending=True),
        SortKey("out", _field("bytes_out_per_s"), descending=True),
        SortKey("p99", _field("p99_ms"), descending=True),
        SortKey("p95", _field("p95_ms"), descending=True),
    ),
    "routes",
)

PAGES: Final[Mapping[PageName, Page]] = {p.name: p for p in (MEETINGS, PARTICIPANTS, HTTP)}


def participants_of(entities: Mapping[str, Fields]) -> dict[str, Fields]:
    """A ``meeting:<id>`` topic holds streams and series points too: the participants only."""
    return {k: v for k, v in entities.items() if v.get("kind") == "participant"}


# -- state and keys --------------------------------------------------------------------------


@dataclass(slots=True)
class PageState:
    sort: int = 0  # index in the page's ``sorts``
    reverse: bool = False
    filter: str = ""
    band: int = 0  # index in ``BANDS``
    relayed_only: bool = False
    selected: str | None = None  # the selected row's id, kept across updates
    top: int = 0  # the first row shown (scrolling)


@dataclass(slots=True)
class ConsoleState:
    page: PageName = "meetings"
    opened: str | None = None  # the meeting whose participants are shown
    before_http: PageName = "meetings"  # where ``h`` goes back to
    typing: bool = False  # ``/`` was pressed: keys edit the filter
    pinned: bool = False  # ``--meeting``: the participants page does not go back
    quit: bool = False
    pages: dict[PageName, PageState] = field(
        default_factory=lambda: {name: PageState() for name in PAGES}
    )

    @property
    def current(self) -> PageState:
        return self.pages[self.page]

    def sort_key(self, page: PageName | None = None) -> SortKey:
        name = page or self.page
        return PAGES[name].sorts[self.pages[name].sort]


@dataclass(frozen=True, slots=True)
class Follow:
    """What the connection must do after a key: subscribe to ``subscribe``, unsubscribe from
    ``unsubscribe`` (either may be None)."""

    subscribe: str | None = None
    unsubscribe: str | None = None


NOTHING: Final = Follow()


def visible_rows(
    page: Page, entities: Mapping[str, Fields], state: PageState, sort: SortKey
) -> list[tuple[str, Fields]]:
    """The page's rows as shown: filtered (text, level band, relayed only), then sorted."""
    needle = state.filter.casefold()
    band = BANDS[state.band]
    limit = _LEVEL_RANK[band] if band is not None else None
    shown: dict[str, Fields] = {}
    for entity_id, fields in entities.items():
        if needle and needle not in page.filter_text(entity_id, fields).casefold():
            continue
        if limit is not None and page.name != "http" and level_rank(fields) > limit:
            continue
        if state.relayed_only and not _relayed(page, fields):
            continue
        shown[entity_id] = fields
    return sort_rows(shown, sort, state.reverse)


def _relayed(page: Page, fields: Fields) -> bool:
    if page.name == "meetings":
        share = _num(fields, "relay_share")
        return share is not None and share > 0
    if page.name == "participants":
        return fields.get("relay") not in (None, "direct")
    return True


def press(state: ConsoleState, key: str, rows: Sequence[str], page_rows: int = 10) -> Follow:
    """Apply one key (``decode_keys``'s names) to ``state``. ``rows``: the ids of the current
    page's rows in the order shown; ``page_rows``: how many fit on the screen."""
    page = state.current
    if state.typing:
        if key == "enter":
            state.typing = False
        elif key == "esc":
            state.typing = False
            page.filter = ""
        elif key == "backspace":
            page.filter = page.filter[:-1]
        elif len(key) == 1 and key.isprintable():
            page.filter += key
        page.top = 0
        return NOTHING
    if key == "q":
        state.quit = True
    elif key == "s":
        page.sort = (page.sort + 1) % len(PAGES[state.page].sorts)
        page.reverse = False
    elif key == "r":
        page.reverse = not page.reverse
    elif key == "/":
        state.typing = True
    elif key == "l" and state.page != "http":
        page.band = (page.band + 1) % len(BANDS)
    elif key == "t" and state.page != "http":
        page.relayed_only = not page.relayed_only
    elif key in ("h", "tab"):
        if state.page == "http":
            state.page = state.before_http
        else:
            state.before_http, state.page = state.page, "http"
    elif key in ("down", "j", "up", "k", "pgdn", "pgup", "home", "end"):
        _move(page, key, rows, page_rows)
    elif key == "enter" and state.page == "meetings" and rows:
        selected = page.selected
        return _open(state, selected if selected is not None and selected in rows else rows[0])
    elif key == "esc":
        if page.filter or page.band or page.relayed_only:
            page.filter, page.band, page.relayed_only = "", 0, False
        elif state.page == "participants":
            return _close(state)
        elif state.page == "http":
            state.page = state.before_http
    elif key == "backspace":
        if state.page == "participants":
            return _close(state)
        if state.page == "http":
            state.page = state.before_http
    return NOTHING


def _move(page: PageState, key: str, rows: Sequence[str], page_rows: int) -> None:
    if not rows:
        page.selected = None
        return
    at = rows.index(page.selected) if page.selected in rows else -1
    step = max(1, page_rows - 1)
    moves = {"down": 1, "j": 1, "up": -1, "k": -1, "pgdn": step, "pgup": -step}
    if key == "home":
        at = 0
    elif key == "end":
        at = len(rows) - 1
    elif at < 0:
        at = 0
    else:
        at = min(len(rows) - 1, max(0, at + moves[key]))
    page.selected = rows[at]


def _open(state: ConsoleState, meeting: str) -> Follow:
    state.opened = meeting
    state.page = "participants"
    state.pages["participants"] = PageState()
    return Follow(subscribe=f"meeting:{meeting}")


def _close(state: ConsoleState) -> Follow:
    if state.pinned:
        return NOTHING
    closed = state.opened
    state.opened = None
    state.page = "meetings"
    return Follow(unsubscribe=None if closed is None else f"meeting:{closed}")


# -- layout ----------------------------------------------------------------------------------


def _char_cells(char: str) -> int:
    """Terminal cells a character takes: 2 for East Asian wide and full-width ones, 0 for
    combining marks and format characters, else 1."""
    if unicodedata.combining(char) or unicodedata.category(char) in ("Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cells(text: str) -> int:
    """The width of ``text`` on a terminal, in cells (an id may hold any printable
    character, PROTOCOL.md §4.1)."""
    return len(text) if text.isascii() else sum(_char_cells(c) for c in text)


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells, the last one an ellipsis when cut."""
    if width <= 0:
        return ""
    if cells(text) <= width:
        return text
    kept: list[str] = []
    used = 0
    for char in text:
        used += _char_cells(char)
        if used > width - 1:
            break
        kept.append(char)
    return "".join(kept) + ELLIPSIS


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * max(0, width - cells(text))
    return fill + text if right else text + fill


def fit_columns(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int
) -> list[tuple[int, int]]:
    """Which columns to show and how wide, so that a row is at most ``width`` cells:
    ``[(column index, width), …]``. Drops columns by priority (the highest number first, the
    rightmost of equals first), then shrinks the shrinkable ones; what still does not fit is
    cut by the caller."""
    widths = [cells(c.title) for c in columns]
    for row in rows:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], cells(text))
    kept = list(range(len(columns)))

    def total() -> int:
        return sum(widths[i] for i in kept) + GAP * max(0, len(kept) - 1)

    while total() > width:
        droppable = [i for i in kept if columns[i].priority > 0]
        if not droppable:
            break
        kept.remove(max(droppable, key=lambda i: (columns[i].priority, i)))
    for i in kept:
        shrink = columns[i].shrink
        if total() > width and shrink is not None and widths[i] > shrink:
            widths[i] = max(shrink, widths[i] - (total() - width))
    return [(i, widths[i]) for i in kept]


def _paint(text: str, code: str | None, color: bool) -> str:
    return f"\x1b[{code}m{text}{_RESET}" if color and code else text


def table_lines(
    columns: Sequence[Column],
    rows: Sequence[tuple[str, Fields]],
    width: int,
    *,
    selected: str | None = None,
    color: bool = False,
) -> tuple[str, list[str]]:
    """The header and one line per row, each at most ``width`` cells on screen."""
    grid = [[column.cell(i, f) for column in columns] for i, f in rows]
    layout = fit_columns(columns, grid, width)

    def line(row: Sequence[Cell], highlight: bool) -> str:
        parts: list[str] = []
        used = 0
        for n, (i, w) in enumerate(layout):
            text, code = row[i]
            text = _pad(clip(text, w), w, columns[i].right)
            if n == len(layout) - 1:
                text = text.rstrip()
            sep = " " * GAP if n else ""
            room = width - used - len(sep)
            if room <= 0:
                break
            text = clip(text, room)
            used += len(sep) + cells(text)
            parts.append(sep + (text if highlight else _paint(text, code, color)))
        joined = "".join(parts)
        # Reverse video, colour or not: the selection must show with NO_COLOR too.
        return f"\x1b[{_SELECTED}m{joined}{_RESET}" if highlight else joined

    header = line([(c.title, None) for c in columns], False)
    return header, [line(row, i == selected) for (i, _f), row in zip(rows, grid, strict=True)]


@dataclass(frozen=True, slots=True)
class ScreenInput:
    """What the screen shows besides the state: the topics' entities, the connection."""

    meetings: Mapping[str, Fields]
    meeting: Mapping[str, Fields]  # the opened meeting's topic (all kinds of entities)
    http: Mapping[str, Fields]
    open_alerts: int
    link: str  # "connected to …" or "reconnecting… (…)"
    connected: bool
    updated_ago_s: float | None  # since the last update applied; None: none yet
    meeting_received: bool = True  # the opened meeting's snapshot came


def page_entities(state: ConsoleState, screen: ScreenInput) -> Mapping[str, Fields]:
    if state.page == "meetings":
        return screen.meetings
    if state.page == "participants":
        return participants_of(screen.meeting)
    return screen.http


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "waiting for the first update"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"updated {seconds} s ago"
    if seconds < 7200:
        return f"updated {seconds // 60} min ago"
    return f"updated {seconds // 3600} h ago"


KEYS_HELP: Final[Mapping[PageName, str]] = {
    "meetings": (
        "q quit  ↑↓ select  ⏎ open  s sort  r reverse  / filter  l level  t TURN  h HTTP  Esc clear"
    ),
    "participants": "q quit  Esc back  s sort  r reverse  / filter  l level  t TURN  h HTTP",
    "http": "q quit  h back  s sort  r reverse  / filter  Esc clear",
}


def render_screen(
    state: ConsoleState, screen: ScreenInput, width: int, height: int, *, color: bool = False
) -> tuple[list[str], list[str]]:
    """The whole screen, at most ``height`` lines of at most ``width`` characters each, and
    the ids of the current page's rows in the order shown (for ``press``). Adjusts the page's
    scrolling so that the selected row is on screen."""
    width, height = max(1, width), max(1, height)
    page = PAGES[state.page]
    ps = state.current
    sort = state.sort_key()
    rows = visible_rows(page, page_entities(state, screen), ps, sort)
    ids = [i for i, _f in rows]
    if ps.selected not in ids:
        ps.selected = None

    # Title: what is shown and how fresh it is; then the sort and filters.
    total = len(page_entities(state, screen))
    if state.page == "participants":
        what = f"meeting {state.opened}: {total} participants"
        if screen.meeting_received and total == 0:
            what = f"meeting {state.opened}: not live"
    elif state.page == "http":
        what = f"{total} HTTP routes"
    else:
        what = f"{total} live meetings"
    fresh = ago(screen.updated_ago_s) if screen.connected else screen.link
    alerts = f"alerts: {screen.open_alerts} open"
    # The clock (or the connection's state) stays when the title must be shorter.
    titles = (
        f"bwmon tail  {what}  {alerts}  {fresh}",
        f"{what}  {alerts}  {fresh}",
        f"{what}  {fresh}",
        f"{fresh}  {what}",
    )
    title = next((t for t in titles if cells(t) <= width), titles[-1])
    order = f"sort: {sort.name} {'↓' if sort.descending != ps.reverse else '↑'}"
    if sort.name == "worst":
        order = f"sort: {'best' if ps.reverse else 'worst'} first"
    filters = [order]
    if ps.filter or state.typing:
        filters.append(f"filter: {ps.filter}" + ("▏" if state.typing else ""))
    if BANDS[ps.band] is not None:
        filters.append(f"level: {BANDS[ps.band]} or worse")
    if ps.relayed_only:
        filters.append("TURN only")
    if len(rows) != total:
        filters.append(f"{len(rows)} of {total} shown")

    lines = [
        _paint(clip(title, width), None if screen.connected else "1;33", color),
        clip("  ".join(filters), width),
    ]
    body = max(0, height - 4)  # title, filters, header, keys
    header, row_lines = table_lines(page.columns, rows, width, selected=ps.selected, color=color)
    if ps.selected is not None:
        at = ids.index(ps.selected)
        if at < ps.top:
            ps.top = at
        elif at >= ps.top + body:
            ps.top = at - body + 1
    ps.top = max(0, min(ps.top, max(0, len(rows) - body)))
    if height >= 4:
        lines.append(header)
        shown = row_lines[ps.top : ps.top + body]
        if not rows:
            shown = [clip(_empty(state, total, screen), width)][:body]
        lines += shown
        lines += [""] * (height - 1 - len(lines))
    keys = KEYS_HELP[state.page]
    if state.pinned:
        keys = keys.replace("  Esc back", "")
    lines.append(clip(keys, width - 1))  # never the bottom-right cell
    return lines[:height], ids


def _empty(state: ConsoleState, total: int, screen: ScreenInput) -> str:
    if total:
        return "no row matches the filters (Esc clears them)"
    waiting = state.page == "participants" and not screen.meeting_received
    if screen.updated_ago_s is None or waiting:
        return "waiting for the daemon…"
    if state.page == "participants":
        return "no participant live in this meeting"
    if state.page == "http":
        return "no HTTP route seen in the live window"
    return "no live meetings"
