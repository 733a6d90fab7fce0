"""The sinks' counters in ``/metrics``: valid exposition (the official parser reads it), one
series per sink labelled by sink and kind."""

from __future__ import annotations

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from collector.http.metrics import render_metrics
from collector.notifications.health import NotifyHealth, SinkHealth


def test_every_sink_counter_is_a_labelled_series() -> None:
    sinks = [
        SinkHealth(
            name=name,
            kind=kind,
            sent=5,
            failed=3,
            retried=2,
            rejected=1,
            dropped=4,
            resent=6,
            queue_depth=7,
            queue_capacity=100,
            firing=2,
            last_error=None,
        )
        for name, kind in (("ops", "webhook"), ("am", "alertmanager"))
    ]
    text = render_metrics({"notify": msgspec.to_builtins(NotifyHealth(sinks=sinks))})
    samples = {
        (s.name, s.labels["sink"], s.labels["kind"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for sink, kind in (("ops", "webhook"), ("am", "alertmanager")):
        assert samples[("bwmon_notify_sent_total", sink, kind)] == 5
        assert samples[("bwmon_notify_failed_total", sink, kind)] == 3
        assert samples[("bwmon_notify_retried_total", sink, kind)] == 2
        assert samples[("bwmon_notify_rejected_total", sink, kind)] == 1
        assert samples[("bwmon_notify_dropped_total", sink, kind)] == 4
        assert samples[("bwmon_notify_resent_total", sink, kind)] == 6
        assert samples[("bwmon_notify_queue_depth", sink, kind)] == 7
        assert samples[("bwmon_notify_queue_capacity", sink, kind)] == 100
        assert samples[("bwmon_notify_firing", sink, kind)] == 2
