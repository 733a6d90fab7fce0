"""RtcStream reads a sample by position (collector/aggregate/rtc.py): these tests fail when
RtcSample's fields move out of the layout it reads (protocol/frames.py)."""

from __future__ import annotations

from typing import Any

import msgspec

from collector.aggregate.rtc import COUNTERS, COUNTERS_AT, STREAM_KEY, RtcStream, sample_fields
from protocol import RtcSample

FIELDS = tuple(f.name for f in msgspec.structs.fields(RtcSample))


def test_a_sample_begins_with_its_stream_key() -> None:
    assert FIELDS[STREAM_KEY] == ("meeting", "participant", "connection")


def test_the_counters_are_one_run_of_fields_in_counters_order() -> None:
    assert FIELDS[COUNTERS_AT] == COUNTERS


def test_each_counter_of_a_sample_reaches_its_own_delta() -> None:
    values: dict[str, Any] = {name: 1_000 * (i + 1) for i, name in enumerate(COUNTERS)}
    frame = RtcSample(meeting="m", participant="p", connection="c", seq=0, client_ts=1.0, **values)
    assert sample_fields(frame)[STREAM_KEY] == ("m", "p", "c")
    stream = RtcStream("m", "p", "c")
    stream.add(frame, minute_no=1)  # q 0: counted in full
    pending, _samples = stream.take_pending()
    assert dict(zip(COUNTERS, pending, strict=True)) == values
