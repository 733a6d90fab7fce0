"""The disk spool: order, acknowledgement, compaction, the cap, and recovery from torn or damaged
files, checked on real files in a temporary directory (no mocks of the file system)."""

from __future__ import annotations

import struct
import tempfile
import zlib
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from collector.storage.spool import (
    CORRUPT_NAME,
    HEADER_SIZE,
    LOG_NAME,
    MAX_RECORD_BYTES,
    POS_NAME,
    Spool,
    SpoolError,
    encode_record,
)


def payloads(spool: Spool, limit: int = 1000) -> list[bytes]:
    return [payload for _, payload in spool.peek(limit)]


def fill(directory: Path, records: list[bytes], *, fsync: bool = False) -> None:
    with Spool(directory, fsync=fsync) as spool:
        for record in records:
            assert spool.append(record)


def test_record_format_on_disk(tmp_path: Path) -> None:
    fill(tmp_path, [b"hello", b""])
    data = (tmp_path / LOG_NAME).read_bytes()
    expected = (
        b"BW\x01"
        + struct.pack(">I", 5)
        + struct.pack(">I", zlib.crc32(b"hello"))
        + b"hello"
        + b"BW\x01\x00\x00\x00\x00"
        + struct.pack(">I", zlib.crc32(b""))
    )
    assert data == expected
    assert encode_record(b"hello") == expected[: HEADER_SIZE + 5]


def test_append_peek_ack_in_order(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        for i in range(5):
            assert spool.append(f"row {i}".encode())
        assert len(spool) == 5
        first = spool.peek(2)
        assert [p for _, p in first] == [b"row 0", b"row 1"]
        assert first[0][0] < first[1][0]
        assert spool.peek(2) == first  # peek does not consume
        spool.ack(first[-1][0])
        assert len(spool) == 3
        assert payloads(spool) == [b"row 2", b"row 3", b"row 4"]
        assert spool.append(b"row 5")
        rest = spool.peek(10)
        spool.ack(rest[1][0])
        assert payloads(spool) == [b"row 4", b"row 5"]
        assert len(spool) == 2


def test_peek_limits(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        for size in (10, 10, 10):
            spool.append(b"x" * size)
        assert spool.peek(0) == []
        assert len(spool.peek(2)) == 2
        assert len(spool.peek(10, max_payload_bytes=25)) == 2
        assert len(spool.peek(10, max_payload_bytes=1)) == 1  # the first record comes whole
        with pytest.raises(ValueError, match="negative"):
            spool.peek(-1)


def test_reopen_returns_unacked_records_only(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        for i in range(4):
            spool.append(bytes([i]) * 3)
        spool.ack(spool.peek(2)[-1][0])
    with Spool(tmp_path, fsync=False) as spool:
        assert len(spool) == 2
        assert payloads(spool) == [b"\x02" * 3, b"\x03" * 3]
        assert spool.truncated_bytes == 0
        assert spool.corrupt_bytes == 0
        assert spool.position_resets == 0


def test_ack_position_survives_reopen_and_is_not_acked_twice(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        for i in range(3):
            spool.append(b"r%d" % i)
        spool.ack(spool.peek(1)[0][0])
    assert (tmp_path / POS_NAME).stat().st_size > 0
    assert not (tmp_path / (POS_NAME + ".tmp")).exists()
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"r1", b"r2"]
        spool.ack(spool.peek(1)[0][0])
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"r2"]
        assert spool.size_bytes == 3 * (HEADER_SIZE + 2)  # nothing compacted yet


def test_fsync_true_round_trip(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=True) as spool:
        assert spool.append(b"durable")
        assert spool.append(b"also durable")
        spool.ack(spool.peek(1)[0][0])
    with Spool(tmp_path, fsync=True) as spool:
        assert payloads(spool) == [b"also durable"]
        spool.ack(spool.peek(1)[0][0])
        assert spool.size_bytes == 0
    assert (tmp_path / LOG_NAME).stat().st_size == 0


def test_ack_of_everything_truncates_the_log(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        for i in range(3):
            spool.append(b"payload %d" % i)
        assert spool.size_bytes == (tmp_path / LOG_NAME).stat().st_size > 0
        spool.ack(spool.peek()[-1][0])
        assert len(spool) == 0
        assert spool.size_bytes == 0
        assert (tmp_path / LOG_NAME).stat().st_size == 0
        assert spool.peek() == []
        assert spool.append(b"after")
        assert payloads(spool) == [b"after"]
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"after"]


def test_stale_id_after_compaction_does_not_ack_new_records(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        spool.append(b"old")
        ((old_id, _),) = spool.peek()
        spool.ack(old_id)
        spool.append(b"new")  # lands at the same byte offset as "old" did
        spool.ack(old_id)
        assert payloads(spool) == [b"new"]


def test_ack_rejects_unknown_ids(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        spool.append(b"abcdef")
        spool.append(b"ghijkl")
        (first, _), (second, _) = spool.peek()
        with pytest.raises(ValueError, match="not the start of a record"):
            spool.ack(first + 1)
        with pytest.raises(ValueError, match="unknown"):
            spool.ack(second + 1000)
        with pytest.raises(ValueError, match="unknown"):
            spool.ack(-1)
        assert len(spool) == 2
        spool.ack(first)
        spool.ack(first)  # acknowledged already: nothing happens
        assert payloads(spool) == [b"ghijkl"]


def test_cap_refuses_and_counts_then_compaction_makes_room(tmp_path: Path) -> None:
    record = HEADER_SIZE + 10
    with Spool(tmp_path, max_bytes=3 * record, fsync=False) as spool:
        assert all(spool.append(b"0123456789") for _ in range(3))
        assert not spool.append(b"0123456789")
        assert not spool.append(b"x")
        assert spool.dropped_records == 2
        assert spool.dropped_bytes == 11
        assert len(spool) == 3
        assert spool.size_bytes == 3 * record
        spool.ack(spool.peek(1)[0][0])
        assert not spool.append(b"0123456789")  # acked bytes are reclaimed only by compaction
        spool.ack(spool.peek()[-1][0])
        assert spool.size_bytes == 0
        assert spool.append(b"0123456789")
        assert spool.dropped_records == 3
        assert payloads(spool) == [b"0123456789"]


def test_oversized_payload_is_a_caller_bug(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        with pytest.raises(ValueError, match="exceeds"):
            spool.append(bytes(MAX_RECORD_BYTES + 1))
        assert spool.size_bytes == 0
        assert spool.dropped_records == 0


@pytest.mark.parametrize("cut", [1, 4, HEADER_SIZE, HEADER_SIZE + 3])
def test_torn_tail_is_truncated_and_counted(tmp_path: Path, cut: int) -> None:
    fill(tmp_path, [b"first", b"second", b"third record"])
    log = tmp_path / LOG_NAME
    size = log.stat().st_size
    with log.open("r+b") as f:
        f.truncate(size - cut)
    last = HEADER_SIZE + len(b"third record")
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"first", b"second"]
        assert spool.truncated_bytes == last - cut
        assert spool.corrupt_bytes == 0
        assert log.stat().st_size == size - last
        assert spool.append(b"fourth")
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"first", b"second", b"fourth"]
        assert spool.truncated_bytes == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 7,
        b"garbage that is not a record",
        b"BW",
        b"BW\x01\x00\x00\x10\x00\x00\x00\x00\x00",
    ],
)
def test_garbage_after_the_last_record_is_truncated(tmp_path: Path, garbage: bytes) -> None:
    fill(tmp_path, [b"a", b"b"])
    log = tmp_path / LOG_NAME
    intact = log.stat().st_size
    with log.open("ab") as f:
        f.write(garbage)
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"a", b"b"]
        assert spool.truncated_bytes == len(garbage)
        assert spool.size_bytes == intact == log.stat().st_size


