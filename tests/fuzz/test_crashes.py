"""Every crash the fuzzers ever found, kept: each file under tests/fuzz/crashes/<target>/ is
replayed through its target's check, and each has a unit test named after the behaviour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peerproxyd.errors import SignalingError
from peerproxyd.signaling.messages import parse_message
from tests.fuzz import targets
from tests.signaling.test_server import D, connect, make_app, recv, register, send

REPLAY = {
    "frames": targets.check_frame,
    "heads": targets.check_head,
    "signaling": lambda data: targets.check_signaling(data.decode("utf-8", "surrogateescape")),
}
CRASHES = sorted(p for p in targets.CRASHES.glob("*/*") if p.parent.name in REPLAY)


def test_every_crash_file_has_a_target() -> None:
    assert CRASHES, "no crash files found"
    assert {p.parent.name for p in targets.CRASHES.glob("*/*")} <= REPLAY.keys()


@pytest.mark.parametrize("path", CRASHES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_crash_is_fixed(path: Path) -> None:
    REPLAY[path.parent.name](path.read_bytes())


# ----- found by test_targets.py::test_signaling_parser (crashes/signaling/out-of-range-number)


@pytest.mark.parametrize("number", ["1e999", "-1e400", "1E309"])
def test_signaling_refuses_out_of_range_numbers(number: str) -> None:
    """json.loads reads 1e999 as inf, which encode() (allow_nan=False) cannot write back: the
    server raised ValueError relaying it. It is now refused as it is read."""
    with pytest.raises(SignalingError) as info:
        parse_message('{"type": "offer", "to": "x", "payload": {"n": %s}}' % number)
    assert info.value.code == "bad-message"
    assert info.value.message == f"message is not valid JSON: number {number} is out of range"


async def test_signaling_server_keeps_a_sender_of_out_of_range_numbers(
    aiohttp_client: Any,
) -> None:
    client = await aiohttp_client(make_app())
    device = await register(client)
    viewer, viewer_id = await connect(client)
    await viewer.send_str('{"type": "offer", "to": "%s", "payload": {"n": 1e999}}' % D)
    reply = await recv(viewer)
    assert reply["type"] == "error" and reply["code"] == "bad-message", reply
    await send(viewer, type="offer", to=D, payload={"n": 1})  # the connection still works
    assert await recv(device) == {"type": "offer", "to": D, "from": viewer_id,
                                  "payload": {"n": 1}}
