"""``POST /ingest`` as a plain object (``collector.ingest.post.IngestPost``), no sockets: the
status and answer for good, mixed, malformed and refused messages, tokens from the header or
the first-frame hello, the meeting scope, the per-source rate limit, the hello's boot, the
counters; and, for any body at all, an answer whose counts add up and agree with the
transport's counters. Then the daemon's route around it: 503 ``busy`` when its queue is full or
it drains, and any body posted through the daemon's own HTTP server (an in-memory stream)
answered with a status of §2.4, never a 500, its accepted frames queued."""

from __future__ import annotations

import re
import time
from pathlib import Path

import h11
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.app import Daemon
from collector.auth import Auth
from collector.config import from_dict
from collector.consumer import SessionBatch
from collector.http.server import Request
from collector.ingest.counters import TransportCounters
from collector.ingest.limits import SourceLimiter
from collector.ingest.post import BUSY, MAX_ANSWER_ERRORS, IngestPost, Posted
from collector.ingest.session import SessionSettings
from protocol import Event, Hello, Limits, RtcSample, encode_json, encode_json_lines, encode_msgpack
from protocol.session import IngestAnswer
from protocol.tokens import Claims, mint
from tests.helpers import rtc

KEY = "post-test-key-" + "k" * 24
LIMITS = Limits(max_message_bytes=4096, max_frames_per_message=50)
ANSWER_STATUSES = {200, 400, 401, 403, 413, 429, 503}


def token(*rights: str, meeting: str | None = None) -> str:
    claims = Claims(rights=list(rights), exp=int(time.time()) + 600, meeting=meeting)  # type: ignore[arg-type]
    return mint(KEY, claims)


def make(keys: list[str] | None = None, limiter: SourceLimiter | None = None) -> IngestPost:
    auth = Auth(keys or [])
    settings = SessionSettings(limits=LIMITS, source_limiter=limiter)
    return IngestPost(settings, TransportCounters(), lambda t: auth.admit(t, "ingest"))


def hello(token: str | None = None, boot: str = "b-post") -> Hello:
    return Hello(boot=boot, kind="server", agent="tests", token=token)


def join(meeting: str = "m1") -> Event:
    return Event(meeting=meeting, participant="p1", kind="join", client_ts=1.764e12)


def errors(posted: Posted) -> list[tuple[int | None, str]]:
    return [(error.index, error.reason) for error in posted.answer.errors]


def test_a_good_batch_is_accepted_and_handed_on_with_the_hellos_boot() -> None:
    post = make()
    body = encode_json([hello(), rtc(0), join()])
    posted = post.receive(body, None, "10.0.0.1", 0.0)
    assert posted.status == 200
    assert posted.answer == IngestAnswer(accepted=3, rejected=0, errors=[])
    assert [type(frame) for frame in posted.frames] == [Hello, RtcSample, Event]
    assert posted.boot == "b-post"
    assert post.counters.as_dict() == {
        "messages": 1,
        "bytes": len(body),
        "frames_accepted": 3,
        "frames_rejected": 0,
        "rejected_by_reason": {},
    }


def test_a_mixed_batch_keeps_its_good_frames_and_lists_the_bad() -> None:
    post = make()
    good = msgspec.json.decode(encode_json(rtc(1)))
    bad = {**good, "q": -1}
    body = msgspec.json.encode([good, bad, {"t": "nope"}, good | {"q": 2}])
    posted = post.receive(body, None, "", 0.0)
    assert posted.status == 200
    assert (posted.answer.accepted, posted.answer.rejected) == (2, 2)
    assert errors(posted) == [(1, "out_of_range"), (2, "unknown_tag")]
    assert [frame.seq for frame in posted.frames if isinstance(frame, RtcSample)] == [1, 2]
    assert posted.boot == ""  # no hello first: the frames keep what they carry


def test_json_lines_and_msgpack_bodies_decode_as_on_websocket() -> None:
    post = make()
    lines = encode_json_lines([hello(), rtc(0), rtc(1)])
    assert post.receive(lines, None, "", 0.0).answer.accepted == 3
    packed = post.receive(encode_msgpack([hello(boot="mp"), rtc(2)]), None, "", 0.0)
    assert (packed.status, packed.answer.accepted, packed.boot) == (200, 2, "mp")


