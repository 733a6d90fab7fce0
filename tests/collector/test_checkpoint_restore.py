"""Restoring the checkpoint at start: the unwritten rows survive even an engine state this
version cannot read (another checkpoint version), which costs only the open minute; a row the
engine closed between two ticks is in the checkpoint too; HTTP state that expired is not in it,
and new HTTP instances beyond the cap do not grow it; streams and HTTP instances opened after
the last checkpoint come back from the journal; rows reach storage only once a checkpoint
holds them."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import msgspec
import trio

from collector.aggregate.engine import Engine
from collector.aggregate.rtc import RtcStream
from collector.app import Daemon
from collector.config import Config, from_dict
from collector.storage import checkpoint
from collector.storage.flusher import batch_of, decode_batch, encode_batch
from collector.storage.health import StorageHealth
from collector.storage.state import Checkpointer
from protocol import RtcSample
from tests.helpers import http_sample, rtc

T0 = 1_800_000_000.0


def checkpointer(daemon: Daemon) -> Checkpointer:
    assert daemon.checkpointer is not None
    return daemon.checkpointer


def save_checkpoint(daemon: Daemon) -> None:
    trio.run(checkpointer(daemon).save)


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
    assert daemon.flusher is not None
    assert daemon.flusher.pending.rows == rows.rows
    assert checkpointer(daemon).errors == 1
    assert not daemon.engine.streams  # a fresh engine, the open minute lost
    assert daemon.consumer.engine is daemon.engine


def test_a_row_closed_between_ticks_is_in_the_checkpoint(tmp_path: Path) -> None:
    """A stream's first sample of a new minute closes the last minute's row in the engine; the
    tick hands it to storage. A checkpoint before that tick keeps it, so a kill -9 right after
    loses none of its bytes (the likely cause of one CI failure of the e2e kill -9 test: 3.6 %
    of the bytes sent missing from the database)."""
    config = from_dict({"storage": {"backend": "sqlite", "state_dir": str(tmp_path)}})
    first, reference = Daemon(config), Engine()
    for engine in (first.engine, reference):
        for seq in range(1, 4):
            engine.add([rtc(seq)], T0 + seq)
        engine.add([rtc(4)], T0 + 61)  # the next minute: the first one's row is closed
    closed = batch_of(reference.drain())
    assert len(closed) == 1
    save_checkpoint(first)
    assert first.flusher is not None
    assert first.flusher.spool is not None
    first.flusher.spool.close()  # as the killed process's lock went with it

    second = Daemon(config)
    assert second.flusher is not None
    assert second.flusher.pending.rows == closed.rows


def test_http_state_stays_bounded_and_what_expired_is_not_restored(tmp_path: Path) -> None:
    """A fuzz of new ``inst`` values on one route: the checkpoint keeps the size of the
    capped instances however many arrive; once the route is idle it expires, and the next
    checkpoint restores no HTTP state, only the route's closed rows, still to be written."""
    # The defaults: 256 instances per route, forgotten after 600 s without a sample.
    config = from_dict({"storage": {"backend": "sqlite", "state_dir": str(tmp_path)}})
    first, reference = Daemon(config), Engine(config.aggregate)
    sizes = []
    for start in range(0, 10_000, 1_000):
        frames = [
            msgspec.structs.replace(http_sample(1), instance=f"fuzz-{i:06d}", seq=0)
            for i in range(start, start + 1_000)
        ]
        for engine in (first.engine, reference):
            engine.add(frames, T0 + start / 1_000)
        save_checkpoint(first)
        sizes.append(checkpointer(first).size_bytes)
    assert len(set(sizes)) == 1, sizes  # 256 instances from the first 1,000 frames on
    assert first.engine.stats()["http_instances"] == 256
    for engine in (first.engine, reference):
        engine.tick(T0 + 9 + 600)
    assert not first.engine.routes
    closed = batch_of(reference.drain())
    assert len(closed) == 1
    save_checkpoint(first)
    assert checkpointer(first).size_bytes < sizes[0] / 4
    assert first.flusher is not None
    assert first.flusher.spool is not None
    first.flusher.spool.close()

    second = Daemon(config)
    assert second.engine.routes == {}
    assert second.engine.stats()["http_instances"] == 0
    assert second.flusher is not None
    assert second.flusher.pending.rows == closed.rows  # 256 instances' 10 requests each


def _config(tmp_path: Path) -> Config:
    return from_dict({"storage": {"backend": "sqlite", "state_dir": str(tmp_path)}})


def _killed(daemon: Daemon) -> None:
    """What a kill -9 leaves: the files as they are (the spool's lock goes with the process)."""
    assert daemon.flusher is not None
    assert daemon.flusher.spool is not None
    daemon.flusher.spool.close()


def _video(seq: int, meeting: str = "m1") -> RtcSample:
    """A sample of a stream whose ``q`` 0 already carries bytes (counted in full)."""
    return msgspec.structs.replace(
        rtc(seq, meeting=meeting), video_bytes_sent=100_000 * (seq + 1), audio_bytes_sent=0
    )


def _stored_video(daemon: Daemon) -> float:
    daemon.engine.close_minutes(time.time())
    return sum(row.counters["video_bytes_sent"] for row in daemon.engine.drain().rtc_rows)


