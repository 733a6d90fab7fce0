"""``/metrics``: the daemon's health counters in the Prometheus text format (0.0.4).

A pure function of the ``DaemonHealth`` that ``/healthz`` encodes (``collector.http.health``),
read in its JSON form, so that both routes say the same and any part of it renders: no I/O, no
clock, no registry; the route only encodes what ``render_metrics`` returns. Names start with
``bwmon_``, values are in base units (``_seconds``, ``_bytes``) and counters end in ``_total``.

Labels come only from fixed sets, never from what a client sends: ``transport`` (``udp``,
``websocket``, ``http``), ``reason`` (the protocol's reason codes, the engine's cap reasons and its
reasons for not applying a sample, the keys of the counters), ``kind`` (frame and output kinds),
``backend``, ``channel``, ``code`` (HTTP status) and ``version``. Meeting, participant or route
ids must never become labels: one series per meeting would grow without bound. Absent keys
(storage ``backend = "none"``, a UDP socket not open yet) are skipped, not written as zero.

Call quality and HTTP traffic (and the open alerts, by rule and severity) come from the live
state, not from ``DaemonHealth``: ``collector.http.live_metrics`` renders them with the
``Exposition`` of this module, and the route serves both parts one after the other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from protocol.codec import REASONS

if TYPE_CHECKING:
    from collector.http.health import DaemonHealth

MetricType = Literal["counter", "gauge", "histogram"]
Labels = tuple[tuple[str, str], ...]
TRANSPORTS = ("udp", "websocket", "http")
# Reason codes of PROTOCOL.md §6 that ingest gives outside the decoder (admission, rate
# limits, the WebSocket hello and POST /ingest: protocol.signing, collector.auth,
# collector.ingest.limits, collector.ingest.session, collector.ingest.post); with REASONS, a
# series from the start.
ADMISSION_REASONS = (
    "bad_signature",
    "busy",
    "forbidden",
    "no_hello",
    "rate_limited",
    "unauthorized",
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class _Family:
    name: str
    type: MetricType
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)  # suffix, …


class Exposition:
    """Families in the order first added; all samples of one family are written together."""

    def __init__(self) -> None:
        self.families: dict[str, _Family] = {}

    def add(
        self,
        name: str,
        type_: MetricType,
        help_: str,
        value: Any,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Add one sample; a value that is absent or not a number is skipped."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = _Family(name, type_, help_)
        family.samples.append(("", tuple((labels or {}).items()), value))

    def histogram(
        self,
        name: str,
        help_: str,
        buckets: Iterable[tuple[float, float]],
        total: float,
        labels: Mapping[str, str] | None = None,
        count: float | None = None,
    ) -> None:
        """A histogram's ``_bucket`` samples (``buckets``: upper bound and cumulative count,
        the last one ``+Inf``), its ``_sum`` and its ``_count`` (the ``+Inf`` bucket's unless
        given)."""
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = _Family(name, "histogram", help_)
        base = tuple((labels or {}).items())
        cumulative = 0.0
        for bound, cumulative in buckets:
            family.samples.append(("_bucket", (*base, ("le", _value(float(bound)))), cumulative))
        family.samples.append(("_sum", base, total))
        family.samples.append(("_count", base, cumulative if count is None else count))

    def counter(self, name: str, help_: str, value: Any, **labels: str) -> None:
        self.add(f"bwmon_{name}_total", "counter", help_, value, labels)

    def gauge(self, name: str, help_: str, value: Any, **labels: str) -> None:
        self.add(f"bwmon_{name}", "gauge", help_, value, labels)

    def render(self) -> str:
        lines: list[str] = []
        for family in self.families.values():
            lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
            lines.append(f"# TYPE {family.name} {family.type}")
            lines.extend(
                f"{family.name}{suffix}{_labels(labels)} {_value(value)}"
                for suffix, labels, value in family.samples
            )
        return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels) + "}"


def _value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _section(health: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    """The nested mapping at ``keys``, or an empty one when any level is absent."""
    node: Any = health
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _by_key(values: Any, fixed: Iterable[str] = ()) -> dict[str, Any]:
    """A ``{key: count}`` mapping, with the ``fixed`` keys present (as 0) even before use, so
    ``rate()`` sees a series from the start."""
    out: dict[str, Any] = dict.fromkeys(fixed, 0)
    if isinstance(values, Mapping):
        out.update({str(k): v for k, v in values.items()})
    return dict(sorted(out.items()))


def render_metrics(health: DaemonHealth | Mapping[str, Any]) -> str:
    """The Prometheus text exposition of a ``DaemonHealth`` or of its JSON form (a part of it
    renders the series of that part)."""
    doc: Mapping[str, Any] = (  # as /healthz has it: absent fields left out
        msgspec.to_builtins(health) if isinstance(health, msgspec.Struct) else health
    )
    out = Exposition()
    version = doc.get("version")
    if isinstance(version, str):
        out.gauge("build_info", "Always 1; the version is in the label.", 1, version=version)
    out.gauge("uptime_seconds", "Seconds since the daemon started.", doc.get("uptime_s"))
    _ingest(out, doc)
    _aggregate(out, doc)
    _storage(out, doc)
    _fanout(out, doc)
    _http(out, doc)
    _notify(out, doc)
    return out.render()


def _ingest(out: Exposition, health: Mapping[str, Any]) -> None:
    for transport in TRANSPORTS:
        t = _section(health, "ingest", transport)
        if not t:
            continue
        out.counter(
            "ingest_messages",
            "Messages received (UDP datagrams, WebSocket messages, POST /ingest bodies).",
            t.get("messages"),
            transport=transport,
        )
        out.counter(
            "ingest_received_bytes",
            "Bytes of the messages received.",
            t.get("bytes"),
            transport=transport,
        )
        out.counter(
            "ingest_frames_accepted",
            "Frames decoded and handed to the aggregation engine's queue.",
            t.get("frames_accepted"),
            transport=transport,
        )
        for reason, count in _by_key(
            t.get("rejected_by_reason"), (*REASONS, *ADMISSION_REASONS)
        ).items():
            out.counter(
                "ingest_frames_rejected",
                "Frames (or messages) rejected, by protocol reason code.",
                count,
                transport=transport,
                reason=reason,
            )
    ingest = _section(health, "ingest")
    out.gauge(
        "ingest_queue_batches",
        "Frame batches waiting for the aggregation engine.",
        ingest.get("queue_batches"),
    )
    out.gauge(
        "ingest_queue_capacity_batches",
        "Size of the engine's queue (ingest.queue_batches).",
        ingest.get("queue_capacity_batches"),
    )
    loop = _section(health, "loop")
    out.gauge(
        "event_loop_lag_seconds",
        "How late the event loop last woke a sleeping task.",
        loop.get("lag_s"),
    )
    out.gauge(
        "event_loop_lag_max_seconds",
        "The largest event-loop lag of the last minute.",
        loop.get("lag_max_s"),
    )
    udp = _section(health, "ingest", "udp")
    out.counter(
        "udp_kernel_drops",
        "Datagrams the kernel dropped on the UDP socket (receive buffer full).",
        udp.get("kernel_drops"),
    )
    out.gauge(
        "udp_receive_buffer_bytes",
        "Effective receive buffer size of the UDP socket.",
        udp.get("receive_buffer_bytes"),
    )
    out.counter("udp_turns", "Turns of the UDP loop.", udp.get("turns"))
    out.counter(
        "udp_turns_bounded",
        "Turns of the UDP loop that its frame or time bound ended.",
        udp.get("turns_bounded"),
    )
    out.gauge(
        "udp_turn_max_seconds",
        "The longest turn of the UDP loop of the last one to two minutes.",
        udp.get("turn_max_s"),
    )
    out.gauge(
        "udp_turn_cpu_max_seconds",
        "The most CPU time one turn of the UDP loop took, of the last one to two minutes.",
        udp.get("turn_cpu_max_s"),
    )
    consumer = _section(health, "consumer")
    out.counter("consumer_batches", "Frame batches taken off the queue.", consumer.get("batches"))
    for kind, count in _by_key(consumer.get("frames_by_kind")).items():
        out.counter("consumer_frames", "Frames aggregated, by frame kind.", count, kind=kind)
    for kind, count in _by_key(consumer.get("produced")).items():
        out.counter("engine_outputs", "What the engine produced, by kind.", count, kind=kind)
    out.counter(
        "engine_errors", "Batches the engine failed on (a bug).", consumer.get("engine_errors")
    )


def _aggregate(out: Exposition, health: Mapping[str, Any]) -> None:
    live = _section(health, "aggregate")
    out.gauge("live_meetings", "Meetings with live state.", live.get("meetings"))
    out.gauge("live_participants", "Participants in live meetings.", live.get("participants"))
    out.gauge("live_rtc_streams", "RTC streams with live state.", live.get("rtc_streams"))
    out.gauge("live_http_routes", "HTTP routes with live state.", live.get("http_routes"))
    out.gauge(
        "live_http_instances",
        "HTTP instances (one server process on one route) with live state.",
        live.get("http_instances"),
    )
    out.gauge(
        "http_routes_max",
        "The cap on live HTTP routes (max_http_routes).",
        live.get("max_http_routes"),
    )
    out.gauge(
        "http_instances_per_route_max",
        "The cap on live instances of one HTTP route (max_http_instances_per_route).",
        live.get("max_http_instances_per_route"),
    )
    out.gauge(
        "http_instances_max",
        "The cap on live HTTP instances of all routes together (max_http_instances).",
        live.get("max_http_instances"),
    )
    out.gauge(
        "http_idle_seconds",
        "Seconds without a sample after which an HTTP instance is forgotten (http_idle_s).",
        live.get("http_idle_s"),
    )
    out.counter(
        "http_instances_expired",
        "HTTP instances forgotten after http_idle_s without a sample.",
        live.get("http_instances_expired"),
    )
    out.counter(
        "http_routes_expired",
        "HTTP routes forgotten with their last instance, their last minute row closed first.",
        live.get("http_routes_expired"),
    )
    for reason, count in _by_key(live.get("refused_by_reason")).items():
        out.counter(
            "frames_refused",
            "Frames the engine refused because a cap was reached, by reason.",
            count,
            reason=reason,
        )
    for kind, count in _by_key(live.get("baseline_samples")).items():
        out.counter(
            "baseline_samples",
            "First samples of streams that began before the daemon saw them: taken as a "
            "baseline, what they had counted is not stored (PROTOCOL.md 8.5), by kind.",
            count,
            kind=kind,
        )
    for kind, reasons in _by_key(live.get("samples_not_applied")).items():
        for reason, count in _by_key(reasons).items():
            out.counter(
                "samples_not_applied",
                "Samples the engine did not apply (a duplicate q, a boot the stream has left, "
                "a cap), by kind and reason.",
                count,
                kind=kind,
                reason=reason,
            )


def _storage(out: Exposition, health: Mapping[str, Any]) -> None:
    storage = _section(health, "storage")
    backend = storage.get("backend")
    if isinstance(backend, str):
        out.gauge(
            "storage_backend_info", "Always 1; the backend is in the label.", 1, backend=backend
        )
    out.counter(
        "storage_rows_written", "Rows written to the database.", storage.get("rows_written")
    )
    out.counter("storage_flushes", "Successful flushes.", storage.get("flushes"))
    out.counter("storage_failed_flushes", "Failed flush attempts.", storage.get("failed_flushes"))
    out.gauge(
        "storage_consecutive_failures",
        "Failed flush attempts since the last success (0: storage is writing).",
        storage.get("consecutive_failures"),
    )
    out.gauge(
        "storage_pending_rows", "Rows queued for the next flush.", storage.get("pending_rows")
    )
    out.counter("storage_spooled_rows", "Rows spooled to disk.", storage.get("rows_spooled"))
    out.gauge(
        "storage_spooled_batches", "Batches waiting in the spool.", storage.get("spooled_batches")
    )
    out.counter(
        "storage_dropped_rows", "Rows dropped (queue and spool full).", storage.get("rows_dropped")
    )
    out.counter(
        "storage_refused_rows",
        "Rows the database refused (set aside in the refused file).",
        storage.get("rows_refused"),
    )
    out.gauge(
        "storage_refused_file_bytes", "Bytes of the refused file.", storage.get("refused_bytes")
    )
    out.counter(
        "storage_spool_errors",
        "Spool reads or appends that failed (the rows stay queued).",
        storage.get("spool_errors"),
    )
    if "probe_error" in storage:
        out.gauge(
            "storage_responding",
            "1 while the database answers the probe, 0 while it does not.",
            int(storage["probe_error"] is None),
        )
    out.counter("storage_statements", "SQL statements executed.", storage.get("statements"))
    out.gauge("storage_spool_bytes", "Bytes of the spool file.", storage.get("spool_bytes"))
    out.counter(
        "storage_flush_seconds",
        "Seconds spent flushing (failed attempts included).",
        storage.get("flush_seconds"),
    )
    out.gauge(
        "storage_last_flush_seconds", "Duration of the last flush.", storage.get("last_flush_s")
    )
    out.gauge(
        "storage_checkpoint_bytes", "Size of the last checkpoint.", storage.get("checkpoint_bytes")
    )
    out.counter(
        "storage_checkpoint_errors",
        "Checkpoints not saved or not restored.",
        storage.get("checkpoint_errors"),
    )


def _fanout(out: Exposition, health: Mapping[str, Any]) -> None:
    fanout = _section(health, "fanout")
    channel = fanout.get("channel")
    if isinstance(channel, str):
        out.gauge(
            "fanout_channel_info", "Always 1; the channel is in the label.", 1, channel=channel
        )
    last_ms = fanout.get("last_publish_ms")
    counters = {
        "publishes": ("fanout_publishes", "Publish intervals that reached the channel."),
        "deltas": ("fanout_deltas_published", "Deltas published to the channel."),
        "unavailable": ("fanout_publish_unavailable", "Publishes refused: channel unavailable."),
        "epoch_changes": ("fanout_epoch_changes", "Channel epoch changes seen by the publisher."),
        "sessions": ("fanout_sessions", "Subscriber sessions opened."),
        "refused": ("fanout_sessions_refused", "Subscriber sessions refused (too many)."),
        "deltas_delivered": ("fanout_deltas_delivered", "Deltas the channel delivered."),
        "deltas_sent": ("fanout_deltas_sent", "Deltas sent to subscribers."),
        "deltas_written_now": (
            "fanout_deltas_written_now",
            "Of the deltas sent, those written straight to the subscriber's socket.",
        ),
        "snapshots_sent": ("fanout_snapshots_sent", "Snapshots sent to subscribers."),
        "resumed": ("fanout_resumed", "Subscriptions resumed from an (epoch, seq)."),
        "queues_replaced": (
            "fanout_queues_replaced",
            "Slow subscribers' queues replaced by a snapshot.",
        ),
        "heartbeat_timeouts": (
            "fanout_heartbeat_timeouts",
            "Subscribers dropped for missing heartbeats.",
        ),
        "bad_messages": ("fanout_bad_messages", "Unreadable messages from subscribers."),
        "prepared": (
            "fanout_meeting_topics_prepared",
            "First snapshots of meeting topics prepared with every daemon's part.",
        ),
        "parts_timeouts": (
            "fanout_parts_timeouts",
            "Prepared snapshots sent before every live daemon had published its part.",
        ),
    }
    for key, (name, help_) in counters.items():
        out.counter(name, help_, fanout.get(key))
    out.gauge("fanout_subscribers", "Connected subscribers.", fanout.get("subscribers"))
    redis = fanout.get("redis")
    if isinstance(redis, Mapping):
        redis_counters = {
            "outages": ("fanout_redis_outages", "Times Redis became unreachable."),
            "fallbacks": (
                "fanout_redis_fallbacks",
                "Times subscribers were switched to this daemon's own meetings (Redis down).",
            ),
            "daemons_reaped": (
                "fanout_redis_daemons_reaped",
                "Dead daemons whose entities this daemon removed from the shared topics.",
            ),
            "entities_reaped": (
                "fanout_redis_entities_reaped",
                "Entities of dead daemons this daemon removed.",
            ),
            "presumed_dead": (
                "fanout_redis_presumed_dead",
                "Times this daemon, cut off from Redis, found its entities removed.",
            ),
        }
        for key, (name, help_) in redis_counters.items():
            out.counter(name, help_, redis.get(key))
    if isinstance(last_ms, int | float) and not isinstance(last_ms, bool):
        out.gauge("fanout_last_publish_seconds", "Duration of the last publish.", last_ms / 1000)


def _http(out: Exposition, health: Mapping[str, Any]) -> None:
    http = _section(health, "http")
    out.gauge("http_connections_open", "Open TCP connections.", http.get("connections_open"))
    out.counter("http_connections", "TCP connections accepted.", http.get("connections_total"))
    out.counter(
        "http_connections_refused",
        "TCP connections refused (at max_connections).",
        http.get("connections_refused"),
    )
    out.counter(
        "http_connections_refused_per_source",
        "TCP connections refused (at limits.max_connections_per_source).",
        http.get("connections_refused_per_source"),
    )
    out.counter(
        "http_connections_evicted",
        "Connections closed before their request head to admit a new one (at max_connections).",
        http.get("connections_evicted"),
    )
    out.counter(
        "http_connections_operator",
        "Health and metrics requests from loopback answered over a connection limit.",
        http.get("connections_operator"),
    )
    out.counter(
        "http_head_timeouts",
        "Connections closed for not sending their request head in time.",
        http.get("head_timeouts"),
    )
    out.counter(
        "http_connection_errors",
        "Connections ended by an error in a handler.",
        http.get("connection_errors"),
    )
    out.counter(
        "http_response_errors",
        "Responses that failed in their route or while streaming.",
        http.get("response_errors"),
    )
    for code, count in _by_key(http.get("requests_by_status")).items():
        out.counter("http_requests", "HTTP responses, by status code.", count, code=code)


# -- alert notifications ([[notify]] sinks) ----------------------------------------------------

_NOTIFY_COUNTERS: Final = {
    "sent": "Alert transitions delivered (a 2xx answer).",
    "failed": "Delivery attempts that failed (no answer, a 5xx, 408 or 429); retried.",
    "retried": "Delivery attempts after the first of a transition.",
    "rejected": "Alert transitions the receiver refused for good (another 4xx); not retried.",
    "dropped": "Alert transitions dropped from a full queue (the oldest waiting).",
    "resent": "Firing alerts posted to Alertmanager again (each alert once per resend).",
}


def _notify(out: Exposition, health: Mapping[str, Any]) -> None:
    sinks = _section(health, "notify").get("sinks")
    for sink in sinks if isinstance(sinks, list) else []:
        if not isinstance(sink, Mapping):
            continue
        labels = {"sink": str(sink.get("name")), "kind": str(sink.get("kind"))}
        for key, help_ in _NOTIFY_COUNTERS.items():
            out.counter(f"notify_{key}", help_, sink.get(key), **labels)
        out.gauge(
            "notify_queue_depth",
            "Alert transitions waiting for delivery, the one being sent included.",
            sink.get("queue_depth"),
            **labels,
        )
        out.gauge(
            "notify_queue_capacity",
            "The sink's queue_max.",
            sink.get("queue_capacity"),
            **labels,
        )
        out.gauge(
            "notify_firing",
            "Alertmanager sinks: the firing alerts they post again.",
            sink.get("firing"),
            **labels,
        )
