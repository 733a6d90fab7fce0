"""The ``bwmon bench`` commands: each parses its options, runs one benchmark of this package
and prints its result, as one JSON object with ``--json``, else as lines with the targets and
their verdicts (docs/BENCHMARKS.md).

``cli.main`` mounts ``app``; every command is declared here, in the order ``--help`` lists
them. The benchmark modules know nothing of typer's options.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer

from cli.bench import aggregate as aggregate_bench
from cli.bench import all as all_bench
from cli.bench import client as client_bench
from cli.bench import dashboard as dashboard_bench
from cli.bench import fanout as fanout_bench
from cli.bench import ingest as ingest_bench
from cli.bench import metrics as metrics_bench
from cli.bench import middleware as middleware_bench
from cli.bench import storage as storage_bench
from cli.bench.chromium import ChromiumMissing
from cli.bench.harness import ClientFailed, print_json
from cli.daemon_process import DaemonFailed
from collector.storage.sinks import StorageError

R = TypeVar("R", bound=msgspec.Struct)

app = typer.Typer(help="Benchmarks; each prints JSON with --json.", no_args_is_help=True)

# The options every benchmark has; ``--quick`` makes a smoke run (CI), not a measurement.
JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object")]
QuickFlag = Annotated[bool, typer.Option(help="a short smoke run, not a measurement")]

# The MariaDB/MySQL server of the benchmarks that need one (a throwaway database on it).
MysqlHost = Annotated[str, typer.Option(help="MariaDB/MySQL server")]
MysqlPort = Annotated[int, typer.Option()]
MysqlUser = Annotated[str, typer.Option(help="needs CREATE and DROP DATABASE")]
MysqlPassword = Annotated[str, typer.Option(envvar="BWMON_BENCH_MYSQL_PASSWORD")]


def mysql_server(host: str, port: int, user: str, password: str) -> dict[str, Any]:
    return {"host": host, "port": port, "user": user, "password": password}


def report(
    command: str,
    run: Callable[[], R],
    summary: Callable[[R], None],
    as_json: bool,
    failures: tuple[type[Exception], ...] = (),
    hint: str = "",
) -> None:
    """Run a benchmark and print its result (JSON with ``--json``, else its summary); one of
    ``failures`` ends the command with one line and exit status 1."""
    try:
        result = run()
    except failures as exc:
        typer.echo(f"bwmon bench {command}: {exc}{hint}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        print_json(result)
    else:
        summary(result)


@app.command("ingest")
def ingest(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
) -> None:
    """Frames/s over UDP and WebSocket into a real daemon, against the decoder's ceiling."""
    with tempfile.TemporaryDirectory(prefix="bwmon-bench-") as tmp:
        run = functools.partial(ingest_bench.run_ingest, quick, Path(tmp))
        report("ingest", run, ingest_bench.print_summary, as_json)


@app.command("aggregate")
def aggregate(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
) -> None:
    """Frames/s through decode + aggregation on one core, and memory per live RTC stream."""
    run = functools.partial(aggregate_bench.run_aggregate, quick)
    report("aggregate", run, aggregate_bench.print_summary, as_json)


@app.command("fanout")
def fanout(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
) -> None:
    """Delta latency and size for 1,000 subscribers of 500 live meetings, and ingest with them."""
    run = functools.partial(fanout_bench.run_fanout, quick)
    report("fanout", run, fanout_bench.print_summary, as_json, (ClientFailed, DaemonFailed))


@app.command("metrics")
def metrics(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
) -> None:
    """/metrics with 5,000 live meetings: scrape time, CPU per scrape, cost to ingest."""
    with tempfile.TemporaryDirectory(prefix="bwmon-bench-") as tmp:
        run = functools.partial(metrics_bench.run_metrics, quick, Path(tmp))
        report("metrics", run, metrics_bench.print_summary, as_json, (DaemonFailed,))


@app.command("all")
def all_benchmarks(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
    mysql_host: MysqlHost = "127.0.0.1",
    mysql_port: MysqlPort = 3306,
    mysql_user: MysqlUser = "root",
    mysql_password: MysqlPassword = "",
) -> None:
    """Every benchmark in one run: ingest against StatsD and the bare receiver, end to end."""
    server = mysql_server(mysql_host, mysql_port, mysql_user, mysql_password)
    # --quick never installs StatsD (npm takes longer than a smoke run should); it uses an
    # installed one and says why it skipped it otherwise.
    run = functools.partial(all_bench.run_all, quick, server, install_statsd=not quick)
    report("all", run, all_bench.print_table, as_json)


@app.command("storage")
def storage(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
    mysql_host: MysqlHost = "127.0.0.1",
    mysql_port: MysqlPort = 3306,
    mysql_user: MysqlUser = "root",
    mysql_password: MysqlPassword = "",
) -> None:
    """Statements per table per minute and rows/s of the MySQL and SQLite sinks."""
    server = mysql_server(mysql_host, mysql_port, mysql_user, mysql_password)
    run = functools.partial(storage_bench.run_storage, server, quick)
    report("storage", run, storage_bench.print_summary, as_json, (StorageError,))


@app.command("client")
def client(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
    connections: Annotated[
        int, typer.Option(min=1, max=16, help="loopback calls in the page (the target is at 4)")
    ] = client_bench.CONNECTIONS,
    size_only: Annotated[
        bool, typer.Option("--size-only", help="only the module's size, no browser")
    ] = False,
) -> None:
    """The browser client's cost per tick per peer connection in Chromium, and its size."""
    if size_only:
        report("client", client_bench.module_size, client_bench.print_size, as_json)
        return
    run = functools.partial(client_bench.run_client, quick, connections)
    failures = (ChromiumMissing, DaemonFailed, client_bench.PageFailed)
    report("client", run, client_bench.print_summary, as_json, failures)


@app.command("middleware")
def middleware(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
    node: Annotated[
        bool, typer.Option(help="also run clients/node/bench/overhead.mjs when it is there")
    ] = True,
) -> None:
    """What the HTTP middleware (ASGI, WSGI, Node) adds per request, beside Prometheus's."""
    run = functools.partial(middleware_bench.run_middleware, quick, node)
    hint = " (pip install -e '.[dev]')"
    report("middleware", run, middleware_bench.print_summary, as_json, (ImportError,), hint)


@app.command("dashboard")
def dashboard(
    as_json: JsonFlag = False,
    minutes: Annotated[
        float, typer.Option(min=1, help="the soak under live updates (the heap is read after it)")
    ] = 5.0,
    redis_url: Annotated[
        str, typer.Option(help="a Redis to fan out through (default: a private redis-server)")
    ] = "",
    mysql_host: MysqlHost = "127.0.0.1",
    mysql_port: MysqlPort = 3306,
    mysql_user: MysqlUser = "root",
    mysql_password: MysqlPassword = "",
) -> None:
    """The dashboard in Chromium with 5,000 live meetings: render, scroll, search, heap, size."""
    server = mysql_server(mysql_host, mysql_port, mysql_user, mysql_password)
    run = functools.partial(dashboard_bench.run_dashboard, server, redis_url, minutes)
    failures = (ChromiumMissing, DaemonFailed, dashboard_bench.DashboardFailed)
    report("dashboard", run, dashboard_bench.print_summary, as_json, failures)
