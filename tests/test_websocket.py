"""WebSockets over streams, end to end: a real aiohttp WebSocket client -> `peerproxyd connect`
-> WebRTC -> `peerproxyd serve` -> a real aiohttp upstream WebSocket (tests/support/upstream_app.py
/ws); all real processes, every ICE candidate on 127.0.0.1. Plus a raw viewer that sends what a
well-behaved client never would."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest

from peerproxyd.protocol import ErrorCode, Flag, Frame, RequestHead
from peerproxyd.protocol.websocket import Close, Text, encode
from peerproxyd.tunnel.channel import ChannelStream
from tests.support.procs import Proc, free_port
from tests.support.rawpeer import RawPeer
from tests.support.stack import Stack
from tests.support.upstream_app import pattern

MB = 1024 * 1024


@dataclass
class Net:
    signal_url: str
    device: str
    camera: str  # native client for service "camera"
    down: str  # native client for service "down" (nothing listens upstream)
    upstream: str
    daemon: Proc
    link: Callable[[str], str]  # a new viewer of a service: its share link


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):
    stack = Stack(tmp_path_factory.mktemp("ws"))
    try:
        upstream = stack.upstream("camera")
        stack.signal()
        daemon = stack.daemon({"camera": stack.upstream_ports["camera"], "down": free_port()})
        _, camera = stack.client("camera")
        _, down = stack.client("down")
        yield Net(stack.signal_url, stack.device, camera, down, upstream, daemon, stack.link)
    finally:
        stack.stop()


def ws_url(base: str, path: str = "/ws") -> str:
    return base.replace("http://", "ws://") + path


async def upstream_closes(http: aiohttp.ClientSession, net: Net) -> list[list[object]]:
    async with http.get(f"{net.upstream}/stats") as r:
        return (await r.json())["ws_closes"]


async def wait_for_upstream_close(
    http: aiohttp.ClientSession, net: Net, since: int, close: list[object]
) -> None:
    """Wait (bounded) until the upstream recorded `close` after its first `since` closes
    (an earlier test's close may still be arriving, so others may come first)."""
    for _ in range(100):
        if close in (await upstream_closes(http, net))[since:]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"upstream never saw {close}: {await upstream_closes(http, net)}")


async def test_text_binary_subprotocol_and_headers(net: Net, http: aiohttp.ClientSession):
    async with http.ws_connect(
        ws_url(net.camera, "/ws?x=1&y=%20"), protocols=["nope", "superchat"],
        headers={"Origin": "http://app.example", "Cookie": "session=abc"},
    ) as ws:
        assert ws.protocol == "superchat"
        await ws.send_str("hello ✓")
        assert (await ws.receive(timeout=10)).data == "hello ✓"
        await ws.send_bytes(b"\x00\xff" * 10)
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\x00\xff" * 10)
        await ws.send_str("headers")
        seen = json.loads((await ws.receive(timeout=10)).data)
    assert seen["path"] == "/ws?x=1&y=%20"
    assert seen["protocol"] == "superchat"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["origin"] == "http://app.example"
    assert headers["cookie"] == "session=abc"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == net.camera.removeprefix("http://")
    assert headers["sec-websocket-protocol"] == "nope,superchat"
    assert headers["host"] == net.camera.removeprefix("http://")  # the viewer's
    log = net.daemon.wait_for_log(r"camera WS /ws\?x=1&y=%20 101 \d+B [\d.]+ms code=1000")
    assert log


