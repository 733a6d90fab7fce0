"""A slow disk does not stall UDP ingest: the daemon, in process, takes a steady stream of
datagrams while its database is unavailable, so that batches go to the spool on a disk whose
every fsync takes 200 ms; every datagram is counted and the kernel drops none.

The database is a SQLite path that is a directory (it cannot be opened: every flush fails with
``StorageUnavailable``). The rows reach the flusher as the engine hands them over at a minute's
end, only more often: a few every ``OFFER_EVERY_S``, each time over ``queue_max_rows``, so the
spool appends (and fsyncs) back to back while the datagrams arrive. The fsync is slowed in the
spool module alone (its ``os``), not in the checkpoint's. With the spool's I/O on the trio loop,
each append held ingest for 200 ms, longer than the small receive buffer lasts at this rate.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from collector.app import Daemon
from collector.config import from_dict
from collector.storage import spool as spool_module
from collector.storage.schema import RTC_MINUTE, Batch, rtc_row
from protocol import encode_msgpack
from tests.helpers import rtc
from tests.storage.test_sinks import rtc as minute_row

pytestmark = [pytest.mark.faults]

FSYNC_S = 0.2
RATE_PER_S = 5_000
SEND_S = 3.0
OFFER_EVERY_S = 0.1
RECEIVE_BUFFER_BYTES = 256 << 10  # some 250 ms of this stream with the kernel's doubling


class SlowDisk:
    """The spool module's ``os``, with an fsync that takes ``FSYNC_S``."""

    def __init__(self) -> None:
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        time.sleep(FSYNC_S)
        os.fsync(fd)
        self.fsyncs += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def send_steadily(address: tuple[str, int], datagrams: list[bytes]) -> None:
    """Send ``datagrams`` at ``RATE_PER_S``, in 10 ms slices (from a thread: a stalled trio
    loop must not slow the sender)."""
    per_slice = RATE_PER_S // 100
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        for i in range(0, len(datagrams), per_slice):
            for datagram in datagrams[i : i + per_slice]:
                sock.sendto(datagram, address)
            pause = start + (i // per_slice + 1) * 0.01 - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


async def test_a_slow_disk_adds_no_kernel_drops_to_udp_ingest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "database").mkdir()  # where the SQLite file should be: it cannot be opened
    config = from_dict(
        {
            "server": {"udp_port": 0, "http_port": 0},
            "ingest": {"udp_receive_buffer_bytes": RECEIVE_BUFFER_BYTES},
            "storage": {
                "backend": "sqlite",
                "sqlite_path": str(tmp_path / "database"),
                "state_dir": str(tmp_path / "state"),
                "flush_interval_s": 0.5,
                "retry_max_s": 0.5,
                "queue_max_rows": 2,
                "shutdown_deadline_s": 0.5,
            },
        }
    )
    disk = SlowDisk()
    monkeypatch.setattr(spool_module, "os", disk)
    daemon = Daemon(config)
    datagrams = [encode_msgpack(rtc(seq)) for seq in range(1, int(RATE_PER_S * SEND_S) + 1)]
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(daemon.serve)
        assert daemon.flusher is not None
        before = disk.fsyncs
        sender = threading.Thread(target=send_steadily, args=(addresses.udp, datagrams))
        sender.start()
        minute = 1_800_000_000
        while sender.is_alive():
            minute += 60
            rows = [rtc_row(minute_row(minute, f"p{i}")) for i in range(3)]
            daemon.flusher.offer_batch(Batch({RTC_MINUTE.name: rows}))
            await trio.sleep(OFFER_EVERY_S)
        await trio.to_thread.run_sync(sender.join)
        spool_fsyncs = disk.fsyncs - before
        with trio.fail_after(5):  # every datagram read, or dropped by the kernel
            while True:
                health = await trio.to_thread.run_sync(healthz, addresses.http[1])
                udp = health["ingest"]["udp"]
                if udp["messages"] + udp["kernel_drops"] >= len(datagrams):
                    break
                await trio.sleep(0.05)
        daemon.stop()
    udp, storage = health["ingest"]["udp"], health["storage"]
    assert spool_fsyncs >= SEND_S / FSYNC_S / 2  # the disk was busy most of the time
    assert storage["rows_spooled"] > 0
    assert storage["spool_errors"] == 0
    assert storage["failed_flushes"] > 0
    assert udp["kernel_drops"] == 0
    assert udp["messages"] == len(datagrams)
    assert udp["frames_accepted"] == len(datagrams)
