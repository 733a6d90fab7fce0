"""``Daemon.reload`` (what SIGHUP runs): the reloadable sections are swapped together after
everything was validated; a bad configuration changes nothing; other sections are reported as
needing a restart."""

from __future__ import annotations

import time
from typing import Any

import pytest
import structlog

from collector.app import Daemon
from collector.auth import UnsafeBind
from collector.config import Config, ConfigError, from_dict
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
        assert daemon.source_limiter.enabled
        assert daemon.connection_rate.enabled
        assert daemon.http.settings.max_connections_per_source == 3
        assert daemon.udp_admission.allowlist is not None
        assert not daemon.udp_admission.allowlist.permits("127.0.0.1")
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
    assert not daemon.source_limiter.enabled


def test_duplicate_rule_names_are_a_configuration_error() -> None:
    rule = {"name": "r", "metric": "rtt_ms", "raise_threshold": 5.0, "clear_threshold": 4.0}
    with pytest.raises(ConfigError, match="rule names must be unique: r"):
        config(alerts={"rules": [rule, rule]})