def test_torn_tail_after_acked_records_compacts(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        spool.append(b"acked")
        spool.append(b"pending")
        spool.ack(spool.peek(1)[0][0])
    log = tmp_path / LOG_NAME
    with log.open("r+b") as f:
        f.truncate(log.stat().st_size - 2)
    with Spool(tmp_path, fsync=False) as spool:
        assert len(spool) == 0
        assert spool.truncated_bytes == HEADER_SIZE + len(b"pending") - 2
        assert log.stat().st_size == 0


def test_flipped_byte_in_last_payload_is_detected(tmp_path: Path) -> None:
    fill(tmp_path, [b"intact", b"will be damaged"])
    log = tmp_path / LOG_NAME
    data = bytearray(log.read_bytes())
    data[-3] ^= 0x01
    log.write_bytes(bytes(data))
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"intact"]
        assert spool.truncated_bytes == HEADER_SIZE + len(b"will be damaged")
        assert len(spool) == 1


def test_damage_in_the_middle_stops_reading_and_keeps_the_bytes(tmp_path: Path) -> None:
    fill(tmp_path, [b"one", b"two", b"three", b"four"])
    log = tmp_path / LOG_NAME
    original = log.read_bytes()
    damaged_at = 2 * HEADER_SIZE + len(b"one") + len(b"two")
    data = bytearray(original)
    data[damaged_at + HEADER_SIZE] ^= 0xFF  # first byte of "three": CRC mismatch
    log.write_bytes(bytes(data))
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"one", b"two"]
        assert spool.corrupt_bytes == len(original) - damaged_at
        assert spool.truncated_bytes == 0
        assert (tmp_path / CORRUPT_NAME).read_bytes() == bytes(data[damaged_at:])
        assert spool.append(b"five")  # reachable: not behind the damage
        assert payloads(spool) == [b"one", b"two", b"five"]


