"""The notifier in the daemon: the checkpoint's format version and its migration, and a reload
(what SIGHUP runs) that changes the sinks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.app import Daemon
from collector.config import Config, ConfigError, from_dict
from collector.storage import checkpoint
from collector.storage.errors import CheckpointError

HOOK = {"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/"}


def config(tmp_path: Path, sinks: list[dict[str, Any]]) -> Config:
    return from_dict(
        {"storage": {"backend": "sqlite", "state_dir": str(tmp_path)}, "notify": sinks}
    )


def test_a_version_1_checkpoint_migrates_with_nothing_pending(tmp_path: Path) -> None:
    old = {"engine": {}, "pending": [], "journal_from": 3}  # as builds before notifications wrote
    (tmp_path / checkpoint.NAME).write_bytes(msgspec.msgpack.encode(old))
    state = checkpoint.load(tmp_path)
    assert state == {**old, "version": checkpoint.VERSION, "notify": None}


def test_a_checkpoint_of_a_later_format_is_refused(tmp_path: Path) -> None:
    later = {"version": checkpoint.VERSION + 1, "engine": {}, "pending": []}
    (tmp_path / checkpoint.NAME).write_bytes(msgspec.msgpack.encode(later))
    with pytest.raises(CheckpointError, match="format version"):
        checkpoint.load(tmp_path)


async def test_undelivered_transitions_survive_in_the_checkpoint(tmp_path: Path) -> None:
    first = Daemon(config(tmp_path, [HOOK]))
    assert first.checkpointer is not None
    pending = {
        "id": "r:m/p:1@1",
        "rule": "r",
        "key": ["m", "p"],
        "state": "raised",
        "severity": "warning",
        "value": 1.0,
        "threshold": 0.5,
        "at": 1.0,
        "raised_at": 1.0,
    }
    first.notifier._restore({"sinks": {"hook": {"kind": "webhook", "pending": [pending]}}})
    await first.checkpointer.save()
    assert checkpoint.load(tmp_path)["version"] == checkpoint.VERSION  # type: ignore[index]
    first.checkpointer.journal.close()
    if first.spool is not None:
        first.spool.close()

    second = Daemon(config(tmp_path, [HOOK]))
    assert second.notifier.health().sinks[0].queue_depth == 1
    saved = msgspec.msgpack.decode(msgspec.msgpack.encode(second.notifier.state()))
    assert saved["sinks"]["hook"]["pending"] == [pending]


def test_a_reload_puts_sink_changes_in_force_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(config(tmp_path, [HOOK]))
    restart = daemon.reload(
        config(
            tmp_path,
            [{**HOOK, "min_severity": "critical"}, {**HOOK, "name": "am", "kind": "alertmanager"}],
        )
    )
    assert "notify" not in restart
    assert sorted(daemon.notifier.sinks) == ["am", "hook"]
    assert daemon.notifier.sinks["hook"].config.min_severity == "critical"
    assert daemon.notifier.sinks["am"].url == "http://127.0.0.1:9/api/v2/alerts"

    monkeypatch.delenv("BWMON_TEST_UNSET", raising=False)
    broken = config(tmp_path, [{**HOOK, "secret_env": "BWMON_TEST_UNSET"}])
    with pytest.raises(ConfigError, match="BWMON_TEST_UNSET is not set"):
        daemon.reload(broken)
    assert sorted(daemon.notifier.sinks) == ["am", "hook"]  # nothing changed
