"""deploy/grafana: the dashboard refers only to what exists. Every PromQL query names metrics
(and groups by labels) of a real ``/metrics`` exposition of a daemon fed frames; every SQL
query, its Grafana macros substituted, is EXPLAINed on a database ``bwmon migrate`` made."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from collector.app import Daemon
from collector.config import from_dict
from collector.http.server import Request
from protocol import HttpSample, RtcSample
from tests.helpers import admin, bwmon

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "bwmon.json").read_text())
PANELS: list[dict[str, Any]] = DASHBOARD["panels"]
METRIC = re.compile(r"\bbwmon_[a-z0-9_]+")
BY = re.compile(r"\bby \(([^)]*)\)")
FROM, TO = 1_800_000_000, 1_800_086_400


def targets(kind: str) -> list[dict[str, Any]]:
    return [t for p in PANELS for t in p["targets"] if t["datasource"]["type"] == kind]


def exposition() -> dict[str, set[str]]:
    """Sample names of a daemon's ``/metrics`` with live meetings, relayed participants and
    HTTP traffic, each with the label names it carries."""
    daemon = Daemon(from_dict({"storage": {"backend": "none"}}))
    engine = daemon.engine
    now = float(FROM)
    for seq in range(4):
        frames: list[Any] = [
            RtcSample(
                meeting="m",
                participant=f"p{n}",
                connection="c",
                seq=seq,
                client_ts=(now + seq) * 1000,
                audio_bytes_received=4_000 * seq,
                audio_packets_received=50 * seq,
                pair_bytes_sent=1_000 * seq,
                rtt_ms=50.0,
                audio_jitter_ms=5.0,
                local_candidate="relay" if n else "host",
            )
            for n in range(2)
        ]
        frames.append(
            HttpSample(
                service="api",
                instance="i",
                boot="b",
                route="/r",
                method="GET",
                seq=seq,
                client_ts=(now + seq) * 1000,
                requests=seq,
                status=[0, seq, 0, 0, 0],
                bytes_in=seq,
                bytes_out=seq,
                latency_sum_ms=seq,
                latency_hist=[seq] + [0] * 11,
            )
        )
        engine.add(frames, now + seq)
        engine.tick(now + seq + 0.5)
        daemon.on_output(engine.drain())
    response = trio.run(daemon.health_routes.metrics, Request(method="GET", path="/metrics"))
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_the_dashboard_is_a_current_grafana_dashboard() -> None:
    assert DASHBOARD["schemaVersion"] >= 36
    assert len({p["id"] for p in PANELS}) == len(PANELS)
    # The provisioning files' data sources, read without a YAML parser: each one's uid line
    # is followed by its type line.
    provisioned = (GRAFANA / "provisioning" / "datasources" / "bwmon.yaml").read_text()
    uids = {(kind, uid) for uid, kind in re.findall(r"uid: (\S+)\n\s+type: (\S+)", provisioned)}
    assert len(uids) == 2
    for panel in PANELS:
        assert (panel["datasource"]["type"], panel["datasource"]["uid"]) in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    providers = (GRAFANA / "provisioning" / "dashboards" / "bwmon.yaml").read_text()
    assert "type: file" in providers


def test_every_promql_query_names_metrics_and_labels_the_daemon_exposes() -> None:
    exposed = exposition()
    queries = targets("prometheus")
    assert queries
    for target in queries:
        expr = target["expr"]
        metrics = METRIC.findall(expr)
        assert metrics, expr
        for metric in metrics:
            assert metric in exposed, f"{metric} is not in /metrics ({expr})"
        labels = set().union(*(exposed[m] for m in metrics))
        for group in BY.findall(expr):
            for label in (name.strip() for name in group.split(",")):
                assert label in labels, f"{label} is not a label of {metrics} ({expr})"


def grafana_macros(sql: str) -> str:
    """The query as Grafana's MySQL data source sends it for a one-day range."""
    sql = re.sub(r"\$__unixEpochFilter\((\w+)\)", rf"\1 >= {FROM} AND \1 <= {TO}", sql)
    seconds = {"1m": 60, "1h": 3600, "1d": 86400}
    return re.sub(
        r"\$__unixEpochGroupAlias\((\w+), *(\w+)\)",
        lambda m: f"floor({m[1]}/{seconds[m[2]]})*{seconds[m[2]]} AS time",
        sql,
    )


def test_every_sql_query_runs_on_the_migrated_schema(tmp_path: Path, database: str) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[storage]\nbackend = 'mysql'\nmysql_user = 'root'\nmysql_database = '{database}'\n"
        f"state_dir = '{tmp_path}'\n"
    )
    migrated = bwmon("migrate", "--config", str(config))
    assert migrated.returncode == 0, migrated.stderr
    queries = targets("mysql")
    assert queries
    for target in queries:
        sql = grafana_macros(target["rawSql"])
        assert "$__" not in sql, sql
        try:
            admin(f"EXPLAIN {sql}", database)
        except Exception as exc:  # the server's message names the table or column
            pytest.fail(f"{target['rawSql']!r}: {exc}")