async def test_order_and_large_messages_both_ways(net: Net, http: aiohttp.ClientSession):
    big = pattern(5 * MB)
    text = "é" * (3 * MB // 2)  # 3 MiB of UTF-8
    async with http.ws_connect(ws_url(net.camera), max_msg_size=32 * MB) as ws:
        for i in range(300):
            if i % 2:
                await ws.send_bytes(i.to_bytes(2, "big") * (i * 50))
            else:
                await ws.send_str(f"message {i}")
        for i in range(300):
            msg = await ws.receive(timeout=30)
            assert msg.data == (i.to_bytes(2, "big") * (i * 50) if i % 2 else f"message {i}")
        await ws.send_bytes(big)
        assert (await ws.receive(timeout=60)).data == big
        await ws.send_str(text)
        assert (await ws.receive(timeout=60)).data == text


async def test_a_fast_upstream_is_paced_by_the_viewer_and_nothing_is_lost(
    net: Net, http: aiohttp.ClientSession
):
    async with http.ws_connect(ws_url(net.camera), max_msg_size=32 * MB) as ws:
        await ws.send_str("flood 160 65536")  # 10 MiB, ten times the stream window
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        for i in range(160):
            msg = await ws.receive(timeout=30)
            assert msg.data == pattern(65536)[:-1] + bytes([i % 256])


async def test_close_from_the_client_reaches_the_upstream(net: Net, http: aiohttp.ClientSession):
    before = len(await upstream_closes(http, net))
    ws = await http.ws_connect(ws_url(net.camera))
    await ws.send_str("ping")
    assert (await ws.receive(timeout=10)).data == "ping"
    await ws.close(code=4000, message=b"bye")
    assert ws.close_code == 1000  # aiohttp's server answers a close with 1000
    await wait_for_upstream_close(http, net, before, [4000, "bye"])


async def test_close_from_the_upstream_reaches_the_client(net: Net, http: aiohttp.ClientSession):
    async with http.ws_connect(ws_url(net.camera)) as ws:
        await ws.send_str("close 4001 server bye")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4001, "server bye")
    net.daemon.wait_for_log(r"camera WS /ws 101 \d+B [\d.]+ms code=4001")


async def test_upstream_dropping_the_connection_is_abnormal_for_the_client(
    net: Net, http: aiohttp.ClientSession
):
    async with http.ws_connect(ws_url(net.camera)) as ws:
        await ws.send_str("drop")
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.close_code == 1006


async def test_upstream_down_or_refusing_fails_the_handshake(net: Net, http: aiohttp.ClientSession):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(ws_url(net.down))
    assert info.value.status == 502
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(ws_url(net.camera, "/ws/refuse"))
    assert info.value.status == 403
    async with http.get(ws_url(net.camera, "/ws/refuse").replace("ws://", "http://"), headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }) as r:
        assert (r.status, await r.text()) == (403, "upstream camera refused the websocket: 403 "
                                              "Invalid response status\n")
    net.daemon.wait_for_log(r"down WS /ws 502 ")
    # The daemon kept serving.
    async with http.ws_connect(ws_url(net.camera)) as ws:
        await ws.send_str("still here")
        assert (await ws.receive(timeout=10)).data == "still here"


async def test_an_upstream_message_over_the_limit_closes_with_1009(
    net: Net, http: aiohttp.ClientSession
):
    async with http.ws_connect(ws_url(net.camera), max_msg_size=0) as ws:
        await ws.send_str(f"flood 1 {16 * MB + 1}")
        msg = await ws.receive(timeout=30)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
    net.daemon.wait_for_log(r"camera WS /ws 101 \d+B [\d.]+ms code=1009")


