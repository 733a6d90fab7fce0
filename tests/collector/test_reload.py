"""``Daemon.reload`` (what SIGHUP runs): the reloadable sections are swapped together after
everything was validated; a bad configuration changes nothing; other sections are reported as
needing a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from collector.app import Daemon, _reload
from collector.auth import UnsafeBind
from collector.config import Config, ConfigError, from_dict, load
from protocol.tokens import Claims, mint

OLD_KEY = "o" * 32
NEW_KEY = "n" * 32


def config(**sections: Any) -> Config:
    return from_dict({"storage": {"backend": "none"}, **sections})


def read_token(key: str) -> str:
    return mint(key, Claims(rights=["read"], exp=int(time.time()) + 60))


def test_reload_swaps_keys_limits_rules_and_log_level() -> None:
    daemon = Daemon(config(auth={"token_secrets": [OLD_KEY]}))
    assert isinstance(daemon.auth.admit(read_token(OLD_KEY), "read"), Claims)
    new = config(
        auth={"token_secrets": [NEW_KEY], "udp_allow": ["10.0.0.0/8"]},
        limits={
            "source_frames_per_s": 50.0,
            "connection_frames_per_s": 20.0,
            "max_connections_per_source": 3,
        },
        alerts={"use_default_rules": False},
        log={"level": "error"},
    )
    try:
        assert daemon.reload(new) == []
        assert not isinstance(daemon.auth.admit(read_token(OLD_KEY), "read"), Claims)
        assert isinstance(daemon.auth.admit(read_token(NEW_KEY), "read"), Claims)
        assert daemon.admission.source_limiter.enabled
        assert daemon.admission.connection_rate.enabled
        assert daemon.http.settings.max_connections_per_source == 3
        assert daemon.admission.udp.allowlist is not None
        assert not daemon.admission.udp.allowlist.permits("127.0.0.1")
        assert daemon.engine.alerts.rules == ()
        assert daemon.config.log.level == "error"
        assert not structlog.get_logger().is_enabled_for(30)  # warning is filtered now
    finally:
        structlog.reset_defaults()


def test_other_sections_are_reported_not_applied() -> None:
    daemon = Daemon(config())
    new = config(server={"max_connections": 7}, fanout={"publish_interval_s": 5.0})
    assert daemon.reload(new) == ["server", "fanout"]
    assert daemon.config.server.max_connections == 1024
    assert daemon.config.fanout.publish_interval_s == 1.0


def test_cors_origins_are_reloaded_though_the_rest_of_server_is_not() -> None:
    daemon = Daemon(config(server={"cors_origins": ["https://a.example"]}))
    assert daemon.http.settings.cors_origins == ("https://a.example",)
    new = config(server={"cors_origins": ["https://b.example"], "max_connections": 7})
    assert daemon.reload(new) == ["server"]  # max_connections waits for a restart
    assert daemon.http.settings.cors_origins == ("https://b.example",)
    assert daemon.config.server.cors_origins == ["https://b.example"]
    assert daemon.config.server.max_connections == 1024
    assert daemon.reload(config()) == []
    assert not daemon.http.settings.cors_origins


def test_an_invalid_reload_changes_nothing() -> None:
    daemon = Daemon(config(server={"host": "0.0.0.0"}, auth={"allow_unauthenticated": True}))
    before = daemon.config
    rules = daemon.engine.alerts.rules
    # Duplicate rule names never get this far: loading the file refuses them (ConfigError).
    with pytest.raises(UnsafeBind):  # would open a public port without authentication
        daemon.reload(config(server={"host": "0.0.0.0"}, limits={"source_frames_per_s": 9.0}))
    assert daemon.config is before
    assert daemon.engine.alerts.rules == rules
    assert not daemon.auth.required
    assert not daemon.admission.source_limiter.enabled


def test_duplicate_rule_names_are_a_configuration_error() -> None:
    rule = {"name": "r", "metric": "rtt_ms", "raise_threshold": 5.0, "clear_threshold": 4.0}
    with pytest.raises(ConfigError, match="rule names must be unique: r"):
        config(alerts={"rules": [rule, rule]})


SLOW_RULE = (
    "[[alerts.rules]]\nname = 'slow'\nmetric = '{metric}'\n"
    "raise_threshold = 400.0\nclear_threshold = 300.0\n"
)


def test_sighup_with_an_unknown_alert_metric_keeps_the_running_rules(tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text("[storage]\nbackend = 'none'\n" + SLOW_RULE.format(metric="rtt_ms"))
    daemon = Daemon(load(path))
    rules = daemon.engine.alerts.rules
    assert "slow" in {rule.name for rule in rules}
    path.write_text("[storage]\nbackend = 'none'\n" + SLOW_RULE.format(metric="rtt"))
    with capture_logs() as logs:
        _reload(daemon, lambda: load(path))
    assert [entry["event"] for entry in logs] == ["reload_failed"]
    assert logs[0]["error"] == (
        f"{path}: alerts.rules[0].metric = 'rtt': expected one of: "
        "'jitter_ms', 'loss_pct', 'mos', 'relay_tcp', 'rtt_ms'"
    )
    assert daemon.engine.alerts.rules == rules


def test_sighup_with_a_weak_secret_names_the_key_and_logs_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(f"[storage]\nbackend = 'none'\n[auth]\ntoken_secrets = ['{OLD_KEY}']\n")
    daemon = Daemon(load(path))
    weak = "short-but-secret"
    path.write_text(
        f"[storage]\nbackend = 'none'\n[auth]\ntoken_secrets = ['{NEW_KEY}', '{weak}']\n"
    )
    with capture_logs() as logs:
        _reload(daemon, lambda: load(path))
    assert [entry["error"] for entry in logs] == [
        f"{path}: auth.token_secrets[1]: 16 characters, at least 32 required"
    ]
    path.write_text(
        f"[storage]\nbackend = 'none'\n[auth]\ntoken_secrets = ['{NEW_KEY}']\n"
        "udp_allow = ['10.0.0.300']\n"
    )
    with capture_logs() as logs:
        _reload(daemon, lambda: load(path))
    assert logs[0]["event"] == "reload_failed"
    assert logs[0]["error"].startswith(f"{path}: auth.udp_allow: '10.0.0.300' is not an IP")
    assert NEW_KEY not in logs[0]["error"]
    # A weak key from the environment: refused as the file's would be, before any change.
    path.write_text(f"[storage]\nbackend = 'none'\n[auth]\ntoken_secrets = ['{NEW_KEY}']\n")
    monkeypatch.setenv("BWMON_TOKEN_SECRETS", weak)
    with capture_logs() as logs:
        _reload(daemon, lambda: load(path))
    assert [entry["error"] for entry in logs] == [
        "BWMON_TOKEN_SECRETS[0] (environment): 16 characters, at least 32 required"
    ]
    assert isinstance(daemon.auth.admit(read_token(OLD_KEY), "read"), Claims)
    assert daemon.config.auth.token_secrets == [OLD_KEY]
