"""Signals in guest mode, end to end: a child Python runs ``run_guest`` (the daemon's real entry
shape) and the test sends it real signals. Subprocesses because signal handlers are per process
and must be installed on the main thread.

Each test also runs with SIGINT and SIGHUP ignored by the child's parent, as a shell does for a
background job (``&``) and ``nohup`` for SIGHUP: a disposition the child inherits, which the
tests must not depend on."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 15


# Starts the child with SIGINT and SIGHUP ignored (inherited across exec, as from a shell).
IGNORING = (
    "import os, signal, sys\n"
    "for signum in (signal.SIGINT, signal.SIGHUP):\n"
    "    signal.signal(signum, signal.SIG_IGN)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)
INHERITED = pytest.mark.parametrize("inherited", ["callers", "ignored"])


async def _run_child(
    scenario: str, signum: signal.Signals, inherited: str
) -> tuple[int, list[str]]:
    """Start the child (with the parent's signal dispositions, or SIGINT and SIGHUP ignored),
    wait for its "ready" line, send ``signum``, return (exit code, lines)."""
    child = ["-m", "tests.runtime.guest_child", scenario]
    prefix = ["-c", IGNORING] if inherited == "ignored" else []
    proc = await trio.lowlevel.open_process(
        [sys.executable, *prefix, *child],
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
@INHERITED
async def test_trio_signal_receiver_works_in_guest_mode(
    signum: signal.Signals, inherited: str
) -> None:
    returncode, lines = await _run_child("listen", signum, inherited)
    assert lines == ["ready pong", f"got {signum.name}", "after signal pong"], lines
    assert returncode == 3


@INHERITED
async def test_sigint_without_trio_receiver_unwinds_then_raises(inherited: str) -> None:
    returncode, lines = await _run_child("unhandled", signal.SIGINT, inherited)
    assert lines == ["ready", "asyncio call unwound", "trio unwound", "KeyboardInterrupt"], lines
    assert returncode == 130