async def test_bad_records_reset_only_their_stream(net: Net, http: aiohttp.ClientSession):
    before = len(await upstream_closes(http, net))
    head = RequestHead(method="GET", target="/ws", service="camera", websocket=True)
    async with RawPeer(net.signal_url, net.link("camera")) as peer:

        async def opened() -> ChannelStream:
            stream = peer.link.open_stream(head)
            response, ended = await asyncio.wait_for(stream.response, 10)
            assert (response.status, ended) == (101, False)
            assert response.get("sec-websocket-protocol") is None
            return stream

        async def reset_of(stream: ChannelStream) -> tuple[int, str]:
            frame = await peer.wait_for_frame(
                lambda f: f.stream_id == stream.id and f.flags & Flag.RESET)
            return frame.reset_fields()

        stream = await opened()
        await stream.write(encode(Text("hi")))
        assert await asyncio.wait_for(stream.read(), 10) == encode(Text("hi"))
        await stream.write(b"\x07\x00\x00\x00\x00")
        assert await reset_of(stream) == (
            ErrorCode.PROTOCOL_ERROR, "unknown websocket record type 0x07")
        # A record over the limit is refused on its 5-byte prefix.
        stream = await opened()
        await stream.write(b"\x02\x01\x00\x00\x01")
        assert await reset_of(stream) == (
            ErrorCode.PROTOCOL_ERROR, "websocket message of 16777217 bytes exceeds 16777216")
        # A clean close still works on the same connection.
        stream = await opened()
        await stream.write(encode(Close(4002, "raw bye")), end=True)
        assert await asyncio.wait_for(stream.read(), 10) == encode(Close(1000))
        assert await asyncio.wait_for(stream.read(), 10) == b""
        # A websocket head that ends the request is reset by the protocol itself.
        peer.send_raw(bytes(Frame(99, 0, Flag.HEADERS | Flag.END_HEADERS | Flag.FINAL,
                                  head.encode())))
        frame = await peer.wait_for_frame(lambda f: f.stream_id == 99 and f.flags & Flag.RESET)
        assert frame.reset_fields() == (
            ErrorCode.PROTOCOL_ERROR, "a websocket stream must not end its request with the head")
    # The broken streams' upstreams were closed as "going away", the clean one with its code.
    await wait_for_upstream_close(http, net, before, [4002, "raw bye"])
    for _ in range(100):
        if (await upstream_closes(http, net))[before:].count([1001, ""]) == 2:
            break
        await asyncio.sleep(0.05)
    assert (await upstream_closes(http, net))[before:].count([1001, ""]) == 2


@pytest.mark.parametrize(("target", "reason"), [
    ("/ws/../admin", b"segment"), ("/ws/%2e%2e/admin", b"segment"),
    ("/ws\\..\\admin", b"backslash"),
])
async def test_a_websocket_target_cannot_leave_the_service(net: Net, target: str, reason: bytes):
    """The upgrade gets the proxy policy of every request: refused with 400, never sent."""
    head = RequestHead(method="GET", target=target, service="camera", websocket=True)
    async with RawPeer(net.signal_url, net.link("camera")) as peer:
        stream = peer.link.open_stream(head)
        response, _ = await asyncio.wait_for(stream.response, 10)
        body = b""
        while chunk := await asyncio.wait_for(stream.read(), 10):
            body += chunk
    assert response.status == 400 and reason in body, (response, body)
    net.daemon.wait_for_log(rf"camera WS {re.escape(target)} 400 ")


async def test_a_stopping_daemon_closes_open_websockets_with_1001(tmp_path):
    """SIGTERM: an open WebSocket must not hold the drain until its timeout; both its ends
    get 1001 (Going Away) and the daemon exits long before drain_timeout."""
    stack = Stack(tmp_path)
    stack.extra_config = "[daemon]\ndrain_timeout = 60\n"
    try:
        upstream = stack.upstream("camera")
        stack.signal()
        daemon = stack.daemon({"camera": stack.upstream_ports["camera"]})
        _, camera = stack.client("camera")
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(ws_url(camera)) as ws:
                await ws.send_str("ping")
                assert (await ws.receive(timeout=10)).data == "ping"
                daemon.popen.send_signal(signal.SIGTERM)
                msg = await ws.receive(timeout=30)
                assert (msg.type, msg.data, msg.extra) == (
                    aiohttp.WSMsgType.CLOSE, 1001, "device is shutting down")
            # The upstream records the close when its handshake completes: a moment later.
            closes: list[object] = []
            for _ in range(200):
                async with http.get(f"{upstream}/stats") as r:
                    closes = (await r.json())["ws_closes"]
                if closes:
                    break
                await asyncio.sleep(0.05)
            assert [1001, "device is shutting down"] in closes
        assert await asyncio.to_thread(daemon.popen.wait, 30) == 0
        log = daemon.log()
        assert "drained: no open requests left" in log
        assert re.search(r"camera WS /ws 101 \d+B [\d.]+ms code=1001", log)
    finally:
        stack.stop()
