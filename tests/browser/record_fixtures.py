"""Records the getStats() fixtures of the browser client's unit tests from real calls in the
system Chromium through a real coturn: ``python -m tests.browser.record_fixtures [DIR]``.

For each case (tests/browser/call.py) and each side, a few consecutive getStats() reports taken
about a second apart are written to ``DIR/chromium-<case>-<side>.json`` (default
clients/browser/test/fixtures/) as ``{"browser", "case", "side", "samples"}``, each sample the
report's stats objects in the browser's order (``[...report.values()]``). The ``ice-restart``
case holds samples before and after its restart (side a relayed over UDP, then both direct).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.bench.chromium import launch_chromium
from tests.browser.call import CASES, RESTART, SIDES, Call, open_call, serving_pages
from tests.browser.turn import TurnServer, running_turn

if TYPE_CHECKING:
    from playwright.sync_api import Browser

FIXTURES = Path(__file__).resolve().parents[2] / "clients" / "browser" / "test" / "fixtures"
SAMPLES = 4
INTERVAL_S = 1.0


def browser_name(browser: Browser) -> str:
    """``chromium 156``: the browser and its major version."""
    return f"chromium {browser.version.split('.')[0]}"


def take(call: Call, count: int, samples: dict[str, list[list[dict[str, Any]]]]) -> None:
    for n in range(count):
        if n:
            time.sleep(INTERVAL_S)
        for side in SIDES:
            samples[side].append(call.stats(side))


def record_case(
    browser: Browser, pages_url: str, turn: TurnServer, name: str
) -> dict[str, list[list[dict[str, Any]]]]:
    samples: dict[str, list[list[dict[str, Any]]]] = {side: [] for side in SIDES}
    with open_call(browser, pages_url) as call:
        if name == RESTART.name:
            call.start(RESTART, turn)
            take(call, 2, samples)
            call.restart_ice(turn)
            take(call, SAMPLES - 1, samples)
        else:
            call.start(CASES[name], turn)
            take(call, SAMPLES, samples)
        if call.errors:
            raise RuntimeError(f"the call page failed: {call.errors}")
    return samples


def record(directory: Path) -> list[Path]:
    written = []
    directory.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="bwmon-turn-") as turn_dir,
        running_turn(Path(turn_dir)) as turn,
        serving_pages() as pages_url,
        launch_chromium() as browser,
    ):
        for name in [*CASES, RESTART.name]:
            for side, samples in record_case(browser, pages_url, turn, name).items():
                path = directory / f"chromium-{name}-{side}.json"
                fixture = {
                    "browser": browser_name(browser),
                    "case": name,
                    "side": side,
                    "samples": samples,
                }
                path.write_text(json.dumps(fixture, indent=1) + "\n")
                written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=FIXTURES)
    args = parser.parse_args(argv)
    for path in record(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
