"""bwmon-client imports nothing of the daemon's and no third-party package but msgspec: an
application that installs it gets no trio, database or Redis driver, no web framework."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import bwmon_client, bwmon_client.asgi, bwmon_client.starlette, bwmon_client.websocket
bwmon_client.Emitter("svc", url="udp://127.0.0.1:9").record("/a", "GET", 200, 1, 2, 0.001)
allowed = {"bwmon_client", "protocol", "msgspec", "typing_extensions"}  # msgspec's, if there
third_party = sorted(
    name for name in sys.modules
    if "." not in name and name not in sys.stdlib_module_names and name not in allowed
    and not name.startswith("_")
)
print(" ".join(third_party))
print(" ".join(sorted(n for n in sys.modules if n.startswith("protocol."))))
"""


def test_the_client_imports_only_msgspec_and_the_protocol_modules() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split("\n")
    assert out[0] == ""
    assert set(out[1].split()) <= {
        "protocol.codec",
        "protocol.emitter",
        "protocol.errors",
        "protocol.frames",
        "protocol.limits",
        "protocol.signing",
        # the daemon's package imports these in __init__ (the wheel has its own, empty one)
        "protocol.build",
        "protocol._built",
    }
