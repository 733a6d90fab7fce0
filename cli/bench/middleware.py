"""``bwmon bench middleware``: what the HTTP middleware of the clients adds to a request, beside
a Prometheus instrumentation in its place, in one run (docs/BENCHMARKS.md).

- **In process, no server.** Each application is called directly, as its server would call
  it, with a fresh scope or environ per request: ASGI with a ``receive`` that gives one empty
  ``http.request`` and a ``send`` that keeps nothing; WSGI with a ``start_response`` that keeps
  nothing, its iterable run to the end and closed. What is measured is the middleware's work
  alone, not a server's or a socket's.
- **Like with like.** A Prometheus instrumentation names the route by matching the request
  against the framework's routes, so it needs a framework: prometheus-fastapi-instrumentator a
  Starlette application, prometheus-flask-exporter a Flask one. Each family has a trivial
  application with no framework (bare, and with our middleware: the middleware's own cost)
  and a framework application with one path-parameter route (bare, with our adapter —
  ``bwmon_client.starlette.instrument``, ``bwmon_client.flask.instrument`` — and with the
  Prometheus instrumentation). *Added* is measured against the same application bare; the
  ratio compares the two instrumentations on the same framework application.
- **Interleaved batches, CPU time.** Every round times one batch of requests of every variant,
  in turn, so that a slower moment of the machine touches them all alike; a variant's figure is
  the median of its batches' means (µs per request), and what it *adds* the median of its
  differences to the bare batch of the same round. The clock is the thread's CPU time
  (``time.thread_time``): on a shared machine, the time the process waits for a CPU is not the
  middleware's. A batch is 1,000 requests of a trivial application and 50 of a framework's, a
  few milliseconds each.
- **The emitter is real** (``bwmon_client.Emitter``, its flusher thread started, sending to a
  loopback port every 10 s as by default), as in a server.
- **Node** (``clients/node/bench/overhead.mjs``, Express against express-prom-bundle, with
  bwmon-node on the server — ``monitor.instrument(server)`` — and as a middleware, beside an
  empty middleware): run and reported as it prints its JSON, when Node.js and the script are
  there, with Express and express-prom-bundle (pinned versions, installed once into the
  benchmarks' npm cache, never into the repository; ``--quick`` uses them only when they are
  there) on ``NODE_PATH``, on one CPU (``one_cpu``); else ``node_skipped`` says why.

Targets: a Python middleware adds at most ``TARGET_ADDED_US`` per request (median), and at
least ``TARGET_RATIO`` times less than the Prometheus instrumentation of the same framework;
bwmon-node at most ``TARGET_NODE_ADDED_US``, on the server as the README instruments Express
(``node_added_us``) and as a middleware (``node_middleware_added_us``: each verdict apart). The
frameworks are the dev extra's (they are imported when the benchmark runs, so that ``bwmon``
itself does not need them).

What it must never do: report a figure it did not measure.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import typer

from cli.bench.harness import NpmUnavailable, median, meets, npm_installed, npm_package

TARGET_ADDED_US = 5.0
TARGET_RATIO = 3.0
TARGET_NODE_ADDED_US = 3.0
NODE_SCRIPT = Path(__file__).resolve().parents[2] / "clients" / "node" / "bench" / "overhead.mjs"
NODE_TIMEOUT_S = 600.0
# What overhead.mjs loads from NODE_PATH: Express and the Prometheus middleware it compares with.
NODE_PACKAGES = (("express", "5.1.0"), ("express-prom-bundle", "8.0.0"))

# µs per request of a variant, then the families it belongs to: (family, role) where role is
# bare, ours or prometheus; the trivial applications are their own families.
ASGI_VARIANTS = {
    "asgi_bare": ("asgi", "bare"),
    "asgi_ours": ("asgi", "ours"),
    "starlette_bare": ("starlette", "bare"),
    "starlette_ours": ("starlette", "ours"),
    "starlette_prometheus": ("starlette", "prometheus"),
}
WSGI_VARIANTS = {
    "wsgi_bare": ("wsgi", "bare"),
    "wsgi_ours": ("wsgi", "ours"),
    "flask_bare": ("flask", "bare"),
    "flask_ours": ("flask", "ours"),
    "flask_prometheus": ("flask", "prometheus"),
}
PROMETHEUS = {
    "starlette": "prometheus-fastapi-instrumentator",
    "flask": "prometheus-flask-exporter",
}
BODY = b"ok"
TRIVIAL_BATCH = 1000
FRAMEWORK_BATCH = 50


class Family(msgspec.Struct):
    """One application, bare and instrumented: medians in µs per request, and what each
    instrumentation adds to the bare median."""

    bare_us: float
    ours_us: float
    ours_added_us: float
    ours_meets: bool  # ours_added_us within TARGET_ADDED_US
    prometheus: str | None = None  # the instrumentation compared, None: none fits this app
    prometheus_us: float | None = None
    prometheus_added_us: float | None = None
    ratio: float | None = None  # prometheus added / ours added; None when ours added ≤ 0
    ratio_meets: bool | None = None  # at least TARGET_RATIO (ours added ≤ 0: yes)


class MiddlewareResult(msgspec.Struct):
    target_added_us: float
    target_ratio: float
    target_node_added_us: float
    meets_target: bool  # every Python family's added within target, every ratio at least it
    families: dict[str, Family]  # asgi, starlette, wsgi, flask
    rounds: int
    trivial_batch: int
    framework_batch: int
    node: dict[str, Any] | None = None  # overhead.mjs's JSON as it printed it
    node_added_us: float | None = None  # bwmon-node on the server (monitor.instrument)
    node_meets_target: bool | None = None
    node_middleware_added_us: float | None = None  # as an Express middleware
    node_middleware_meets_target: bool | None = None
    node_skipped: str | None = None


# -- the applications ------------------------------------------------------------------------


def _module(name: str) -> Any:
    return importlib.import_module(name)


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def _wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [BODY]


def _starlette() -> Any:
    applications = _module("starlette.applications")
    responses = _module("starlette.responses")
    routing = _module("starlette.routing")

    async def item(request: Any) -> Any:
        return responses.PlainTextResponse("ok")

    return applications.Starlette(routes=[routing.Route("/items/{item_id:int}", item)])


def _flask() -> Any:
    app = _module("flask").Flask("bench")

    def item(item_id: int) -> str:
        return "ok"

    app.add_url_rule("/items/<int:item_id>", view_func=item)
    return app


def asgi_apps(emitter: Any) -> dict[str, Any]:
    asgi = _module("bwmon_client.asgi")
    starlette = _module("bwmon_client.starlette")
    instrumentator = _module("prometheus_fastapi_instrumentator")
    registry = _module("prometheus_client").CollectorRegistry()
    prometheus = _starlette()
    instrumentator.Instrumentator(registry=registry).instrument(prometheus)
    return {
        "asgi_bare": _asgi_app,
        "asgi_ours": asgi.BwmonMiddleware(_asgi_app, emitter),
        "starlette_bare": _starlette(),
        "starlette_ours": starlette.instrument(_starlette(), emitter),
        "starlette_prometheus": prometheus,
    }


def wsgi_apps(emitter: Any) -> dict[str, Any]:
    wsgi = _module("bwmon_client.wsgi")
    flask = _module("bwmon_client.flask")
    exporter = _module("prometheus_flask_exporter")
    registry = _module("prometheus_client").CollectorRegistry()
    prometheus = _flask()
    exporter.PrometheusMetrics(prometheus, registry=registry)
    return {
        "wsgi_bare": _wsgi_app,
        "wsgi_ours": wsgi.BwmonWSGIMiddleware(_wsgi_app, emitter),
        "flask_bare": _flask(),
        "flask_ours": flask.instrument(_flask(), emitter),
        "flask_prometheus": prometheus,
    }


# -- the measurement -------------------------------------------------------------------------

ASGI_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/items/42",
    "raw_path": b"/items/42",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"bench"), (b"user-agent", b"bench")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
    "state": {},
}

WSGI_ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/items/42",
    "QUERY_STRING": "",
    "SERVER_NAME": "bench",
    "SERVER_PORT": "8000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "HTTP_HOST": "bench",
    "HTTP_USER_AGENT": "bench",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": io.StringIO(),
    "wsgi.multithread": True,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
    "wsgi.input_terminated": True,
}


async def _asgi_batch(app: Any, count: int) -> float:
    """CPU seconds for ``count`` requests of ``app``, one after the other."""
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        return None

    scope = ASGI_SCOPE
    start = time.thread_time()
    for _ in range(count):
        await app({**scope, "headers": list(scope["headers"]), "state": {}}, receive, send)
    return time.thread_time() - start


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return _write


def _write(data: bytes) -> None:
    return None


def _wsgi_batch(app: Any, count: int) -> float:
    """CPU seconds for ``count`` requests of ``app``: called, iterated, closed, as a server
    does."""
    environ = WSGI_ENVIRON
    start = time.thread_time()
    for _ in range(count):
        env = {**environ, "wsgi.input": io.BytesIO(b"")}
        result = app(env, _start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return time.thread_time() - start


def _batch(name: str) -> int:
    """Requests per batch of a variant: a few milliseconds of work."""
    return TRIVIAL_BATCH if name.startswith(("asgi", "wsgi")) else FRAMEWORK_BATCH


def _measure(asgi: dict[str, Any], wsgi: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """µs per request of every variant, one batch each per round; the order of the variants
    reverses every other round, so that none always follows the same one."""
    samples: dict[str, list[float]] = {name: [] for name in (*asgi, *wsgi)}
    loop = asyncio.new_event_loop()
    try:
        for round_no in range(rounds + 1):  # the first round warms up, not counted
            if round_no % 20 == 0:
                gc.collect()
            step = 1 if round_no % 2 else -1
            for name, app in list(asgi.items())[::step]:
                seconds = loop.run_until_complete(_asgi_batch(app, _batch(name)))
                if round_no:
                    samples[name].append(seconds / _batch(name) * 1e6)
            for name, app in list(wsgi.items())[::step]:
                seconds = _wsgi_batch(app, _batch(name))
                if round_no:
                    samples[name].append(seconds / _batch(name) * 1e6)
    finally:
        loop.close()
    return samples


def _added(samples: list[float], bare: list[float]) -> float:
    """The median of the differences, round by round: the slow drifts of a shared machine
    touch both batches of a round alike."""
    return round(median([a - b for a, b in zip(samples, bare, strict=True)]), 3)


def _families(samples: dict[str, list[float]]) -> dict[str, Family]:
    roles: dict[str, dict[str, list[float]]] = {}
    for name, (family, role) in (*ASGI_VARIANTS.items(), *WSGI_VARIANTS.items()):
        roles.setdefault(family, {})[role] = samples[name]
    families = {}
    for family, figures in roles.items():
        bare, ours = figures["bare"], figures["ours"]
        added = _added(ours, bare)
        result = Family(
            bare_us=round(median(bare), 3),
            ours_us=round(median(ours), 3),
            ours_added_us=added,
            ours_meets=added <= TARGET_ADDED_US,
        )
        if "prometheus" in figures:
            prometheus_added = _added(figures["prometheus"], bare)
            result.prometheus = PROMETHEUS[family]
            result.prometheus_us = round(median(figures["prometheus"]), 3)
            result.prometheus_added_us = prometheus_added
            result.ratio = round(prometheus_added / added, 2) if added > 0 else None
            result.ratio_meets = result.ratio is None or result.ratio >= TARGET_RATIO
        families[family] = result
    return families


def _meets(families: dict[str, Family]) -> bool:
    return all(f.ours_meets and f.ratio_meets is not False for f in families.values())


# -- Node ------------------------------------------------------------------------------------


def node_modules(install: bool) -> str:
    """NODE_PATH for overhead.mjs: Express and express-prom-bundle from the benchmarks' npm
    cache, installed there the first time when ``install`` (``NpmUnavailable`` says why they
    cannot be)."""
    paths = []
    for package, version in NODE_PACKAGES:
        if install:
            entry = npm_package(package, version, "package.json")
        else:
            found = npm_installed(package, version, "package.json")
            if found is None:
                raise NpmUnavailable(
                    f"{package} {version} is not installed (--quick installs none)"
                )
            entry = found
        paths.append(str(entry.parents[1]))  # .../<package>/node_modules
    return os.pathsep.join(paths)


def one_cpu() -> set[int] | None:
    """The one CPU overhead.mjs and its processes run on (the last this process may use), so
    that every app's figure comes from the same CPU (the script's header says why); None where
    affinity cannot be set."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return {max(os.sched_getaffinity(0))}