def test_a_message_rejected_whole_is_400_with_its_reason() -> None:
    post = make()
    for body, reason in [
        (b"{not json", "malformed"),
        (b"", "empty"),
        (b"42", "not_a_frame"),
        (encode_json([join()] * 51), "batch_too_large"),
        (msgspec.json.encode({"t": "rtc"}), "missing_field"),  # one unbatched bad frame
    ]:
        posted = post.receive(body, None, "", 0.0)
        assert (posted.status, errors(posted)) == (400, [(None, reason)]), body[:20]
        assert (posted.answer.accepted, posted.answer.rejected, posted.frames) == (0, 1, [])
    assert post.counters.frames_rejected == 5


def test_an_empty_batch_is_a_200_with_nothing() -> None:
    posted = make().receive(b"[]", None, "", 0.0)
    assert (posted.status, posted.answer) == (200, IngestAnswer(accepted=0, rejected=0, errors=[]))


def test_too_large_and_busy_refuse_unread() -> None:
    post = make()
    too_large = post.too_large()
    assert (too_large.status, errors(too_large)) == (413, [(None, "too_large")])
    busy = post.busy(120, "the ingest queue is full")
    assert (busy.status, busy.retry_after_s, errors(busy)) == (503, 1, [(None, BUSY)])
    assert post.counters.rejected_by_reason == {"too_large": 1, "busy": 1}
    assert post.counters.bytes == 120


def test_without_token_keys_any_request_is_accepted() -> None:
    posted = make().receive(encode_json([rtc(0)]), "Bearer whatever", "", 0.0)
    assert posted.status == 200


def test_a_token_is_required_from_the_first_hello_or_the_header() -> None:
    post = make([KEY])
    body = encode_json([rtc(0)])
    missing = post.receive(body, None, "", 0.0)
    assert (missing.status, errors(missing), missing.frames) == (401, [(None, "unauthorized")], [])
    # A hello that is not the first frame carries no token for the message.
    late = post.receive(encode_json([rtc(0), hello(token("ingest"))]), None, "", 0.0)
    assert late.status == 401
    in_hello = post.receive(encode_json([hello(token("ingest")), rtc(0)]), None, "", 0.0)
    assert (in_hello.status, in_hello.answer.accepted) == (200, 2)
    bearer = post.receive(body, f"Bearer {token('ingest')}", "", 0.0)
    assert (bearer.status, bearer.answer.accepted) == (200, 1)
    # A header that is not Bearer counts as none: the hello's token decides.
    basic = post.receive(encode_json([hello(token("ingest"))]), "Basic dXNlcjpwdw==", "", 0.0)
    assert basic.status == 200
    # The header decides when it is there, and is checked before the body is decoded.
    bad_header = post.receive(b"{not json", "Bearer bwm1.not.atoken", "", 0.0)
    assert (bad_header.status, errors(bad_header)) == (401, [(None, "unauthorized")])
    read_only = post.receive(body, f"Bearer {token('read')}", "", 0.0)
    assert (read_only.status, errors(read_only)) == (403, [(None, "forbidden")])
    # Without a header, a body the decoder refuses whole is answered with its reason.
    assert post.receive(b"{not json", None, "", 0.0).status == 400
    assert post.counters.rejected_by_reason == {
        "unauthorized": 3,
        "forbidden": 1,
        "malformed": 1,
    }


def test_a_meeting_token_rejects_the_other_meetings_frames_one_by_one() -> None:
    post = make([KEY])
    scoped = f"Bearer {token('ingest', meeting='m1')}"
    posted = post.receive(encode_json([rtc(0, "m1"), rtc(0, "m2"), join("m1")]), scoped, "", 0.0)
    assert (posted.status, posted.answer.accepted, posted.answer.rejected) == (200, 2, 1)
    assert errors(posted) == [(1, "forbidden")]
    none_in_scope = post.receive(encode_json([rtc(0, "m2"), join("m3")]), scoped, "", 0.0)
    assert (none_in_scope.status, none_in_scope.answer.rejected) == (403, 2)
    assert errors(none_in_scope) == [(None, "forbidden")]
    assert post.counters.rejected_by_reason == {"forbidden": 3}
    assert post.counters.frames_accepted == 2


