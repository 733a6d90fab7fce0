"""The ``bwmon`` command: serve, tail, check-config, migrate, export, emit, bench.

Thin: each command parses its options, calls into ``collector`` (public functions) or talks to
a daemon over the network, and turns our errors into an exit code and one clear line, in one
place: ``errors_exit`` turns any ``BwmonError`` (protocol/errors.py draws the tree) that ends a
command into ``<command>: <message>`` on stderr and the exit status ``exit_status`` gives it.

Exit status: 0 done; 1 failed (a port in use, a database that cannot be reached or read: trying
again may work); 2 (``EXIT_CONFIG``) the configuration or the command line is wrong, in every
command, so trying again will not help (the systemd unit does not restart on it); 130 Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import inspect
import io
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import msgspec
import trio
import typer

from cli.bench.commands import app as bench_app
from cli.emit import EmitOptions, emit
from cli.progress import ExportProgress
from cli.synthetic import Profile
from cli.tail import TailOptions, TopicRefused, run_tail
from cli.top import TopOptions, run_top
from collector import app as daemon_app
from collector.auth import bind_warning, check_startup
from collector.config import SECRET_KEYS, Config, ConfigError, StorageConfig, load
from collector.logs import configure
from collector.runtime import AsyncioBridge, open_thread_bridge, run_guest
from collector.storage.export import (
    Format,
    Kind,
    Selection,
    Shape,
    TimeFormat,
    default_time_format,
    export_to,
    parse_time,
    row_writer,
)
from collector.storage.sinks import DatabaseMissing, MysqlSink, SqliteSink, open_sink
from protocol.build import running_build, stale_message, stale_sources
from protocol.errors import BwmonError
from protocol.subscribe import is_topic
from protocol.tokens import MAX_TTL_S, RIGHTS, Claims, mint

EXIT_CONFIG = 2  # deploy/bwmon.service: RestartPreventExitStatus=2

app = typer.Typer(
    help="bwmon: call-quality and bandwidth collector daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(bench_app, name="bench")


def _print_version(asked: bool) -> None:
    if asked:
        build = running_build()
        typer.echo(
            f"bwmon {metadata.version('bwmon')} ({build.name} build, "
            f"Python {platform.python_version()})"
        )
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """bwmon: call-quality and bandwidth collector daemon."""


ConfigPath = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", envvar="BWMON_CONFIG", help="collector.toml (default: embedded defaults)"
    ),
]


def exit_status(exc: BwmonError) -> int:
    """``EXIT_CONFIG`` for what trying again will not fix (the configuration, a topic the token
    does not allow), 1 for the rest (a port in use, a database or a daemon out of reach)."""
    return EXIT_CONFIG if isinstance(exc, ConfigError | TopicRefused) else 1


def fail(command: str, exc: BwmonError) -> NoReturn:
    typer.echo(f"{command}: {exc}", err=True)
    raise typer.Exit(exit_status(exc)) from None


@contextlib.contextmanager
def errors_exit(command: str = "bwmon") -> Iterator[None]:
    """A ``BwmonError`` that ends the block, alone or in the exception group of a trio
    nursery (its first), ends the command: one line, and its exit status. Other exceptions
    pass: a bug shows its traceback."""
    try:
        yield
    except BaseExceptionGroup as group:
        matched, _rest = group.split(BwmonError)
        if matched is None:
            raise
        leaf = _first_leaf(matched)
        assert isinstance(leaf, BwmonError)
        fail(command, leaf)
    except BwmonError as exc:
        fail(command, exc)


def _load_or_exit(path: Path | None) -> Config:
    with errors_exit():
        return load(path)


def _check_or_exit(settings: Config) -> None:
    """What ``serve`` checks before it binds a port (``check_startup``); check-config too."""
    with errors_exit():
        check_startup(settings)
        for sink in settings.notify:  # the URL and secret each names, readable now
            sink.target()
            sink.signing_secret()


def _build_or_exit() -> None:
    """In a checkout, compiled modules built from the sources beside them, or no start: Python
    would run the extension of an earlier source (protocol/build.py)."""
    if stale := stale_sources():
        typer.echo(f"bwmon: {stale_message(stale)}", err=True)
        raise typer.Exit(1)


@app.command()
def serve(
    config: ConfigPath = None,
    host: Annotated[str | None, typer.Option(help="override server.host")] = None,
    udp_port: Annotated[int | None, typer.Option(help="override server.udp_port")] = None,
    http_port: Annotated[int | None, typer.Option(help="override server.http_port")] = None,
) -> None:
    """Run the daemon (foreground; stop with SIGTERM or Ctrl-C; SIGHUP re-reads --config)."""

    def with_overrides(settings: Config) -> Config:
        server = msgspec.structs.replace(
            settings.server,
            host=host if host is not None else settings.server.host,
            udp_port=udp_port if udp_port is not None else settings.server.udp_port,
            http_port=http_port if http_port is not None else settings.server.http_port,
        )
        return msgspec.structs.replace(settings, server=server)

    _build_or_exit()
    settings = with_overrides(_load_or_exit(config))
    _check_or_exit(settings)
    _state_dir_or_exit(settings.storage)
    configure(settings.log.level, settings.log.format)

    async def main(bridge: AsyncioBridge) -> None:
        reread = (lambda: with_overrides(load(config))) if config is not None else None
        await daemon_app.run(settings, bridge, reread=reread)

    # Everything imported so far lives as long as the process: freezing it keeps it out of
    # every full collection, which then walks only what the daemon makes while it runs (UDP
    # ingest stands still during a collection, and the modules are tens of thousands of
    # objects).
    gc.collect()
    gc.freeze()
    try:
        with errors_exit():  # a port that cannot be bound, a spool that cannot be opened…
            run_guest(main)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _state_dir_or_exit(storage: StorageConfig) -> None:
    """Create the state directory now: one the daemon cannot create or write to is a
    configuration error (a wrong path, or not the daemon's), which restarting will not fix."""
    if storage.backend == "none":
        return
    directory = Path(storage.state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as exc:
        typer.echo(
            f"bwmon: storage.state_dir = {storage.state_dir!r}: cannot use it: "
            f"{exc.strerror or exc}",
            err=True,
        )
        raise typer.Exit(EXIT_CONFIG) from None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


@app.command()
def migrate(
    config: ConfigPath = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the SQL, change nothing")
    ] = False,
) -> None:
    """Apply the pending schema migrations to the configured database (idempotent). With
    --dry-run, print what would be applied and write nothing."""
    settings = _load_or_exit(config)
    configure(settings.log.level, settings.log.format)

    async def main() -> list[str]:
        async with open_thread_bridge() as bridge:
            sink = open_sink(settings.storage, bridge, read_only=dry_run)
            if sink is None:
                return []
            try:
                return await sink.migrate(dry_run=dry_run)
            finally:
                await sink.close()

    if settings.storage.backend == "none":
        typer.echo("bwmon: storage.backend is none: nothing to migrate", err=True)
        raise typer.Exit(EXIT_CONFIG)
    database = settings.storage.sqlite_file()
    missing = settings.storage.backend == "sqlite" and not database.exists()
    with errors_exit("bwmon migrate"):
        statements = trio.run(main)
    for statement in statements:
        typer.echo(statement + ";\n")
    verb = "would apply" if dry_run else "applied"
    if dry_run and missing:
        verb = f"no database at {database} yet: would create it and apply"
    typer.echo(f"bwmon migrate: {verb} {len(statements)} statements", err=True)


@app.command("export")
def export_command(
    what: Annotated[
        Kind,
        typer.Argument(
            help="the table: rtc, http, meetings, alerts, or the hourly roll-ups rtc_hour and "
            "http_hour"
        ),
    ],
    config: ConfigPath = None,
    output_format: Annotated[Format, typer.Option("--format", "-f")] = "csv",
    time_format: Annotated[
        TimeFormat | None,
        typer.Option(
            "--time",
            help="times as iso (8601, UTC) or unix (seconds); default: iso for csv, "
            "unix for json and ndjson",
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="from this time on: ISO 8601, Unix seconds, now, today, yesterday or a time "
            "ago (-15m, -1h, -7d)"
        ),
    ] = None,
    end: Annotated[str | None, typer.Option(help="before this time (as --start)")] = None,
    meeting: Annotated[str | None, typer.Option(help="rtc, meetings, alerts, rtc_hour")] = None,
    participant: Annotated[str | None, typer.Option(help="rtc, alerts, rtc_hour")] = None,
    service: Annotated[str | None, typer.Option(help="http, http_hour")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")
    ] = None,
) -> None:
    """Write stored rows as CSV, JSON or NDJSON, streamed page by page in key order.

    Every column is described in docs/API.md, "Columns". On a terminal, a progress bar with the
    total, the rate and the time left, then a one-line summary."""
    try:
        now = time.time()
        selection = Selection(
            what,
            start=None if start is None else parse_time(start, now),
            end=None if end is None else parse_time(end, now),
            meeting=meeting,
            participant=participant,
            service=service,
        )
    except ValueError as exc:
        typer.echo(f"bwmon export: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    settings = _load_or_exit(config)
    if settings.storage.backend == "none":
        typer.echo("bwmon export: storage.backend is none: nothing to export", err=True)
        raise typer.Exit(EXIT_CONFIG)
    configure(settings.log.level, settings.log.format)
    shape = Shape(what, output_format, time_format or default_time_format(output_format))
    progress = ExportProgress(sys.stderr) if sys.stderr.isatty() else None

    async def main(out: io.TextIOWrapper) -> int:
        async with open_thread_bridge() as bridge:
            # Read-only: an export never creates a database (nor its directory) or changes one.
            sink = open_sink(settings.storage, bridge, read_only=True)
            assert isinstance(sink, SqliteSink | MysqlSink)  # both can be read
            try:
                if progress is not None:
                    sql, params = selection.count_query(sink.dialect)
                    progress.start(int((await sink.query(sql, params))[0][0]))
                writer = row_writer(output_format, out)
                return await export_to(
                    sink,
                    selection,
                    writer,
                    shape=shape,
                    progress=None if progress is None else progress.advance,
                )
            finally:
                await sink.close()

    # stdout gets UTF-8 and untranslated CRLF (CSV) whatever the locale; a file is written
    # beside its target and renamed when complete, so a failed export leaves no half file.
    partial = None if output is None else output.with_name(f".{output.name}.part")
    try:
        sys.stdout.flush()
        out = (
            io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
            if partial is None
            else partial.open("w", encoding="utf-8", newline="")
        )
    except OSError as exc:
        typer.echo(f"bwmon export: {exc}", err=True)
        raise typer.Exit(1) from None
    code, rows, failure = 0, 0, ""
    try:
        rows = trio.run(main, out)
        out.flush()
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except DatabaseMissing as exc:
        source = f"configured in {config}" if config else "the default: no --config"
        code, failure = 1, f"bwmon export: {exc} ({source}; nothing has been stored there)"
    except BwmonError as exc:
        code, failure = exit_status(exc), f"bwmon export: {exc}"
    except OSError as exc:
        code, failure = 1, f"bwmon export: {exc}"
    except KeyboardInterrupt:
        code = 130
    if output is None or partial is None:
        out.detach()
    elif code:
        with contextlib.suppress(OSError):
            out.close()
        partial.unlink(missing_ok=True)
    else:
        out.close()
        partial.replace(output)
    if progress is not None:
        progress.stop()
        if not failure:
            target = "stdout" if output is None else str(output)
            typer.echo(f"bwmon export: {progress.summary(rows, code == 0)} to {target}", err=True)
    if failure:
        typer.echo(failure, err=True)
    if code:
        raise typer.Exit(code)


@app.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="collector.toml to check")]) -> None:
    """Validate a configuration file as `bwmon serve` does, with the BWMON_* variables that win
    over it; print the effective configuration as JSON (secrets shown only as where they come
    from and how long they are, relative paths made absolute)."""
    settings = _load_or_exit(path)
    _check_or_exit(settings)
    shown = msgspec.to_builtins(settings)
    effective: dict[tuple[str, str], str | list[str]] = {
        ("storage", "mysql_password"): settings.storage.password(),
        ("fanout", "redis_url"): settings.fanout.redis(),
        ("auth", "token_secrets"): settings.auth.secrets(),
        ("auth", "udp_keys"): settings.auth.datagram_keys(),
    }
    for (section, key), variable in SECRET_KEYS.items():
        origin = variable if variable in os.environ else "the file"
        value = effective[(section, key)]
        if isinstance(value, list):
            shown[section][key] = [_redacted(item, origin) for item in value]
        else:  # the value in force: the file's never shows, even where a variable empties it
            shown[section][key] = _redacted(value, origin) if value else ""
    shown["notify"] = [_notify_shown(sink) for sink in shown["notify"]]
    typer.echo(json.dumps(shown, indent=2))
    warning = bind_warning(settings.server.host, settings.auth)
    if warning is not None:
        typer.echo(f"bwmon: warning: {warning}", err=True)
    typer.echo(f"{path}: ok", err=True)