def run_node(quick: bool) -> tuple[dict[str, Any] | None, str | None]:
    """overhead.mjs's JSON, or why it did not run."""
    node = shutil.which("node")
    if node is None:
        return None, "node is not installed"
    if not NODE_SCRIPT.exists():
        return None, f"{NODE_SCRIPT.relative_to(NODE_SCRIPT.parents[3])} is not there"
    try:
        node_path = node_modules(install=not quick)
    except NpmUnavailable as exc:
        return None, str(exc)
    command = [node, str(NODE_SCRIPT), "--json"]
    if quick:
        command += ["--requests", "1500", "--batch", "250", "--warmup", "500"]
    cpu = one_cpu()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            timeout=NODE_TIMEOUT_S,
            cwd=NODE_SCRIPT.parents[3],
            env={**os.environ, "NODE_PATH": node_path},
            check=False,
            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, cpu),
        )
    except subprocess.TimeoutExpired:
        return None, f"overhead.mjs did not finish in {NODE_TIMEOUT_S:.0f} s"
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return None, f"overhead.mjs exited with {done.returncode}: {' / '.join(tail)}"
    try:
        figures = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None, "overhead.mjs printed no JSON"
    if not isinstance(figures, dict):
        return None, "overhead.mjs printed no JSON object"
    return figures, None


