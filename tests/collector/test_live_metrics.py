"""``LiveMetrics`` against an engine fed in daemon time: counters that count every request
once whether its minute is open, closed and waiting, or drained; the ``service`` label's cap;
routes only when listed, with methods from a fixed set."""

from __future__ import annotations

import msgspec
import trio
from prometheus_client.parser import text_string_to_metric_families

from collector.aggregate.engine import Engine
from collector.http.live_metrics import LiveMetrics, MetricsSettings
from protocol import HttpSample
from tests.helpers import http_sample

T0 = 1_800_000_000.0  # a minute's start


def sample(seq: int, counts_of: int) -> HttpSample:
    """``http_sample``'s counters at ``counts_of``, as sample ``seq`` (0: counts in full)."""
    return msgspec.structs.replace(http_sample(counts_of), seq=seq)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: LiveMetrics, engine: Engine, now: float) -> Samples:
    text = trio.run(metrics.render, engine, now)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests(samples: Samples, **labels: str) -> float:
    return sum(
        v
        for (name, keys), v in samples.items()
        if name == "bwmon_http_service_requests_total"
        and all((k, labels[k]) in keys for k in labels)
    )


def test_a_request_counts_once_whether_its_minute_is_open_closed_or_drained() -> None:
    engine, metrics = Engine(), LiveMetrics()
    first = sample(0, 3)
    engine.add([first], T0 + 1)
    open_minute = requests(scrape(metrics, engine, T0 + 2))
    assert open_minute == sum(first.status)
    second = sample(1, 5)
    engine.add([second], T0 + 61)  # closes the first minute: its row waits in the output
    engine.tick(T0 + 62)
    waiting = requests(scrape(metrics, engine, T0 + 62))
    metrics.take(engine.drain())
    drained = requests(scrape(metrics, engine, T0 + 62))
    assert waiting == drained == sum(second.status)


def test_services_past_the_cap_count_as_other() -> None:
    engine, metrics = Engine(), LiveMetrics(MetricsSettings(max_http_services=1))
    for service in ("api", "web", "admin"):
        engine.add([msgspec.structs.replace(sample(0, 3), service=service)], T0 + 1)
    samples = scrape(metrics, engine, T0 + 2)
    services = {
        dict(keys)["service"]
        for (name, keys) in samples
        if name == "bwmon_http_service_sent_bytes_total"
    }
    assert services == {"api", "other"}
    assert requests(samples, service="other") == 2 * requests(samples, service="api")


def test_listed_services_only_and_listed_routes_with_fixed_methods() -> None:
    engine = Engine()
    metrics = LiveMetrics(
        MetricsSettings(http_services=("web",), http_routes=(("api", "/v1/orders"),))
    )
    base = sample(0, 3)
    engine.add(
        [
            msgspec.structs.replace(base, route="/v1/orders", method="GET"),
            msgspec.structs.replace(base, route="/v1/orders", method="PURGE", instance="i2"),
            msgspec.structs.replace(base, route="/v1/other", instance="i3"),
        ],
        T0 + 1,
    )
    samples = scrape(metrics, engine, T0 + 2)
    assert {
        dict(keys)["service"]
        for (name, keys) in samples
        if name == "bwmon_http_service_sent_bytes_total"
    } == {"other"}
    routes = {
        (dict(keys)["route"], dict(keys)["method"])
        for (name, keys) in samples
        if name == "bwmon_http_route_sent_bytes_total"
    }
    assert routes == {("/v1/orders", "GET"), ("/v1/orders", "other")}