def _notify_shown(sink: dict[str, Any]) -> dict[str, Any]:
    """A ``[[notify]]`` table as check-config shows it: the secret, the header values and the
    URL's path and query (a Slack webhook's credential) redacted."""
    if sink.get("secret"):
        sink["secret"] = _redacted(sink["secret"], "the file")
    sink["headers"] = {
        name: _redacted(value, "the file") for name, value in sink["headers"].items()
    }
    if sink.get("url"):
        parts = urlsplit(sink["url"])
        host = parts.netloc.rsplit("@", 1)[-1]  # credentials in the URL are not shown either
        rest = sink["url"][len(f"{parts.scheme}://{parts.netloc}") :]
        shown = _redacted(rest, "the file") if rest else ""
        sink["url"] = f"{parts.scheme}://{host}{shown}"
    return sink


def _redacted(secret: str, origin: str) -> str:
    """A secret as check-config shows it: where it comes from and its length, never a
    character of it."""
    return f"[redacted: {len(secret)} characters, from {origin}]"


@app.command("emit")
def emit_command(
    host: Annotated[str, typer.Option(help="daemon address")] = "127.0.0.1",
    udp_port: Annotated[int, typer.Option(help="daemon UDP port")] = 8470,
    http_port: Annotated[int, typer.Option(help="daemon HTTP/WebSocket port")] = 8470,
    transport: Annotated[str, typer.Option(help="udp or ws")] = "udp",
    encoding: Annotated[str, typer.Option(help="msgpack or json")] = "msgpack",
    meetings: Annotated[int, typer.Option(min=0)] = 10,
    participants: Annotated[int, typer.Option(min=0, help="per meeting")] = 5,
    interval: Annotated[float, typer.Option(min=0.01, help="s between samples")] = 1.0,
    rate: Annotated[float | None, typer.Option(min=1, help="rtc frames/s in all")] = None,
    duration: Annotated[float, typer.Option(min=0.1, help="seconds")] = 10.0,
    http_routes: Annotated[int, typer.Option(min=0, help="synthetic HTTP routes")] = 4,
    joins: Annotated[bool, typer.Option(help="send a join event per participant")] = True,
    loss: Annotated[float, typer.Option(min=0, max=1, help="packet loss fraction")] = 0.01,
    jitter_ms: Annotated[float, typer.Option(min=0)] = 15.0,
    rtt_ms: Annotated[float, typer.Option(min=0)] = 60.0,
    relay_share: Annotated[float, typer.Option(min=0, max=1)] = 0.1,
    budget: Annotated[int, typer.Option(min=64, max=65507, help="bytes per datagram")] = 1200,
    ws_batch: Annotated[int, typer.Option(min=1, help="frames per WebSocket message")] = 50,
    replay: Annotated[
        int,
        typer.Option(
            min=0,
            help="encode this many rtc frames once and resend them round and round, each "
            "round continuing every stream's sequence numbers and counters (MessagePack), so "
            "that each is a new sample (rtc only; for load beyond what live generation "
            "reaches)",
        ),
    ] = 0,
    seed: Annotated[
        int | None,
        typer.Option(
            help="the same meeting and connection ids on every run (default: random ones); "
            "the boot nonce is new on every run all the same",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    udp_key: Annotated[
        str,
        typer.Option(
            envvar="BWMON_UDP_KEY",
            show_default=False,
            help="sign every UDP datagram with this key (one of the daemon's auth.udp_keys)",
        ),
    ] = "",
) -> None:
    """Send synthetic meetings (rtc + events) and HTTP route samples to a daemon."""
    if transport not in ("udp", "ws") or encoding not in ("msgpack", "json"):
        typer.echo("bwmon: --transport is udp or ws, --encoding is msgpack or json", err=True)
        raise typer.Exit(EXIT_CONFIG)
    options = EmitOptions(
        host=host,
        udp_port=udp_port,
        http_port=http_port,
        transport=transport,
        encoding=encoding,
        meetings=meetings,
        participants=participants,
        interval_s=interval,
        rate=rate,
        duration_s=duration,
        http_routes=http_routes,
        joins=joins,
        budget=budget,
        ws_batch=ws_batch,
        replay=replay,
        udp_key=udp_key,
        profile=Profile(
            loss=loss, jitter_ms=jitter_ms, rtt_ms=rtt_ms, relay_share=relay_share, seed=seed
        ),
    )
    try:
        with errors_exit("bwmon emit"):
            report = trio.run(emit, options)
    except OSError as exc:
        typer.echo(f"bwmon emit: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        typer.echo(
            f"sent {report.frames_sent} frames in {report.messages_sent} {transport} messages "
            f"over {report.elapsed_s} s ({report.frames_per_s:.0f} frames/s); "
            f"by kind: {report.frames_by_kind}"
        )


token_app = typer.Typer(
    help="Access tokens for /ingest, /subscribe and /api.", no_args_is_help=True
)
app.add_typer(token_app, name="token")


@token_app.command("mint")
def token_mint(
    config: ConfigPath = None,
    right: Annotated[
        list[str] | None,
        typer.Option(help="ingest or read; repeat for both (default: read)"),
    ] = None,
    meeting: Annotated[
        str | None, typer.Option(help="limit the token to this meeting (default: every meeting)")
    ] = None,
    ttl: Annotated[
        float, typer.Option(min=1, max=MAX_TTL_S, help="seconds until the token expires")
    ] = 3600.0,
) -> None:
    """Print a signed token (PROTOCOL.md §13) made with the first of auth.token_secrets (or
    BWMON_TOKEN_SECRETS). Give it to one client; it expires after --ttl seconds."""
    with errors_exit():  # a key of BWMON_TOKEN_SECRETS breaks the length rule
        keys = _load_or_exit(config).auth.secrets()
    if not keys:
        typer.echo(
            "bwmon token mint: no key: set auth.token_secrets in the config or BWMON_TOKEN_SECRETS",
            err=True,
        )
        raise typer.Exit(EXIT_CONFIG)
    rights = sorted(set(right or ["read"]))
    try:
        claims = msgspec.convert(
            {"rights": rights, "meeting": meeting, "exp": int(time.time() + ttl)}, Claims
        )
    except msgspec.ValidationError as exc:
        typer.echo(f"bwmon token mint: {exc} (rights: {', '.join(RIGHTS)})", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    typer.echo(mint(keys[0], claims))


Duration = Annotated[float | None, typer.Option(min=0.1, help="stop after this many seconds")]
AnswerTimeout = Annotated[
    float,
    typer.Option(
        min=0.1,
        help="with --json or --count: fail (exit 1) when the daemon does not answer for this"
        " many seconds",
    ),
]


@app.command("tail")
def tail_command(
    host: Annotated[str, typer.Option(help="daemon address")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="daemon HTTP/WebSocket port")] = 8470,
    meeting: Annotated[str | None, typer.Option(help="show this meeting's participants")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="NDJSON on stdout, one line per update")
    ] = False,
    encoding: Annotated[str, typer.Option(help="json or msgpack")] = "json",
    count: Annotated[int | None, typer.Option(min=1, help="stop after N updates")] = None,
    duration: Duration = None,
    timeout: AnswerTimeout = 10.0,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="BWMON_TOKEN",
            help="access token with the read right (bwmon token mint); prefer BWMON_TOKEN",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show a daemon's live meetings, worst first, with their participants, HTTP routes and
    alerts, as they change; reconnects and resumes by itself.

    On a terminal it is a console: s sorts, r reverses, / filters, l picks a level band, t
    shows TURN-relayed only, arrows and Enter open a meeting, Esc goes back, h shows the HTTP
    routes, q quits. With --json (NDJSON), --count, or stdout not a terminal, it prints
    instead."""
    if encoding not in ("json", "msgpack"):
        typer.echo("bwmon tail: --encoding is json or msgpack", err=True)
        raise typer.Exit(EXIT_CONFIG)
    if meeting is not None and not is_topic(f"meeting:{meeting}"):
        typer.echo(f"bwmon tail: {meeting!r} is not a meeting id", err=True)
        raise typer.Exit(EXIT_CONFIG)
    options = TailOptions(
        host=host,
        http_port=http_port,
        meeting=meeting,
        as_json=as_json,
        encoding="json" if encoding == "json" else "msgpack",
        count=count,
        duration_s=duration,
        token=token,
        timeout_s=timeout if as_json or count is not None else None,
        interactive=not as_json and count is None and _interactive(),
    )
    try:
        with errors_exit("bwmon tail"):
            trio.run(run_tail, options)
    except KeyboardInterrupt:  # before or after the signal handler was in place
        raise typer.Exit(0) from None


def _interactive() -> bool:
    """A console needs a terminal for its screen and for its keys."""
    return sys.stdout.isatty() and sys.stdin.isatty()


@app.command("top")
def top_command(
    host: Annotated[str, typer.Option(help="daemon address")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="daemon HTTP port")] = 8470,
    as_json: Annotated[
        bool, typer.Option("--json", help="NDJSON on stdout, one line per second")
    ] = False,
    count: Annotated[int | None, typer.Option(min=1, help="stop after N samples")] = None,
    duration: Duration = None,
    timeout: AnswerTimeout = 10.0,
) -> None:
    """Show the daemon's own health from /healthz, every second: frames/s by transport,
    rejections by reason, kernel drops, storage backlog and spool, subscribers, loop lag.

    On a terminal it is a console (q quits); with --json (NDJSON), --count, or stdout not a
    terminal, it prints a sample a second instead. Rates need two samples: the first has
    none."""
    options = TopOptions(
        host=host,
        http_port=http_port,
        as_json=as_json,
        count=count,
        duration_s=duration,
        timeout_s=timeout if as_json or count is not None else None,
        interactive=not as_json and count is None and _interactive(),
    )
    try:
        with errors_exit("bwmon top"):
            trio.run(run_top, options)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def reflow(text: str) -> str:
    """A docstring as help: the lines of each paragraph joined, so that the help wraps at the
    terminal's width rather than where the source broke its lines. A paragraph of list items
    (lines starting with ``-`` or ``*``) keeps one item per line."""
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines = [line.strip() for line in paragraph.splitlines()]
        if any(line.startswith(("- ", "* ")) for line in lines):
            items: list[str] = []
            for line in lines:
                if items and not line.startswith(("- ", "* ")):
                    items[-1] += " " + line
                else:
                    items.append(line)
            paragraphs.append("\n".join(items))
        else:
            paragraphs.append(" ".join(lines))
    return "\n\n".join(paragraphs)


def _reflow_help(group: typer.Typer) -> None:
    for command in group.registered_commands:
        text = command.help or (command.callback.__doc__ if command.callback else None)
        if text:
            command.help = reflow(text)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _reflow_help(sub.typer_instance)


_reflow_help(app)

if __name__ == "__main__":
    app()