def node_added_us(figures: dict[str, Any], key: str) -> float | None:
    """The µs ``key`` (``instrument_added_ns``, ``middleware_added_ns``) of overhead.mjs's
    figures (``{"express": {…}}``) says bwmon-node adds to an Express request."""
    express = figures.get("express")
    if not isinstance(express, dict):
        return None
    added = express.get(key)
    return round(added / 1000, 3) if isinstance(added, int | float) else None


# -- the run ---------------------------------------------------------------------------------


def run_middleware(quick: bool, node: bool = True) -> MiddlewareResult:
    emitter_module = _module("bwmon_client")
    rounds = 15 if quick else 301
    # A real emitter, as an application has it, sending to a port nothing reads.
    emitter = emitter_module.Emitter("bench", url="udp://127.0.0.1:9")
    try:
        samples = _measure(asgi_apps(emitter), wsgi_apps(emitter), rounds)
    finally:
        emitter.close()
    families = _families(samples)
    result = MiddlewareResult(
        target_added_us=TARGET_ADDED_US,
        target_ratio=TARGET_RATIO,
        target_node_added_us=TARGET_NODE_ADDED_US,
        meets_target=_meets(families),
        families=families,
        rounds=rounds,
        trivial_batch=TRIVIAL_BATCH,
        framework_batch=FRAMEWORK_BATCH,
    )
    if not node:
        result.node_skipped = "--no-node"
        return result
    figures, skipped = run_node(quick)
    result.node, result.node_skipped = figures, skipped
    if figures is not None:
        result.node_added_us = node_added_us(figures, "instrument_added_ns")
        if result.node_added_us is not None:
            result.node_meets_target = result.node_added_us <= TARGET_NODE_ADDED_US
        result.node_middleware_added_us = node_added_us(figures, "middleware_added_ns")
        if result.node_middleware_added_us is not None:
            result.node_middleware_meets_target = (
                result.node_middleware_added_us <= TARGET_NODE_ADDED_US
            )
    return result