def test_the_source_rate_limit_keeps_the_first_frames_then_answers_429() -> None:
    limiter = SourceLimiter(per_s=0.01, burst=3)
    post = make(limiter=limiter)
    body = encode_json([rtc(seq) for seq in range(5)])
    first = post.receive(body, None, "10.0.0.9", 0.0)
    assert (first.status, first.answer.accepted, first.answer.rejected) == (200, 3, 2)
    assert errors(first) == [(3, "rate_limited"), (4, "rate_limited")]
    spent = post.receive(body, None, "10.0.0.9", 0.0)
    assert (spent.status, spent.retry_after_s, errors(spent)) == (429, 1, [(None, "rate_limited")])
    other = post.receive(body, None, "10.0.0.10", 0.0)  # another address has its own bucket
    assert other.answer.accepted == 3


def test_the_answer_lists_at_most_the_first_hundred_rejections() -> None:
    post = make()
    post.settings = SessionSettings(limits=Limits(max_frames_per_message=1000))
    body = msgspec.json.encode([{"t": "nope"}] * 150)
    posted = post.receive(body, None, "", 0.0)
    assert (posted.status, posted.answer.rejected) == (200, 150)
    assert len(posted.answer.errors) == MAX_ANSWER_ERRORS
    assert [error.index for error in posted.answer.errors] == list(range(MAX_ANSWER_ERRORS))


def test_the_curl_example_of_the_spec_gets_the_answer_it_shows() -> None:
    spec = (Path(__file__).parents[2] / "protocol" / "PROTOCOL.md").read_text()
    section = spec[spec.index("### 10.5") : spec.index("## 11.")]
    body = re.search(r"<<'END'\n(.*?)\nEND\n", section, re.DOTALL)
    shown = re.search(r"```json\n(.*?)\n```", section, re.DOTALL)
    assert body is not None
    assert shown is not None
    posted = make().receive(body.group(1).encode(), None, "", 0.0)
    assert msgspec.json.encode(posted.answer) == shown.group(1).encode()


frames = st.sampled_from(
    [
        msgspec.json.decode(encode_json(rtc(1))),
        msgspec.json.decode(encode_json(hello())),
        msgspec.json.decode(encode_json(join())),
        {"t": "rtc", "m": "m1"},
        {"t": "nope"},
        {"t": "event", "m": "m2", "p": "p", "ev": "join", "ts": -1},
        [],
        "x",
    ]
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.lists(frames, max_size=60).map(msgspec.json.encode),
    st.lists(frames, max_size=60).map(msgspec.msgpack.encode),
    st.lists(frames, min_size=2, max_size=8).map(
        lambda items: b"\n".join(msgspec.json.encode(item) for item in items)
    ),
)


SCOPED = f"Bearer {token('ingest', meeting='m1')}"


@settings(max_examples=300, deadline=None)
@given(
    body=bodies,
    keyed=st.booleans(),
    authorization=st.sampled_from([None, "Bearer junk", "Basic x", SCOPED]),
)
def test_any_body_gets_a_clean_answer_whose_counts_add_up(
    body: bytes, keyed: bool, authorization: str | None
) -> None:
    post = make([KEY] if keyed else None, SourceLimiter(0.01, 40))
    posted = post.receive(body, authorization, "10.1.1.1", 0.0)
    answer = posted.answer
    assert posted.status in ANSWER_STATUSES
    assert answer.accepted == len(posted.frames)
    assert len(answer.errors) <= min(answer.rejected, MAX_ANSWER_ERRORS)
    assert (answer.rejected == 0) == (answer.errors == [])
    counters = post.counters
    assert (counters.frames_accepted, counters.frames_rejected) == (
        answer.accepted,
        answer.rejected,
    )
    assert sum(counters.rejected_by_reason.values()) == answer.rejected
    if posted.status != 200:
        assert answer.accepted == 0
        assert [error.index for error in answer.errors][-1:] == [None]
    indexes = [error.index for error in answer.errors if error.index is not None]
    assert indexes == sorted(indexes)
    msgspec.json.decode(msgspec.json.encode(answer), type=IngestAnswer)


