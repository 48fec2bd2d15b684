"""Many half-open sessions: strangers send the device offers and never go on (no ICE
candidates, no DTLS, no auth). The daemon (a real process, `[limits] max_peers = 2`) answers
at most `max_peers` connections that are still authenticating, tells every further one
`bye` "busy", closes each half-open one after `handshake_timeout`, and meanwhile serves its
authenticated viewer; once the half-open ones are gone a new viewer gets in."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from peerproxyd.rtc.aiortc_setup import new_peer_connection
from peerproxyd.rtc.transport import CHANNEL_LABEL
from tests.support.rawpeer import ICE, RawPeer
from tests.support.tuned_stack import TunedStack
from tests.test_limits import camera_stack

MAX_PEERS = 2
HANDSHAKE_TIMEOUT = 8.0
STRANGERS = 5


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunedStack]:
    yield from camera_stack(tmp_path_factory.mktemp("half-open"),
                            {"max_peers": MAX_PEERS, "handshake_timeout": HANDSHAKE_TIMEOUT})


async def bare_offer() -> str:
    """A real offer (data channel, DTLS fingerprint) without a single ICE candidate: the
    device can answer it but never reach its sender."""
    pc = new_peer_connection(ICE)
    try:
        pc.createDataChannel(CHANNEL_LABEL)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
    finally:
        await pc.close()
    return "".join(line + "\r\n" for line in sdp.splitlines()
                   if line and not line.startswith(("a=candidate", "a=end-of-candidates")))


async def device_reply(ws: aiohttp.ClientWebSocketResponse, device: str) -> dict[str, Any]:
    """The device's first answer or bye on this signaling connection (bounded)."""
    async with asyncio.timeout(30):
        for _ in range(100):
            msg = json.loads((await ws.receive_str()))
            if msg.get("from") == device and msg["type"] in ("answer", "bye"):
                return msg
    raise AssertionError("no answer or bye from the device")


async def test_half_open_sessions_are_capped_and_expire(crowded: TunedStack) -> None:
    daemon = crowded.procs["daemon"]
    sdp = await bare_offer()
    async with RawPeer(crowded.signal_url, crowded.link("camera")) as viewer, \
            aiohttp.ClientSession() as http:
        strangers = [await http.ws_connect(crowded.signal_url) for _ in range(STRANGERS)]
        try:
            for ws in strangers:
                assert json.loads(await ws.receive_str(timeout=10))["type"] == "hello"
                await ws.send_str(json.dumps({"type": "offer", "to": crowded.device,
                                              "payload": {"type": "offer", "sdp": sdp}}))
            replies = [await device_reply(ws, crowded.device) for ws in strangers]
            kinds = [r["type"] for r in replies]
            assert sorted(kinds) == ["answer"] * MAX_PEERS + ["bye"] * (STRANGERS - MAX_PEERS)
            for reply in replies:
                if reply["type"] == "bye":
                    assert reply["payload"]["reason"] == (
                        f"busy: {MAX_PEERS} viewers are connecting, try again")
            # The authenticated viewer is served throughout.
            head, body = await viewer.request("camera", "/")
            assert (head.status, body) == (200, b"hello from camera\n")
            # Each half-open session is closed after handshake_timeout.
            await asyncio.to_thread(
                daemon.wait_for_log,
                rf"no viewer authentication within {HANDSHAKE_TIMEOUT:.1f} s: closing",
                count=MAX_PEERS, timeout=HANDSHAKE_TIMEOUT + 60)
        finally:
            for ws in strangers:
                await ws.close()
        head, body = await viewer.request("camera", "/")
        assert (head.status, body) == (200, b"hello from camera\n")
    log = daemon.log()
    assert len(re.findall(rf"refusing c-[0-9a-f]+: {MAX_PEERS} peers are authenticating",
                          log)) == STRANGERS - MAX_PEERS
    assert "Traceback" not in log
    # The slots are free again: a new viewer gets in.
    async with RawPeer(crowded.signal_url, crowded.link("camera")) as newcomer:
        head, _ = await newcomer.request("camera", "/")
        assert head.status == 200
