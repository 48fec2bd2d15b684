"""Every limit on what a remote peer controls, exceeded through real connections: a clear
error for the offender, nothing lost for anyone else.

- header bytes per request, concurrent streams per peer, peers per device: the daemon as a
  real process (tests/support/tuned_stack.py), viewers as real aiortc peers;
- request body size per service: tests/test_injection.py (it needs the recording upstream);
- signaling message size and rate: `peerproxyd signal --config` as a real process;
- slow readers: the daemon's own ChannelLink and Router on a real aiortc connection in this
  process (tests/support/peer_pair.py), so the test can pick short timeouts and look at what
  the serving side buffers while the upstream would send hundreds of MB.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from peerproxyd.config import ServiceSettings
from peerproxyd.device.router import Router, new_upstream_session
from peerproxyd.errors import AuthError, StreamResetError
from peerproxyd.protocol import (
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    ErrorCode,
    Flag,
    Frame,
    RequestHead,
)
from peerproxyd.tunnel.channel import HIGH_WATER, ChannelStream
from tests.support.peer_pair import PeerPair
from tests.support.procs import Proc, free_port, python, wait_http
from tests.support.rawpeer import RawPeer
from tests.support.tuned_stack import TunedStack
from tests.support.upstream_app import STATS, build_app, pattern

MB = 1024 * 1024
H, E, F = Flag.HEADERS, Flag.END_HEADERS, Flag.FINAL


async def until(condition: Any, timeout: float = 30.0, step: float = 0.05) -> None:
    """Wait (bounded) for `condition()` to hold."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(step)
    except TimeoutError:
        raise AssertionError(f"still false after {timeout} s: {condition}") from None


def camera_stack(log_dir: Path, limits: dict[str, int]) -> Iterator[TunedStack]:
    """Signaling, a camera upstream and a daemon with these `[limits]`; stopped afterwards."""
    stack = TunedStack(log_dir)
    try:
        stack.upstream("camera")
        stack.signal()
        stack.daemon({"camera": stack.upstream_ports["camera"]}, limits=limits)
        yield stack
    finally:
        stack.stop()


# ----- header bytes and streams per peer (daemon process)


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunedStack]:
    yield from camera_stack(tmp_path_factory.mktemp("limits"),
                            {"max_header_bytes": 4096, "max_streams_per_peer": 2})


async def test_header_block_over_the_limit(tight: TunedStack) -> None:
    async with RawPeer(tight.signal_url, tight.link("camera")) as peer:
        big = tuple((f"X-Big-{i}", "v" * 1000) for i in range(5))  # > 4096 bytes of JSON
        with pytest.raises(StreamResetError) as info:
            await peer.request("camera", "/", headers=big)
        assert info.value.code == ErrorCode.HEADERS_TOO_LARGE
        assert info.value.reason == "header block on stream 1 exceeds 4096 bytes"
        fits = tuple((f"X-Ok-{i}", "v" * 500) for i in range(5))
        head, body = await peer.request("camera", "/echo", headers=fits)
        assert head.status == 200
        assert json.loads(body)["headers"].count(["X-Ok-0", "v" * 500]) == 1


async def test_streams_per_peer(tight: TunedStack) -> None:
    async with RawPeer(tight.signal_url, tight.link("camera")) as peer, \
            RawPeer(tight.signal_url, tight.link("camera")) as other:
        slow = [asyncio.create_task(peer.request("camera", "/slow?s=2")) for _ in range(2)]
        await until(lambda: peer.link.conn.open_streams == 2)  # (ordered channel: the
        # daemon sees both before the third)
        with pytest.raises(StreamResetError) as info:
            await peer.request("camera", "/")
        assert info.value.code == ErrorCode.REFUSED_STREAM
        assert info.value.reason == "too many concurrent streams (limit 2)"
        # Another peer has its own budget; the refused peer's open requests complete.
        head, body = await other.request("camera", "/")
        assert (head.status, body) == (200, b"hello from camera\n")
        for task in slow:
            head, body = await task
            assert (head.status, body) == (200, b"slow done")
        head, _ = await peer.request("camera", "/")
        assert head.status == 200


