"""Regression tests for peerproxyd's aiortc speed-ups (peerproxyd/aiortc_*.py).

In-process: two real aiortc peers on 127.0.0.1 in one event loop, with the speed-ups on and
off, so each test also shows what stock aiortc does (and fails if aiortc changes under us).
In a network namespace (root): peer processes (bench/_dcpeer.py) and headless Chromium with 5 %
of UDP datagrams dropped at random by iptables, data checked message by message.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from peerproxyd.rtc import aiortc_setup
from peerproxyd.rtc.aiortc_setup import SPEEDUPS, install_speedups
from peerproxyd.rtc.patches import aioice_tuning

MESSAGE = 16 * 1024


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    aioice_tuning.configure(host_addresses=["127.0.0.1"])
    yield
    install_speedups(SPEEDUPS)  # what peerproxyd runs with
    aioice_tuning.configure()


class Pair:
    """Two connected aiortc peers and their data channel ends."""

    def __init__(self) -> None:
        self.a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def connect(self) -> None:
        self.ca = self.a.createDataChannel("t", ordered=True)
        self.ca.on("message", self.replies.put_nowait)
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_channel(channel: Any) -> None:
            channel.on("message", self.received.put_nowait)
            got.set_result(channel)

        self.b.on("datachannel", on_channel)
        await self.a.setLocalDescription(await self.a.createOffer())
        await self.b.setRemoteDescription(self.a.localDescription)
        await self.b.setLocalDescription(await self.b.createAnswer())
        await self.a.setRemoteDescription(self.b.localDescription)
        self.cb = await asyncio.wait_for(got, 20)
        for _ in range(200):  # bounded: until our end has the peer's ACK too
            if self.ca.readyState == "open":
                break
            await asyncio.sleep(0.01)
        assert self.ca.readyState == "open"

    async def close(self) -> None:
        await self.a.close()
        await self.b.close()


def packets(pc: RTCPeerConnection) -> tuple[int, int]:
    """(sent, received) datagrams of a peer's DTLS transport, from aiortc's own counters."""
    dtls = pc.sctp.transport
    return dtls._RTCDtlsTransport__tx_packets, dtls._RTCDtlsTransport__rx_packets


@pytest.fixture
async def pair_factory() -> AsyncIterator[Any]:
    pairs: list[Pair] = []

    async def make(speedups: list[str]) -> Pair:
        install_speedups(speedups)
        pair = Pair()
        pairs.append(pair)
        await pair.connect()
        return pair

    yield make
    for pair in pairs:
        await pair.close()


async def bulk(pair: Pair, count: int) -> None:
    """`count` numbered 16 KiB messages a -> b, with backpressure; all must arrive in order."""
    pair.ca.bufferedAmountLowThreshold = 256 * 1024
    low = asyncio.Event()
    pair.ca.on("bufferedamountlow", low.set)
    for i in range(count):
        if pair.ca.bufferedAmount > 1024 * 1024:
            low.clear()
            await asyncio.wait_for(low.wait(), 30)
        pair.ca.send(i.to_bytes(4, "big") * (MESSAGE // 4))
        await asyncio.sleep(0)
    for i in range(count):
        message = await asyncio.wait_for(pair.received.get(), 30)
        assert message == i.to_bytes(4, "big") * (MESSAGE // 4)


@pytest.mark.parametrize("speedups", [[], ["sack"]], ids=["stock", "sack"])
async def test_receiver_acknowledges_every_second_packet(
    pair_factory: Any, speedups: list[str]
) -> None:
    pair = await pair_factory(speedups)
    sent0, received0 = packets(pair.b)
    await bulk(pair, 200)  # 3.2 MB, ~2,800 DATA packets
    sent, received = packets(pair.b)
    sacks_per_packet = (sent - sent0) / (received - received0)
    if speedups:
        # At least every second packet (RFC 9260 6.2), more when the receiver goes idle
        # between packets (here, in one process with the sender, it often does).
        assert 0.45 <= sacks_per_packet <= 0.85
    else:
        assert sacks_per_packet > 0.95  # stock aiortc: one SACK per packet


@pytest.mark.parametrize("speedups", [[], ["sack"], list(SPEEDUPS)])
async def test_a_lone_packet_is_acknowledged_without_a_retransmission(
    pair_factory: Any, speedups: list[str]
) -> None:
    """A ping-pong must not wait for a second packet: the deferred SACK goes out at once,
    long before aiortc's T3 timer (1 s at least) would resend the chunk."""
    pair = await pair_factory(speedups)
    sctp_a = pair.a.sctp
    for i in range(5):
        pair.ca.send(b"ping %d" % i)
        assert await asyncio.wait_for(pair.received.get(), 10) == b"ping %d" % i
        chunk = sctp_a._sent_queue[0] if sctp_a._sent_queue else None
        for _ in range(500):  # bounded: 5 s
            if not sctp_a._sent_queue:
                break
            await asyncio.sleep(0.01)
        assert not sctp_a._sent_queue, "the lone DATA chunk was never acknowledged"
        assert chunk is None or chunk._sent_count == 1, "acknowledged only after a retransmission"
        pair.cb.send(b"pong")
        assert await asyncio.wait_for(pair.replies.get(), 10) == b"pong"