def print_summary(result: MiddlewareResult) -> None:
    typer.echo(
        f"CPU µs per request, median of {result.rounds} batches of {result.trivial_batch} "
        f"(trivial) or {result.framework_batch} (framework) requests; added: less the same "
        "application bare"
    )
    for name, family in result.families.items():
        line = (
            f"{name:10} bare {family.bare_us:7.2f}  ours {family.ours_us:7.2f} "
            f"({family.ours_added_us:+.2f}, target ≤ {result.target_added_us:g}: "
            f"{meets(family.ours_meets)})"
        )
        if family.prometheus is not None:
            ratio = f"{family.ratio:.1f}x" if family.ratio is not None else "n/a"
            line += (
                f"  {family.prometheus} {family.prometheus_us:7.2f} "
                f"({family.prometheus_added_us:+.2f}); ours {ratio} cheaper "
                f"(target ≥ {result.target_ratio:g}x: {meets(bool(family.ratio_meets))})"
            )
        typer.echo(line)
    express = result.node.get("express") if result.node is not None else None
    if isinstance(express, dict):
        us = {key: value / 1000 for key, value in express.items() if isinstance(value, int)}
        target = result.target_node_added_us
        typer.echo(
            f"{'express':10} bare {us.get('bare_ns', 0):7.2f}  empty middleware "
            f"{us.get('empty_ns', 0):7.2f} ({us.get('empty_added_ns', 0):+.2f})  "
            f"express-prom-bundle {us.get('prom_ns', 0):7.2f} ({us.get('prom_added_ns', 0):+.2f})"
            f"  [wall-clock µs, overhead.mjs, on {express.get('cpus', '?')} CPU(s)]"
        )
        for label, key, added, verdict in (
            ("instrument", "instrument_ns", result.node_added_us, result.node_meets_target),
            (
                "middleware",
                "middleware_ns",
                result.node_middleware_added_us,
                result.node_middleware_meets_target,
            ),
        ):
            typer.echo(
                f"{'':10} ours, {label} {us.get(key, 0):7.2f} ({added or 0:+.2f}, "
                f"target ≤ {target:g}: {meets(bool(verdict)) if added is not None else 'n/a'})"
            )
    elif result.node is not None:
        typer.echo(f"node       {json.dumps(result.node)}")
    else:
        typer.echo(f"node       skipped: {result.node_skipped}")
    typer.echo(f"python targets: {meets(result.meets_target)}")