# ----- peers per device (daemon process)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunedStack]:
    yield from camera_stack(tmp_path_factory.mktemp("peers"), {"max_peers": 1})


async def test_peers_per_device_refused_cleanly(single: TunedStack) -> None:
    async with RawPeer(single.signal_url, single.link("camera")) as first:
        with pytest.raises(AuthError) as refused:
            async with RawPeer(single.signal_url, single.link("camera")):
                pass
        assert refused.value.code == "too-many-peers"
        head, body = await first.request("camera", "/")  # the served peer is unaffected
        assert (head.status, body) == (200, b"hello from camera\n")
    # Once the first viewer has gone, the device takes the next one.
    await until(lambda: re.search(r"PeerSession\(c-[0-9a-f]+ [^)]*\): closing",
                                  single.procs["daemon"].log()), timeout=30)
    async with RawPeer(single.signal_url, single.link("camera")) as second:
        head, _ = await second.request("camera", "/")
        assert head.status == 200


# ----- signaling message size and rate (signal process with a config file)


@pytest.fixture(scope="module")
def signal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("signal")
    port = free_port()
    config = tmp / "signal.toml"
    config.write_text(f"[server]\nport = {port}\n"
                      "[limits]\nmax_message_size = 2048\nrate = 1.0\nburst = 3\n")
    proc = Proc("signal", python("-m", "peerproxyd", "signal", "--config", str(config)), tmp)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}/ws"
    finally:
        proc.stop()


async def ws_receive(ws: aiohttp.ClientWebSocketResponse) -> Any:
    async with asyncio.timeout(10):
        frame = await ws.receive()
    if frame.type is WSMsgType.TEXT:
        return json.loads(frame.data)
    return frame.type