async def test_the_daemon_answers_503_busy_when_its_queue_is_full_or_it_drains(
    tmp_path: Path,
) -> None:
    daemon = Daemon(from_dict({"storage": {"backend": "none", "state_dir": str(tmp_path)}}))
    queue_in, queue_out = trio.open_memory_channel[SessionBatch](1)
    daemon._frames_in = queue_in
    body = encode_json([hello(), rtc(0)])
    request = Request(method="POST", path="/ingest", body=body, peer="127.0.0.1")
    taken = daemon.post_ingest(request)
    assert taken.status == 200
    assert queue_out.receive_nowait() == ([hello(), rtc(0)], "b-post")
    queue_in.send_nowait(([], ""))  # full
    full = daemon.post_ingest(request)
    queue_out.receive_nowait()  # room again, but the queue's last emptying has begun:
    daemon.draining = True
    draining = daemon.post_ingest(request)
    for busy in (full, draining):
        assert (busy.status, dict(busy.headers)["retry-after"]) == (503, "1")
        assert msgspec.json.decode(busy.body)["errors"][0]["reason"] == BUSY
    assert daemon.http_counters.rejected_by_reason == {BUSY: 2}
    assert daemon.http_counters.frames_accepted == 2


async def _post_through_the_server(
    daemon: Daemon, body: bytes, headers: list[tuple[str, str]]
) -> tuple[int, dict[str, str], bytes]:
    """``POST /ingest`` through the daemon's own HTTP server over an in-memory stream."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = h11.Connection(h11.CLIENT)
    fields = [("host", "x"), ("content-length", str(len(body))), *headers]
    request = client.send(h11.Request(method="POST", target="/ingest", headers=fields)) or b""
    request += (client.send(h11.Data(data=body)) if body else b"") or b""
    request += client.send(h11.EndOfMessage()) or b""
    status, got, answer = 0, {}, b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.http._handle, server_stream)
        await client_stream.send_all(request)
        with trio.fail_after(5):
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(bytes(await client_stream.receive_some()))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    got = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    answer += bytes(event.data)
                else:
                    break
        await client_stream.aclose()
    return status, got, answer


@settings(max_examples=150, deadline=None)
@given(
    body=bodies,
    keyed=st.booleans(),
    authorization=st.sampled_from([None, "Bearer junk", "Basic x", SCOPED]),
)
def test_any_post_through_the_daemons_server_gets_a_clean_answer(
    tmp_path_factory: pytest.TempPathFactory, body: bytes, keyed: bool, authorization: str | None
) -> None:
    state = tmp_path_factory.mktemp("state")
    daemon = Daemon(
        from_dict(
            {
                "storage": {"backend": "none", "state_dir": str(state)},
                "auth": {"token_secrets": [KEY] if keyed else []},
                "ingest": {"max_ws_message_bytes": 2048, "max_frames_per_message": 50},
            }
        )
    )

    async def main() -> None:
        queue_in, queue_out = trio.open_memory_channel[SessionBatch](4)
        daemon._frames_in = queue_in
        headers = [] if authorization is None else [("authorization", authorization)]
        status, got, answer = await _post_through_the_server(daemon, body, headers)
        assert status in ANSWER_STATUSES
        assert got["access-control-allow-origin"] == "*"
        decoded = msgspec.json.decode(answer, type=IngestAnswer)
        counters = daemon.http_counters
        assert (counters.frames_accepted, counters.frames_rejected) == (
            decoded.accepted,
            decoded.rejected,
        )
        queued = [frame for frames, _ in _drain(queue_out) for frame in frames]
        assert len(queued) == decoded.accepted
        assert daemon.http.counters.response_errors == 0

    trio.run(main)


def _drain(queue: trio.MemoryReceiveChannel[SessionBatch]) -> list[SessionBatch]:
    batches = []
    while True:
        try:
            batches.append(queue.receive_nowait())
        except trio.WouldBlock:
            return batches