def test_bad_magic_in_the_middle_is_damage_not_a_tail(tmp_path: Path) -> None:
    fill(tmp_path, [b"one", b"two", b"three"])
    log = tmp_path / LOG_NAME
    data = bytearray(log.read_bytes())
    second = HEADER_SIZE + len(b"one")
    data[second] = ord("X")
    log.write_bytes(bytes(data))
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"one"]
        assert spool.corrupt_bytes == len(data) - second
        assert (tmp_path / CORRUPT_NAME).exists()


def test_newer_format_version_is_left_alone(tmp_path: Path) -> None:
    fill(tmp_path, [b"one"])
    log = tmp_path / LOG_NAME
    with log.open("ab") as f:
        f.write(b"BW\x02" + struct.pack(">II", 3, zlib.crc32(b"new")) + b"new")
    before = log.read_bytes()
    with pytest.raises(SpoolError, match="version 2"):
        Spool(tmp_path, fsync=False)
    assert log.read_bytes() == before
    with log.open("r+b") as f:  # and the lock was released
        f.truncate(HEADER_SIZE + 3)
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"one"]


def test_crash_between_compaction_and_position_write(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        for i in range(3):
            spool.append(b"%d" % i)
        spool.ack(spool.peek(1)[0][0])
    (tmp_path / LOG_NAME).write_bytes(b"")  # the log was emptied, the old position remains
    with Spool(tmp_path, fsync=False) as spool:
        assert len(spool) == 0
        assert spool.append(b"new")
    with Spool(tmp_path, fsync=False) as spool:
        assert payloads(spool) == [b"new"]


def test_unreadable_position_file_replays_from_the_start(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False) as spool:
        spool.append(b"a")
        spool.append(b"b")
        spool.ack(spool.peek(1)[0][0])
    (tmp_path / POS_NAME).write_bytes(b"\x00" * 5)
    with Spool(tmp_path, fsync=False) as spool:
        assert spool.position_resets == 1
        assert payloads(spool) == [b"a", b"b"]


def test_one_spool_per_directory(tmp_path: Path) -> None:
    with Spool(tmp_path, fsync=False), pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path, fsync=False)
    Spool(tmp_path, fsync=False).close()


def test_unusable_directory(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_bytes(b"")
    with pytest.raises(SpoolError, match="cannot open"):
        Spool(not_a_directory)


def test_closed_spool_refuses_calls(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.close()
    spool.close()
    with pytest.raises(ValueError, match="closed"):
        spool.append(b"x")
    with pytest.raises(ValueError, match="closed"):
        spool.peek()


class SpoolModel(RuleBasedStateMachine):
    """Appends, acks, reopens and crashes mid-write against a deque of the expected payloads."""

    MAX_BYTES = 160

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        self.directory = Path(self._tmp.name)
        self.spool = Spool(self.directory, max_bytes=self.MAX_BYTES, fsync=False)
        self.expected: deque[bytes] = deque()
        self.log_bytes = 0  # since the last compaction, acked records included

    @rule(payload=st.binary(max_size=40))
    def append(self, payload: bytes) -> None:
        fits = self.log_bytes + HEADER_SIZE + len(payload) <= self.MAX_BYTES
        dropped = self.spool.dropped_records
        assert self.spool.append(payload) is fits
        if fits:
            self.expected.append(payload)
            self.log_bytes += HEADER_SIZE + len(payload)
        else:
            assert self.spool.dropped_records == dropped + 1

    @precondition(lambda self: bool(self.expected))
    @rule(data=st.data())
    def ack_some(self, data: st.DataObject) -> None:
        records = self.spool.peek(len(self.expected))
        assert [p for _, p in records] == list(self.expected)
        upto = data.draw(st.integers(0, len(records) - 1))
        self.spool.ack(records[upto][0])
        for _ in range(upto + 1):
            self.expected.popleft()
        if not self.expected:
            self.log_bytes = 0

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = Spool(self.directory, max_bytes=self.MAX_BYTES, fsync=False)
        assert self.spool.truncated_bytes == 0
        if not self.expected:
            self.log_bytes = 0

    @rule(payload=st.binary(min_size=1, max_size=40), data=st.data())
    def crash_mid_append(self, payload: bytes, data: st.DataObject) -> None:
        record = encode_record(payload)
        torn = data.draw(st.integers(1, len(record) - 1))
        self.spool.close()
        with (self.directory / LOG_NAME).open("ab") as f:
            f.write(record[:torn])
        self.spool = Spool(self.directory, max_bytes=self.MAX_BYTES, fsync=False)
        assert self.spool.truncated_bytes == torn
        assert self.spool.corrupt_bytes == 0
        if not self.expected:
            self.log_bytes = 0

    @invariant()
    def holds_exactly_the_unacked_payloads_in_order(self) -> None:
        assert len(self.spool) == len(self.expected)
        assert [p for _, p in self.spool.peek(1000)] == list(self.expected)
        assert self.spool.size_bytes == self.log_bytes
        assert (self.directory / LOG_NAME).stat().st_size == self.log_bytes

    def teardown(self) -> None:
        self.spool.close()
        self._tmp.cleanup()


SpoolModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_spool_model = SpoolModel.TestCase