async def test_signaling_message_size_from_the_config_file(signal_server: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(signal_server) as big, http.ws_connect(signal_server) as ok:
            assert (await ws_receive(big))["type"] == "hello"
            assert (await ws_receive(ok))["type"] == "hello"
            await big.send_str(json.dumps({"type": "bye", "to": "x", "pad": "p" * 2100}))
            error = await ws_receive(big)
            assert error["code"] == "too-large"
            assert "exceeds the limit of 2048 bytes" in error["message"]
            assert await ws_receive(big) in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            assert big.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            # The other connection is served as before.
            await ok.send_str(json.dumps({"type": "bye", "to": "nobody-here"}))
            assert (await ws_receive(ok))["code"] == "device-offline"


async def test_signaling_rate_from_the_config_file(signal_server: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(signal_server) as fast, http.ws_connect(signal_server) as ok:
            await ws_receive(fast), await ws_receive(ok)
            for _ in range(4):
                await fast.send_str(json.dumps({"type": "bye", "to": "nobody-here"}))
            codes = [(await ws_receive(fast))["code"] for _ in range(4)]
            assert codes == ["device-offline"] * 3 + ["rate-limited"]
            await ok.send_str(json.dumps({"type": "bye", "to": "nobody-here"}))
            assert (await ws_receive(ok))["code"] == "device-offline"


# ----- slow readers (the daemon's ChannelLink and Router on a real aiortc connection)


@pytest.fixture
async def router() -> AsyncIterator[tuple[Router, dict[str, int]]]:
    app = build_app("camera")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    services = {"camera": ServiceSettings(upstream=f"http://127.0.0.1:{port}")}
    async with new_upstream_session() as http:
        yield Router(services, http), app[STATS]
    await runner.cleanup()


def rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def download(size: int) -> RequestHead:
    return RequestHead(method="GET", target=f"/download?size={size}", service="camera")


async def fetch(stream: ChannelStream) -> bytes:
    await asyncio.wait_for(stream.response, 20)
    chunks = []
    while chunk := await stream.read():
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
async def test_viewer_that_never_grants_window(
    router: tuple[Router, dict[str, int]], packed: bool
) -> None:
    """Four 200 MB downloads to a viewer that reads the channel but never sends WINDOW: the
    serving side sends one window per stream and stops reading the upstream; after
    stall_timeout each stream is reset and its upstream request closed. Another viewer on the
    same router downloads meanwhile."""
    rtr, stats = router
    async with PeerPair(rtr, stall_timeout=2.0, packed=packed) as slow, PeerPair(rtr) as other:
        before = rss_kib()
        streams = [slow.viewer.open_stream(download(200 * MB), end_stream=True)
                   for _ in range(4)]  # never read(): no WINDOW is ever sent
        await until(lambda: len(slow.server_streams) == 4
                    and all(s.bytes_out == INITIAL_WINDOW for s in slow.server_streams))
        got = await fetch(other.viewer.open_stream(download(5 * MB), end_stream=True))
        assert got == pattern(5 * MB)
        await asyncio.sleep(0.5)
        assert [s.bytes_out for s in slow.server_streams] == [INITIAL_WINDOW] * 4
        assert slow.server_buffered() <= HIGH_WATER
        assert rss_kib() - before < 64 * 1024  # upstreams would send 800 MB
        # stall_timeout: each stream reset with CANCEL, the upstream requests closed.
        await until(lambda: slow.viewer.conn.open_streams == 0)
        for stream in streams:
            with pytest.raises(StreamResetError) as info:
                while await stream.read():
                    pass
            assert info.value.code == ErrorCode.CANCEL
            assert info.value.reason == "stalled: no window for 2 s"
        await until(lambda: stats["aborted"] == 4 and stats["active"] == 0)
        assert not slow.server.is_closed  # the peer itself is still served
        got = await fetch(slow.viewer.open_stream(download(100_000), end_stream=True))
        assert got == pattern(100_000)


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
async def test_viewer_that_stops_reading_the_channel(
    router: tuple[Router, dict[str, int]], packed: bool
) -> None:
    """A viewer whose SCTP discards everything: writers stop at HIGH_WATER, and once the
    channel has not drained for stall_timeout the whole peer is closed."""
    rtr, stats = router
    async with PeerPair(rtr, stall_timeout=2.0, packed=packed) as pair, PeerPair(rtr) as other:
        pair.viewer_stops_reading()
        for _ in range(3):
            pair.viewer.open_stream(download(200 * MB), end_stream=True)
        peak = 0
        async with asyncio.timeout(20):
            while not pair.server.is_closed:
                peak = max(peak, pair.server_buffered())
                await asyncio.sleep(0.02)
        # At most HIGH_WATER plus one message per writer and what SCTP had in flight.
        assert peak <= HIGH_WATER + 3 * MAX_PAYLOAD + 256 * 1024, peak
        await until(lambda: stats["active"] == 0)  # upstream requests cancelled
        got = await fetch(other.viewer.open_stream(download(2 * MB), end_stream=True))
        assert got == pattern(2 * MB)


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
async def test_flood_of_replies_to_a_viewer_that_does_not_read(
    router: tuple[Router, dict[str, int]], packed: bool
) -> None:
    """Messages that need no window (here RESETs quoting a 16 KB bad method) cannot pile up:
    past max_buffered queued bytes the peer is closed."""
    rtr, _ = router
    cap = 2 * MB
    async with PeerPair(rtr, max_buffered=cap, packed=packed) as pair, PeerPair(rtr) as other:
        pair.viewer_stops_reading()
        junk = json.dumps({"method": "X " * 8000, "target": "/", "headers": [],
                           "service": "camera"}).encode()
        peak = 0
        for sid in range(1, 1000):
            if pair.server.is_closed:
                break
            pair.viewer.channel.send(bytes(Frame(sid, 0, H | E | F, junk)))
            peak = max(peak, pair.server.channel.bufferedAmount)
            await asyncio.sleep(0.002)
        assert pair.server.is_closed
        assert sid < 1000
        assert peak <= cap + 2 * MAX_PAYLOAD, peak
        got = await fetch(other.viewer.open_stream(download(MB), end_stream=True))
        assert got == pattern(MB)
