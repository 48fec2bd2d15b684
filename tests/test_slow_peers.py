"""Stall detection judges progress, not levels (peerproxyd/tunnel/channel.py): a peer that is
overloaded but still reading is waited for, however full the channel stays; a peer that
acknowledges nothing is closed with a clear reason. The daemon's ChannelLink and Router on a
real aiortc connection in this process (tests/support/peer_pair.py), short stall_timeout.

The soak (bench/soak.py) found the first: a native client under load closed its channel with
"channel not drained for 60 s" while the daemon was reading it, slowly, all along.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiortc.rtcsctptransport import DataChunk

from peerproxyd.config import ServiceSettings
from peerproxyd.device.router import Router, new_upstream_session
from peerproxyd.protocol import MAX_PAYLOAD, RequestHead
from peerproxyd.tunnel.channel import HIGH_WATER, LOW_WATER, ChannelStream
from tests.support.peer_pair import PeerPair
from tests.support.upstream_app import build_app, pattern

STALL = 1.0  # seconds: the serving side's stall_timeout here


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    runner = web.AppRunner(build_app("camera"), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with new_upstream_session() as http:
        yield Router({"camera": ServiceSettings(upstream=f"http://127.0.0.1:{port}")}, http)
    await runner.cleanup()


def download(size: int) -> RequestHead:
    return RequestHead(method="GET", target=f"/download?size={size}", service="camera")


async def fetch(stream: ChannelStream) -> bytes:
    await asyncio.wait_for(stream.response, 60)
    chunks = []
    while chunk := await asyncio.wait_for(stream.read(), 60):
        chunks.append(chunk)
    return b"".join(chunks)


def throttle_viewer(pair: PeerPair, seconds_per_chunk: float) -> Any:
    """The viewer's SCTP takes `seconds_per_chunk` for each DATA chunk it receives (~1 KB):
    a peer too busy to read fast, acknowledging a little all the time. Returns the undo."""
    sctp = pair.viewer_pc.sctp
    original = sctp._receive_chunk

    async def receive_chunk(chunk: Any) -> None:
        if isinstance(chunk, DataChunk):
            await asyncio.sleep(seconds_per_chunk)
        await original(chunk)

    sctp._receive_chunk = receive_chunk
    return lambda: setattr(sctp, "_receive_chunk", original)


async def test_a_slow_but_draining_peer_is_not_closed(router: Router) -> None:
    """A viewer that reads ~200 KB/s while it keeps asking for more: every new response puts
    a head and a first body message on the channel, so the serving side's queue stays above
    HIGH_WATER (it never gets back to LOW_WATER) for 4x stall_timeout. The peer acknowledges
    bytes in every period: it is waited for, and every body arrives intact.

    The level is sampled, not held: a sample may dip just under HIGH_WATER (a busy machine
    reads between two refills), so most samples above HIGH_WATER and none back at LOW_WATER
    is the precondition."""
    async with PeerPair(router, stall_timeout=STALL) as pair:
        assert pair.server is not None
        undo = throttle_viewer(pair, 0.006)
        big = pair.viewer.open_stream(download(2 * HIGH_WATER), end_stream=True)
        big_body = asyncio.create_task(fetch(big))
        small: list[asyncio.Task[bytes]] = []
        levels: list[int] = []
        loop = asyncio.get_running_loop()
        began = loop.time()
        while loop.time() - began < 4 * STALL:
            small.append(asyncio.create_task(fetch(pair.viewer.open_stream(
                download(2 * MAX_PAYLOAD), end_stream=True))))
            await asyncio.sleep(0.05)  # 80 streams in all: below max_streams (128)
            if loop.time() - began > STALL / 2:  # once the queue has filled up
                levels.append(pair.server.channel.bufferedAmount)
            assert not pair.server.is_closed, "a reading peer was closed"
        # The queue never drained back down: the old level-based check closed this peer.
        assert levels and min(levels) > LOW_WATER, levels
        assert sum(level > HIGH_WATER for level in levels) >= 0.8 * len(levels), levels
        undo()
        assert await big_body == pattern(2 * HIGH_WATER)
        assert [await t for t in small] == [pattern(2 * MAX_PAYLOAD)] * len(small)
        assert not pair.server.is_closed


async def test_a_stream_is_not_reset_while_its_window_is_still_being_delivered(
    router: Router,
) -> None:
    """A 1.5 MiB download to a viewer reading ~300 KB/s: the first window (1 MiB) takes
    about 3x stall_timeout to arrive, and no WINDOW can come back before it has. Its bytes
    are acknowledged all along: the writer waits, and the body arrives intact."""
    async with PeerPair(router, stall_timeout=STALL) as pair:
        throttle_viewer(pair, 0.004)
        size = 3 * HIGH_WATER // 2
        assert await fetch(pair.viewer.open_stream(download(size), end_stream=True)) \
            == pattern(size)
        assert pair.server is not None and not pair.server.is_closed


async def test_a_peer_that_acknowledges_nothing_is_closed_with_a_clear_reason(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    """The same serving side, a viewer whose SCTP acknowledges nothing: closed after about
    stall_timeout, and the log says why."""
    async with PeerPair(router, stall_timeout=STALL) as pair:
        assert pair.server is not None
        pair.viewer_stops_reading()
        for _ in range(3):  # 3 windows (1 MiB each): more than HIGH_WATER to send
            pair.viewer.open_stream(download(8 * HIGH_WATER), end_stream=True)
        with caplog.at_level(logging.WARNING, logger="peerproxyd.tunnel.channel"):
            async with asyncio.timeout(10 * STALL):
                await pair.server.wait_closed()
        assert f"server: closing: peer is not reading: nothing acknowledged for {STALL:g} s" \
            in caplog.text
