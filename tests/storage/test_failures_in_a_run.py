"""The daemon, in process, while its storage fails: a database file that is not a database
(a ``StorageError`` that is not ``StorageUnavailable``) and a spool whose disk answers every
fsync with an I/O error. Both are counted (``storage.failed_flushes``, ``storage.spool_errors``)
and survived: ingest goes on counting every datagram, and once both work again every row
queued meanwhile is written, none dropped."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from collector.app import Daemon
from collector.config import from_dict
from collector.storage import spool as spool_module
from collector.storage.schema import RTC_MINUTE, Batch, rtc_row
from collector.storage.sinks import SqliteSink
from protocol import encode_msgpack
from tests.helpers import rtc, wait_for
from tests.storage.test_sinks import rtc as minute_row


class FailingDisk:
    """The spool module's ``os``, whose fsync fails while ``broken``."""

    broken = True

    def fsync(self, fd: int) -> None:
        if self.broken:
            raise OSError(errno.EIO, "Input/output error (the test's)")
        os.fsync(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


async def test_storage_failures_during_a_run_are_counted_and_survived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "bwmon.db"
    database.write_bytes(b"not a database\n" * 100)
    config = from_dict(
        {
            "server": {"udp_port": 0, "http_port": 0},
            "storage": {
                "backend": "sqlite",
                "sqlite_path": str(database),
                "state_dir": str(tmp_path / "state"),
                "flush_interval_s": 0.1,
                "retry_max_s": 0.2,
                "queue_max_rows": 2,
                "shutdown_deadline_s": 2,
            },
        }
    )
    disk = FailingDisk()
    daemon = Daemon(config)  # the spool opens (and fsyncs) before the disk fails
    monkeypatch.setattr(spool_module, "os", disk)
    flusher = daemon.flusher
    assert flusher is not None
    minutes = [1_800_000_000 + 60 * i for i in range(6)]
    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(daemon.serve)

            async def ingest(first: int, count: int) -> None:
                for seq in range(first, first + count):
                    await udp.sendto(encode_msgpack(rtc(seq)), addresses.udp)
                await wait_for(lambda: daemon.udp_counters.messages == first + count - 1)

            def offer(minute: int) -> None:
                rows = [rtc_row(minute_row(minute, f"p{i}")) for i in range(3)]
                flusher.offer_batch(Batch({RTC_MINUTE.name: rows}))  # over the cap

            await ingest(1, 100)
            for minute in minutes[:3]:
                offer(minute)
                await ingest(daemon.udp_counters.messages + 1, 100)
            await wait_for(lambda: flusher.counters["spool_errors"] >= 3)
            await wait_for(lambda: flusher.counters["failed_flushes"] >= 3)
            assert "file is not a database" in (flusher.last_error or "")
            assert flusher.counters["rows_dropped"] == 0
            await ingest(daemon.udp_counters.messages + 1, 100)  # still counting
            disk.broken = False  # the disk is back: what overflows now is spooled
            for minute in minutes[3:]:
                offer(minute)
            await wait_for(lambda: flusher.counters["rows_spooled"] > 0)
            database.unlink()  # the database is back (a new, empty one)
            await wait_for(lambda: flusher.failures == 0 and not len(flusher.queued()))
            await wait_for(lambda: daemon.spool is not None and len(daemon.spool) == 0)
            assert daemon.udp_counters.messages == 500
            daemon.stop()
    assert flusher.counters["rows_dropped"] == 0
    sink = SqliteSink(database)
    stored = await sink.query(  # the offered rows (the stream's own minute is there too)
        "SELECT minute, COUNT(*) FROM rtc_minute WHERE minute >= ? GROUP BY minute", [minutes[0]]
    )
    await sink.close()
    assert sorted(stored) == [(minute, 3) for minute in minutes]
