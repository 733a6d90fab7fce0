"""The in-call view's golden vectors: fresh (the daemon's formulas did not change without them),
and covering what the browser client must get right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.aggregate import quality as q
from tests.aggregate import quality_vectors as vectors


def test_committed_vectors_are_what_the_daemon_computes() -> None:
    assert vectors.VECTORS.read_text() == vectors.render(), (
        "the daemon's quality code changed: run python -m tests.aggregate.quality_vectors"
    )


def test_check_mode_tells_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "quality-vectors.json"
    stale.write_text("{}\n")
    monkeypatch.setattr(vectors, "VECTORS", stale)
    assert vectors.main(["--check"]) == 1
    assert vectors.main([]) == 0
    assert vectors.main(["--check"]) == 0


def test_vectors_cover_every_reason_level_and_path() -> None:
    views = [case["view"] for case in json.loads(vectors.render())["cases"]]
    shown = [view for view in views if view is not None]
    assert len(shown) < len(views)  # a first sample
    assert {reason for view in shown for reason in view["reasons"]} == set(q.REASONS)
    assert {view["level"] for view in shown} == {*q.LEVELS, None}
    assert {view["relayProtocol"] for view in shown} == {"udp", "tcp", "tls", None}
    assert any(view["remoteRelayed"] for view in shown)
    assert any(view["mos"] is None and view["score"] is not None for view in shown)
