"""The harness itself, in real Chromium through the real coturn: each case's call selects the
path it asks for, as getStats reports it (the facts of shared/reference/webrtc-quality.md that
the client's relay detection leans on), and an ICE restart moves a relayed call to the direct
pair."""

from __future__ import annotations

import pytest

from tests.browser.call import CASES, RESTART, SIDES, Call
from tests.browser.turn import TurnServer

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_takes_its_path(call: Call, turn: TurnServer, name: str) -> None:
    case = CASES[name]
    call.start(case, turn)
    for side in SIDES:
        path = call.path(side)
        if case.relayed(side):
            assert (path["local"], path["relayProtocol"]) == ("relay", case.path(side))
        else:
            assert path["local"] in {"host", "prflx"}
            assert path["relayProtocol"] is None
        assert (path["remote"] == "relay") == case.relayed(case.peer(side))


def test_an_ice_restart_moves_a_relayed_call_to_the_direct_pair(
    call: Call, turn: TurnServer
) -> None:
    call.start(RESTART, turn)
    before = call.path("a")
    assert (before["local"], before["relayProtocol"]) == ("relay", "udp")
    call.restart_ice(turn)
    after = call.path("a")
    assert after["pair"] != before["pair"]
    assert (after["local"], after["relayProtocol"]) == ("host", None)
    assert call.path("b")["remote"] != "relay"
