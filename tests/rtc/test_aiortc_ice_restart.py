"""aiortc_ice_restart: two real aiortc peers on 127.0.0.1 restart ICE under a live data channel.
The restart must put new credentials and new sockets in use while DTLS and SCTP keep their
state: the same channel objects keep working and every message sent across the restart
arrives, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiortc import RTCDataChannel, RTCPeerConnection

from peerproxyd.config import IceSettings
from peerproxyd.rtc.aiortc_ice_restart import (
    IceRestart,
    IceRestartError,
    answer_restart,
    finish_restart,
    offer_restart,
)
from peerproxyd.rtc.aiortc_setup import configure_ice, new_peer_connection

ICE = IceSettings(host_addresses=["127.0.0.1"], mdns=False)
pytestmark = pytest.mark.timeout(60)


class Pair:
    """A viewer (offerer, controlling) and a device (answerer) with one open data channel."""

    def __init__(self) -> None:
        self.viewer = new_peer_connection(ICE)
        self.device = new_peer_connection(ICE)
        self.received: list[str] = []
        self.device_channel: asyncio.Future[RTCDataChannel] = (
            asyncio.get_running_loop().create_future()
        )

        @self.device.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            channel.on("message", self.received.append)
            self.device_channel.set_result(channel)

        self.channel = self.viewer.createDataChannel("peerproxy", ordered=True)

    async def connect(self) -> None:
        opened = asyncio.Event()
        self.channel.on("open", opened.set)
        await self.viewer.setLocalDescription(await self.viewer.createOffer())
        await self.device.setRemoteDescription(self.viewer.localDescription)
        await self.device.setLocalDescription(await self.device.createAnswer())
        await self.viewer.setRemoteDescription(self.device.localDescription)
        async with asyncio.timeout(20):
            await opened.wait()
            await self.device_channel

    async def restart(self) -> tuple[bool, bool]:
        offer, viewer_restart = await offer_restart(self.viewer)
        answer, device_restart = await answer_restart(self.device, offer)
        async with asyncio.timeout(20):
            done = (await finish_restart(self.viewer, viewer_restart, answer),
                    await device_restart.wait())
            await viewer_restart.closed()
            await device_restart.closed()
        return done

    async def close(self) -> None:
        await self.viewer.close()
        await self.device.close()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    configure_ice(ICE)
    p = Pair()
    await p.connect()
    try:
        yield p
    finally:
        await p.close()


def ice(pc: RTCPeerConnection):  # type: ignore[no-untyped-def]
    assert pc.sctp is not None
    return pc.sctp.transport.transport._connection


def selected_port(pc: RTCPeerConnection) -> int:
    return ice(pc)._nominated[1].local_candidate.port


async def until(condition, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_restart_keeps_dtls_and_the_channel_and_loses_nothing(pair: Pair) -> None:
    dtls, sctp = pair.viewer.sctp.transport, pair.viewer.sctp
    dtls_states: list[str] = []
    dtls.on("statechange", lambda: dtls_states.append(dtls.state))
    old_viewer, old_device = ice(pair.viewer), ice(pair.device)
    old_ufrags = (old_viewer.local_username, old_device.local_username)
    old_ports = (selected_port(pair.viewer), selected_port(pair.device))

    total = 3000
    sent_before_restart = asyncio.Event()

    async def send_all() -> None:
        for i in range(total):
            while pair.channel.bufferedAmount > 64 * 1024:
                await asyncio.sleep(0.005)
            pair.channel.send(f"{i:06d}" + "x" * 500)
            if i == total // 3:
                sent_before_restart.set()
            if i % 20 == 0:
                await asyncio.sleep(0.001)  # keep sending through the whole restart

    sender = asyncio.create_task(send_all())
    await sent_before_restart.wait()
    assert not sender.done(), "the restart must happen while messages are in flight"
    assert await pair.restart() == (True, True)
    await sender
    await until(lambda: len(pair.received) == total, "all messages")

    assert [int(m[:6]) for m in pair.received] == list(range(total))
    # The same DTLS transport and SCTP association, never renegotiated.
    assert pair.viewer.sctp is sctp and sctp.transport is dtls
    assert dtls.state == "connected" and dtls_states == []
    assert pair.viewer.connectionState == pair.device.connectionState == "connected"
    # New credentials and new sockets carry it; the old generation is closed.
    new_viewer, new_device = ice(pair.viewer), ice(pair.device)
    assert new_viewer is not old_viewer and new_device is not old_device
    assert (new_viewer.local_username, new_device.local_username) != old_ufrags
    assert new_viewer.remote_username == new_device.local_username
    assert new_device.remote_username == new_viewer.local_username
    assert (selected_port(pair.viewer), selected_port(pair.device)) != old_ports
    assert old_viewer._protocols == [] and old_device._protocols == []
    # The descriptions name the new generation.
    assert f"a=ice-ufrag:{new_device.local_username}" in pair.device.localDescription.sdp
    assert f"a=ice-ufrag:{new_viewer.local_username}" in pair.viewer.localDescription.sdp

    # The same channel objects both ways, after the restart.
    device_channel = pair.device_channel.result()
    replies: list[str] = []
    pair.channel.on("message", replies.append)
    device_channel.send("after")
    pair.channel.send("after")
    await until(lambda: replies == ["after"] and pair.received[-1] == "after", "replies")


async def test_two_restarts_in_a_row(pair: Pair) -> None:
    ufrags = {ice(pair.viewer).local_username}
    for _ in range(2):
        assert await pair.restart() == (True, True)
        ufrags.add(ice(pair.viewer).local_username)
    assert len(ufrags) == 3
    pair.channel.send("still here")
    await until(lambda: pair.received == ["still here"], "message")


async def test_unanswered_restart_keeps_the_old_pair(pair: Pair) -> None:
    """The answerer's restart times out (the offerer never gets the answer): it falls back to
    the old generation, which still carries the channel."""
    old = ice(pair.device)
    offer, viewer_restart = await offer_restart(pair.viewer)
    _, device_restart = await answer_restart(pair.device, offer, timeout=0.5)
    async with asyncio.timeout(10):
        assert await device_restart.wait() is False
    await viewer_restart.cancel()
    assert await viewer_restart.wait() is False
    async with asyncio.timeout(10):
        await device_restart.closed()
        await viewer_restart.closed()
    assert device_restart.new._protocols == [] and viewer_restart.new._protocols == []
    assert ice(pair.device) is old and pair.device.sctp.transport.transport.iceGatherer \
        ._connection is old
    pair.channel.send("over the old pair")
    await until(lambda: pair.received == ["over the old pair"], "message")


async def test_remote_that_keeps_its_credentials_is_no_restart(pair: Pair) -> None:
    """An answer carrying the old ufrag (a peer that cannot restart) fails the restart."""
    stale_answer = pair.device.localDescription
    offer, viewer_restart = await offer_restart(pair.viewer)
    async with asyncio.timeout(10):
        assert await finish_restart(pair.viewer, viewer_restart, stale_answer) is False
    pair.channel.send("old pair")
    await until(lambda: pair.received == ["old pair"], "message")


async def test_close_during_a_restart_ends_both_generations(pair: Pair) -> None:
    offer, viewer_restart = await offer_restart(pair.viewer)
    old, new = viewer_restart.old, viewer_restart.new
    async with asyncio.timeout(10):
        await pair.viewer.close()
        assert await viewer_restart.wait() is False
        await viewer_restart.closed()
    assert old._protocols == [] and new._protocols == []


async def test_no_restart_before_connected() -> None:
    configure_ice(ICE)
    pc = new_peer_connection(ICE)
    pc.createDataChannel("peerproxy")
    try:
        with pytest.raises(IceRestartError):
            IceRestart(pc)
    finally:
        await pc.close()
