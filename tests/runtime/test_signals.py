"""Signals in guest mode, end to end: a child Python runs ``run_guest`` (the daemon's real entry
shape) and the test sends it real signals. Subprocesses because signal handlers are per process
and must be installed on the main thread."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 15


async def _run_child(scenario: str, signum: signal.Signals) -> tuple[int, list[str]]:
    """Start the child, wait for its "ready" line, send ``signum``, return (exit code, lines)."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.runtime.guest_child", scenario],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = b""
    try:
        with trio.fail_after(DEADLINE_S):
            while b"ready" not in output:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"child exited before ready: {output.decode()}"
                output += chunk
            proc.send_signal(signum)
            while chunk := await proc.stdout.receive_some():
                output += chunk
            returncode = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        await proc.stdout.aclose()
    return returncode, output.decode().splitlines()


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
async def test_trio_signal_receiver_works_in_guest_mode(signum: signal.Signals) -> None:
    returncode, lines = await _run_child("listen", signum)
    assert lines == ["ready pong", f"got {signum.name}", "after signal pong"], lines
    assert returncode == 3


async def test_sigint_without_trio_receiver_unwinds_then_raises() -> None:
    returncode, lines = await _run_child("unhandled", signal.SIGINT)
    assert lines == ["ready", "asyncio call unwound", "trio unwound", "KeyboardInterrupt"], lines
    assert returncode == 130
