"""Restoring the checkpoint at start: the unwritten rows survive even an engine state this
version cannot read (another checkpoint version), which costs only the open minute."""

from __future__ import annotations

from pathlib import Path

from collector.aggregate.engine import Engine
from collector.app import Daemon
from collector.config import from_dict
from collector.storage import checkpoint
from collector.storage.flusher import batch_of, encode_batch
from tests.helpers import rtc

T0 = 1_800_000_000.0


def test_unwritten_rows_survive_an_engine_state_of_another_version(tmp_path: Path) -> None:
    old = Engine()
    for seq in range(1, 4):
        old.add([rtc(seq)], T0 + seq)
    old.close_minutes(T0 + 120)
    rows = batch_of(old.drain())
    assert len(rows) == 1
    state = old.snapshot()
    state["version"] = 1  # the slots of an older release
    checkpoint.save(tmp_path, {"engine": state, "pending": encode_batch(rows)})

    daemon = Daemon(from_dict({"storage": {"backend": "sqlite", "state_dir": str(tmp_path)}}))
    daemon.restore()
    assert daemon.flusher is not None
    assert daemon.flusher.pending.rows == rows.rows
    assert daemon.checkpoint_errors == 1
    assert not daemon.engine.streams  # a fresh engine, the open minute lost
    assert daemon.consumer.engine is daemon.engine