async def test_speedups_are_installed_by_configure_ice() -> None:
    from aiortc.rtcsctptransport import RTCSctpTransport

    from peerproxyd.config import IceSettings
    from peerproxyd.rtc.patches import aiortc_sack, aiortc_transmit

    install_speedups([])
    aiortc_setup.configure_ice(IceSettings(host_addresses=["127.0.0.1"]))
    assert RTCSctpTransport._send_sack is aiortc_sack.send_sack
    assert RTCSctpTransport._transmit is aiortc_transmit.transmit
    with pytest.raises(ValueError, match="unknown speed-ups"):
        install_speedups(["no-such-thing"])


async def test_transmit_fast_path_sends_the_same_data(pair_factory: Any) -> None:
    pair = await pair_factory(["transmit"])
    await bulk(pair, 100)
    assert not getattr(pair.a.sctp, "_pp_retransmit_possible", False)


# ----------------------------------------------------------------------------- with loss
def netns_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (ip netns, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    reason = netns_reason()
    if reason:
        pytest.skip(reason)
    from bench.datachannel import World

    w = World(tmp_path, chromium=getattr(request, "param", False))
    try:
        w.up()
        yield w
    finally:
        w.down()


LOSSY_BYTES = 1_000_000


@pytest.mark.netns
@pytest.mark.parametrize(
    ("daemon", "client"),
    [("all", "all"), ("all", ""), ("", "all")],
    ids=["ours-ours", "ours-daemon-stock-client", "stock-daemon-ours-client"],
)
def test_five_percent_loss_between_processes(world: Any, daemon: str, client: str) -> None:
    from bench.datachannel import Pair as ProcessPair

    pair = ProcessPair(world, "native", "x", daemon, client_speedups=client)
    world.drop_udp(0.05)
    for direction in ("down", "up"):
        result = pair.transfer(direction, LOSSY_BYTES)  # raises unless every message arrived
        assert result["seconds"] > 0
    assert world.dropped() > 0  # the loss was real


@pytest.mark.netns
@pytest.mark.parametrize("world", [True], indirect=True)
def test_chromium_with_five_percent_loss(world: Any) -> None:
    from bench.datachannel import Pair as ProcessPair

    if world.agent is None:
        pytest.skip("Chromium is not available")
    pair = ProcessPair(world, "chromium", "ours", "all")
    for direction in ("down", "up"):
        pair.transfer(direction, 4_000_000)
    world.drop_udp(0.05)
    for direction in ("down", "up"):
        pair.transfer(direction, LOSSY_BYTES)
    assert world.dropped() > 0


async def test_receive_fast_path_keeps_aiortc_bookkeeping(pair_factory: Any) -> None:
    """In order, with a gap, with a duplicate: the same results as aiortc's own method."""
    from peerproxyd.rtc.patches import aiortc_receive

    pair = await pair_factory(["receive"])
    await bulk(pair, 20)
    sctp = pair.b.sctp
    last = sctp._last_received_tsn

    def tsn(n: int) -> int:
        return (last + n) % 2**32

    assert sctp._mark_received(tsn(2)) is False  # a gap: aiortc's path
    assert sctp._sack_misordered == {tsn(2)} and sctp._last_received_tsn == last
    assert sctp._mark_received(tsn(1)) is False  # fills it
    assert sctp._last_received_tsn == tsn(2) and not sctp._sack_misordered
    assert sctp._mark_received(tsn(3)) is False  # the fast path
    assert sctp._last_received_tsn == tsn(3)
    assert sctp._mark_received(tsn(3)) is True  # a duplicate
    assert sctp._sack_duplicates == [tsn(3)]
    assert sctp._mark_received(tsn(4)) is False  # duplicates pending: aiortc's path
    assert sctp._last_received_tsn == tsn(4) and sctp._sack_duplicates == []
    sctp._last_received_tsn = 2**32 - 1  # wrap-around
    assert aiortc_receive.mark_received(sctp, 0) is False and sctp._last_received_tsn == 0


def test_dtls_pending_reads_pyopenssl_memory_bio() -> None:
    """The BIO length we read instead of a failing bio_read: zero when empty, the bytes of a
    ClientHello once a handshake has started (fails if pyOpenSSL moves its BIO)."""
    from OpenSSL import SSL

    from peerproxyd.rtc.patches import aiortc_dtls

    assert aiortc_dtls.supported()
    connection = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
    assert aiortc_dtls.pending(connection) == 0
    connection.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        connection.do_handshake()
    waiting = aiortc_dtls.pending(connection)
    assert waiting > 0
    assert len(connection.bio_read(65536)) == waiting
    assert aiortc_dtls.pending(connection) == 0


async def test_all_speedups_move_bulk_data_both_ways(pair_factory: Any) -> None:
    pair = await pair_factory(list(SPEEDUPS))
    await bulk(pair, 100)
    pair.ca, pair.cb = pair.cb, pair.ca
    pair.received = pair.replies
    await bulk(pair, 100)
