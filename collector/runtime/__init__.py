"""Runtime plumbing: asyncio as host loop, trio as its guest, and the bridge between them.

The daemon's code is trio; asyncmy and redis-py's asyncio client need asyncio. ``run_guest`` runs
the trio program as a guest of an asyncio loop on one thread and hands it an ``AsyncioBridge``;
``open_thread_bridge`` gives trio tests and tools the same bridge backed by an asyncio loop in a
dedicated thread. This package never holds daemon logic and never lets asyncio exception types
leak into trio code.
"""

from collector.runtime.bridge import (
    AsyncioBridge,
    BridgeCancelled,
    BridgeClosed,
    RuntimeFault,
    open_thread_bridge,
)
from collector.runtime.host import run_guest

__all__ = [
    "AsyncioBridge",
    "BridgeCancelled",
    "BridgeClosed",
    "RuntimeFault",
    "open_thread_bridge",
    "run_guest",
]
