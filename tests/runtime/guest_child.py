"""A tiny program run by test_signals as a subprocess: ``run_guest`` with a trio_main that
prints what happens, so the parent can check signal handling in guest mode end to end.

Usage: ``python -m tests.runtime.guest_child listen|unhandled``
"""

from __future__ import annotations

import asyncio
import signal
import sys

import trio

from collector.runtime import AsyncioBridge, run_guest


def say(line: str) -> None:
    print(line, flush=True)


async def aio_ping() -> str:
    await asyncio.sleep(0)
    return "pong"


async def aio_long_call() -> None:
    try:
        await asyncio.sleep(30)
    finally:
        say("asyncio call unwound")


async def listen(bridge: AsyncioBridge) -> int:
    """A daemon's shape: trio owns SIGTERM/SIGINT/SIGHUP and shuts down cleanly on one."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        say(f"ready {await bridge.run(aio_ping)}")
        async for signum in signals:
            say(f"got {signal.Signals(signum).name}")
            break
    # The bridge still works after the signal: the final flush of a real shutdown needs it.
    say(f"after signal {await bridge.run(aio_ping)}")
    return 3


async def unhandled(bridge: AsyncioBridge) -> int:
    """No trio receiver for SIGINT: asyncio's Ctrl-C handling must unwind trio cleanly."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bridge.run, aio_long_call)
            await bridge.run(aio_ping)
            say("ready")
            await trio.sleep(60)  # ended by the host's cancellation on SIGINT
    finally:
        say("trio unwound")
    return 1


def main() -> int:
    scenario = {"listen": listen, "unhandled": unhandled}[sys.argv[1]]
    # Python's own SIGINT handler, which asyncio's Ctrl-C handling needs, whatever this process
    # inherited: a Python started with SIGINT ignored (a shell's background job, ``nohup``
    # wrappers) keeps it ignored, and Ctrl-C would then do nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_guest(scenario)
    except KeyboardInterrupt:
        say("KeyboardInterrupt")
        return 130


if __name__ == "__main__":
    sys.exit(main())