def test_a_stream_opened_after_the_last_checkpoint_comes_back_from_the_journal(
    tmp_path: Path,
) -> None:
    """Its first samples applied, the daemon killed before any checkpoint: the stream comes
    back from the journal, and its next sample is a delta from it, not a baseline."""
    first = Daemon(_config(tmp_path))
    save_checkpoint(first)  # at start: before the stream opened
    first.consumer.apply([_video(0)])
    first.consumer.apply([_video(1)])
    _killed(first)

    second = Daemon(_config(tmp_path))
    assert ("m1", "p1", "pc1") in second.engine.streams
    second.consumer.apply([_video(5)])  # q 2 … 4 went to nobody
    assert second.engine.baseline_samples["rtc"] == 0
    assert _stored_video(second) == _video(5).video_bytes_sent


def test_a_new_http_instance_comes_back_from_the_journal_from_zero(tmp_path: Path) -> None:
    """A new route and instance, killed before any checkpoint: the instance's next sample
    counts in full (from 0), as what it counted before the kill was never stored."""
    first = Daemon(_config(tmp_path))
    save_checkpoint(first)
    first.consumer.apply([msgspec.structs.replace(http_sample(1), seq=0)])
    first.consumer.apply([msgspec.structs.replace(http_sample(2), seq=1)])
    _killed(first)

    second = Daemon(_config(tmp_path))
    second.consumer.apply([msgspec.structs.replace(http_sample(6), seq=5)])
    assert second.engine.baseline_samples["http"] == 0
    second.engine.close_minutes(time.time())
    rows = second.engine.drain().http_rows
    assert sum(row.requests for row in rows) == http_sample(6).requests


def test_a_checkpoint_replaces_the_journal(tmp_path: Path) -> None:
    """Once a checkpoint holds a stream, its journal record goes; a stream opened after that
    checkpoint is journaled anew."""
    first = Daemon(_config(tmp_path))
    save_checkpoint(first)
    first.consumer.apply([_video(0)])
    save_checkpoint(first)
    first.consumer.apply([_video(0, meeting="m2")])
    assert first.journal is not None
    journaled = [RtcStream.from_state(record[3]).meeting for record in first.journal.read(0)]
    assert journaled == ["m2"]
    _killed(first)

    second = Daemon(_config(tmp_path))
    assert {key[0] for key in second.engine.streams} == {"m1", "m2"}


def test_rows_reach_storage_only_once_a_checkpoint_holds_them(tmp_path: Path) -> None:
    """A row written before a checkpoint held it and the state after it could be counted
    again (or lost) after a kill -9; so the flusher gets rows from the checkpoint."""
    daemon = Daemon(_config(tmp_path))
    for seq in range(3):
        daemon.engine.add([_video(seq)], T0 + seq)
    daemon.engine.add([_video(3)], T0 + 61)  # closes the first minute's row
    daemon.consumer.take(daemon.engine.drain())
    assert daemon.flusher is not None
    assert len(daemon.flusher.pending) == 0
    save_checkpoint(daemon)
    assert len(daemon.flusher.pending) == 1
    saved = checkpoint.load(tmp_path)
    assert saved is not None
    assert decode_batch(saved["pending"]).rows == daemon.flusher.pending.rows


def test_rows_go_to_storage_even_when_the_checkpoint_cannot_be_written(tmp_path: Path) -> None:
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state directory should be")
    daemon = Daemon(
        from_dict(
            {"storage": {"backend": "sqlite", "state_dir": str(blocked), "spool_max_bytes": 0}}
        )
    )
    for seq in range(3):
        daemon.engine.add([_video(seq)], T0 + seq)
    daemon.engine.add([_video(3)], T0 + 61)
    daemon.consumer.take(daemon.engine.drain())
    assert checkpointer(daemon).errors == 1  # the restore could not read the state directory
    save_checkpoint(daemon)
    assert checkpointer(daemon).errors == 2  # nor the checkpoint write to it
    assert daemon.flusher is not None
    assert len(daemon.flusher.pending) == 1  # not held for ever


def test_no_row_newer_than_the_last_checkpoint_reaches_the_database(tmp_path: Path) -> None:
    """Restored from a checkpoint at minute M, the daemon counts the next samples in later
    minutes; a flush then, before any checkpoint, must not write those minutes: killed right
    after, the daemon comes back to the same checkpoint, and the next sample's delta from it
    would count their bytes again."""
    first = Daemon(_config(tmp_path))
    for seq in range(3):
        first.engine.add([_video(seq)], T0 + seq)
    save_checkpoint(first)
    _killed(first)

    second = Daemon(_config(tmp_path))
    second.engine.add([_video(3)], T0 + 120)  # closes the restored minute
    second.engine.add([_video(4)], T0 + 185)  # closes the one the restart counted in
    second.consumer.take(second.engine.drain())
    assert second.flusher is not None
    trio.run(second.flusher.flush)  # a flush, then a kill before the next checkpoint
    _killed(second)

    third = Daemon(_config(tmp_path))
    third.engine.add([_video(5)], T0 + 250)
    third.engine.close_minutes(T0 + 300)
    third.consumer.take(third.engine.drain())
    assert third.flusher is not None
    save_checkpoint(third)
    trio.run(third.flusher.flush)
    with sqlite3.connect(tmp_path / "bwmon.db") as db:
        (stored,) = db.execute("SELECT SUM(video_bytes_sent) FROM rtc_minute").fetchone()
    assert stored == _video(5).video_bytes_sent


def test_a_journal_that_cannot_be_written_counts_as_a_checkpoint_error(tmp_path: Path) -> None:
    daemon = Daemon(_config(tmp_path))
    (tmp_path / f"journal-{daemon.journal.seq if daemon.journal else 0}").mkdir()  # in the way
    daemon.consumer.apply([_video(0)])
    storage = daemon.health().storage
    assert isinstance(storage, StorageHealth)
    assert storage.checkpoint_errors == 1
    assert daemon.engine.streams  # ingest goes on
