"""The WebSocket close codes the daemon sends (RFC 6455 §7.4.1), on ``/ingest`` (PROTOCOL.md
§7) and ``/subscribe`` (§12); one list for the wire, the sessions and their loops."""

from __future__ import annotations

from typing import Final

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # the daemon shuts down
CLOSE_POLICY: Final = 1008  # no hello, a refused token, a bad subscriber
CLOSE_TOO_BIG: Final = 1009  # a message (or a frame's declared length) over the limit
CLOSE_INTERNAL: Final = 1011  # heartbeat timeout, or the daemon failed
CLOSE_TRY_AGAIN: Final = 1013  # the daemon is busy
