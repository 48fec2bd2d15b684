"""Packed messages (docs/protocol.md §1.1) over real parts: a real Daemon, a real upstream, a
real NativeClient and signaling server in this process, every candidate on 127.0.0.1. The
backend is the configured default ("auto": native where libdatachannel-py is installed).

What goes over the data channel is counted by wrapping each end's `channel.send`. Old peers
are the real code with packing off (NativeClient(packed=False), Daemon(packing=False)), which
is what the code before packing sent and answered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from peerproxyd.client.native import NativeClient
from peerproxyd.config import (
    DeviceSettings,
    IceSettings,
    LimitsSettings,
    ServiceSettings,
    Settings,
    SignalingSettings,
)
from peerproxyd.device.daemon import Daemon
from peerproxyd.device.peer import PeerSession
from peerproxyd.protocol import (
    HEADER_SIZE,
    Flag,
    ProxyConnection,
    RequestHead,
    ResponseHead,
    Role,
    parse_frame,
    split_message,
)
from peerproxyd.rtc.aiortc_setup import configure_ice, new_peer_connection
from peerproxyd.rtc.transport import CHANNEL_LABEL
from peerproxyd.rtc.patches import aioice_tuning
from peerproxyd.signaling.server import build_signaling_app
from peerproxyd.trust.viewer_auth import ShareLink
from peerproxyd.trust.viewers import ViewerStore
from peerproxyd.tunnel.channel import ChannelLink, ChannelStream

ICE = IceSettings(host_addresses=["127.0.0.1"], mdns=False)
KILO = bytes(i % 251 for i in range(1024))
H, E, F = Flag.HEADERS, Flag.END_HEADERS, Flag.FINAL


def upstream_app() -> web.Application:
    async def kilo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body or KILO, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_route("*", "/kb", kilo)
    return app


class Device:
    """A daemon serving `camera` from a real upstream, and the links of its viewers."""

    def __init__(self, daemon: Daemon, signal_url: str, store: ViewerStore) -> None:
        self.daemon = daemon
        self.signal_url = signal_url
        self.store = store

    def link(self, name: str) -> ShareLink:
        token = self.store.add(name, "camera", expires=None, now=datetime.now(UTC))
        port = self.signal_url.split(":")[2].split("/")[0]
        return ShareLink(scheme="http", host=f"localhost:{port}", device=self.daemon.device_id,
                         service="camera", name=name, token=token,
                         fingerprint=self.daemon.identity.fingerprint_bytes)


async def start_device(tmp_path: Path, *, packing: bool) -> AsyncIterator[Device]:
    configure_ice(ICE)
    upstream = TestServer(upstream_app(), host="127.0.0.1")
    signal = TestServer(build_signaling_app(), host="127.0.0.1")
    await upstream.start_server()
    await signal.start_server()
    settings = Settings(
        device=DeviceSettings(state_dir=tmp_path / "state"),
        signaling=SignalingSettings(
            url=f"ws://127.0.0.1:{signal.port}/ws", reconnect_min=0.1, reconnect_max=1.0
        ),
        services={"camera": ServiceSettings(upstream=f"http://127.0.0.1:{upstream.port}")},
        ice=ICE,
        limits=LimitsSettings(heartbeat_interval=30.0, heartbeat_timeout=60.0),
    )
    store = ViewerStore(tmp_path / "state")
    daemon = Daemon(settings, viewers=store, packing=packing)
    task = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(20):
            await daemon.registered.wait()
        yield Device(daemon, settings.signaling.url, store)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await signal.close()
        await upstream.close()


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[Device]:
    async for d in start_device(tmp_path, packing=True):
        yield d


@pytest.fixture
async def old_device(tmp_path: Path) -> AsyncIterator[Device]:
    async for d in start_device(tmp_path, packing=False):
        yield d


async def start_client(device: Device, name: str, *, packed: bool = True) -> tuple[
    NativeClient, asyncio.Task[None]
]:
    client = NativeClient(link=device.link(name), signal_url=device.signal_url,
                          listen=("127.0.0.1", 0), ice=ICE, connect_timeout=15,
                          heartbeat_interval=30.0, heartbeat_timeout=60.0, packed=packed)
    ready = asyncio.Event()
    task = asyncio.create_task(client.run(ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises what went wrong
    assert ready.is_set(), client.last_error
    return client, task


async def stop_client(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def record_sends(channel: Any) -> list[bytes]:
    """Every binary message `channel` sends from now on (heartbeats left out)."""
    sent: list[bytes] = []
    send: Callable[[bytes | str], None] = channel.send

    def recording(data: bytes | str) -> None:
        if isinstance(data, bytes) and not all_heartbeats(data):
            sent.append(bytes(data))
        send(data)

    channel.send = recording
    return sent


def all_heartbeats(message: bytes) -> bool:
    return len(message) % HEADER_SIZE == 0 and all(
        message[i : i + 4] == bytes(4) for i in range(0, len(message), HEADER_SIZE)
    )


def frames_of(message: bytes, packed: bool) -> list[tuple[int, Flag, int]]:
    """(stream id, flags, payload length) of each frame of a message, heartbeats left out."""
    found = [parse_frame(f) for f in (split_message(message) if packed else [message])]
    return [(f.stream_id, f.flags, len(f.payload)) for f in found if f.stream_id]


def session_of(device: Device, viewer: str) -> PeerSession:
    (session,) = [s for s in device.daemon.sessions.values()
                  if s.granted is not None and s.granted.viewer == viewer]
    return session


async def exchange(session: PeerSession, client: NativeClient, *, post: bool = False) -> tuple[
    list[bytes], list[bytes]
]:
    """One 1 KiB exchange through the tunnel: (messages the client sent, messages the daemon
    sent) for it."""
    assert client.link is not None and session.link is not None
    from_client = record_sends(client.link.channel)
    from_daemon = record_sends(session.link.channel)
    async with aiohttp.ClientSession() as http:
        if post:
            response = await http.post(f"{client.url}kb", data=KILO)
        else:
            response = await http.get(f"{client.url}kb")
        async with response:
            assert response.status == 200
            assert await response.read() == KILO
    await asyncio.sleep(0.2)  # anything sent after the response (there should be nothing)
    return from_client, from_daemon


async def test_a_1k_exchange_is_one_message_each_way(device: Device) -> None:
    client, task = await start_client(device, "new")
    try:
        assert client.granted is not None and client.granted.packed
        session = session_of(device, "new")
        assert session.granted is not None and session.granted.packed
        for post in (False, True):
            from_client, from_daemon = await exchange(session, client, post=post)
            # The request: the GET's head with FINAL; the POST's head, then (its upload task
            # runs a turn later) the body with FINAL.
            request = [frames_of(m, packed=True) for m in from_client]
            if post:
                assert [[(f[1], f[2]) for f in m] for m in request][1:] == [[(F, 1024)]]
                assert [f[1] for f in request[0]] == [H | E]
            else:
                assert [[f[1] for f in m] for m in request] == [[H | E | F]]
            # The response: head, the 1 KiB body and FINAL in one message.
            assert len(from_daemon) == 1, [m.hex() for m in from_daemon]
            response = frames_of(from_daemon[0], packed=True)
            assert [(f[1], f[2]) for f in response][1:] == [(F, 1024)]
            assert response[0][1] == H | E
    finally:
        await stop_client(task)


async def test_an_old_viewer_is_served_unpacked(device: Device) -> None:
    old, old_task = await start_client(device, "old", packed=False)
    new, new_task = await start_client(device, "new")
    try:
        assert old.granted is not None and not old.granted.packed
        assert new.granted is not None and new.granted.packed
        old_session, new_session = session_of(device, "old"), session_of(device, "new")
        assert old_session.granted is not None and not old_session.granted.packed
        from_client, from_daemon = await exchange(old_session, old)
        assert len(from_client) == 1
        # One frame a message, as before packing: the head, then the body with FINAL.
        assert [frames_of(m, packed=False) for m in from_daemon] == [
            [(1, H | E, len(from_daemon[0]) - HEADER_SIZE)], [(1, F, 1024)]
        ]
        from_client, from_daemon = await exchange(new_session, new)
        assert (len(from_client), len(from_daemon)) == (1, 1)
    finally:
        await stop_client(old_task)
        await stop_client(new_task)


async def test_a_new_viewer_with_an_old_daemon_is_unpacked(old_device: Device) -> None:
    client, task = await start_client(old_device, "new")
    try:
        assert client.granted is not None and not client.granted.packed
        from_client, from_daemon = await exchange(session_of(old_device, "new"), client,
                                                  post=True)
        # Unpacked both ways: every message is exactly one frame.
        assert [frames_of(m, packed=False)[0][1:] for m in from_client][1:] == [(F, 1024)]
        assert len(from_client) == 2
        assert [frames_of(m, packed=False)[0][1] for m in from_daemon] == [H | E, F]
    finally:
        await stop_client(task)


async def test_a_packed_message_that_ends_a_stream_early_loses_nothing() -> None:
    """Two body frames and FINAL in one message: the stream is finished in the protocol once
    the message is split, yet the link still delivers every frame's bytes to it."""
    aioice_tuning.configure(host_addresses=["127.0.0.1"])
    viewer_pc, server_pc = new_peer_connection(ICE), new_peer_connection(ICE)
    served: asyncio.Future[ChannelLink] = asyncio.get_running_loop().create_future()

    def on_request(stream: ChannelStream, head: RequestHead, end_stream: bool) -> None:
        conn = stream._link.conn  # queue the frames within this turn: one packed message
        stream.send_response(ResponseHead(status=200, headers=()))
        conn.send_body(stream.id, b"first ")
        conn.send_body(stream.id, b"second", end_stream=True)
        stream._link.flush()

    @server_pc.on("datachannel")
    def on_channel(channel: Any) -> None:
        conn = ProxyConnection(Role.SERVER, packed=True)
        served.set_result(ChannelLink(channel, conn, on_request=on_request, name="server"))

    channel = viewer_pc.createDataChannel(CHANNEL_LABEL, ordered=True)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    received: list[bytes] = []
    channel.on("message", lambda m: received.append(m) if isinstance(m, bytes) else None)
    try:
        await viewer_pc.setLocalDescription(await viewer_pc.createOffer())
        await server_pc.setRemoteDescription(viewer_pc.localDescription)
        await server_pc.setLocalDescription(await server_pc.createAnswer())
        await viewer_pc.setRemoteDescription(server_pc.localDescription)
        async with asyncio.timeout(20):
            await opened.wait()
            server = await served
        viewer = ChannelLink(channel, ProxyConnection(Role.CLIENT, packed=True), name="viewer")
        stream = viewer.open_stream(RequestHead(method="GET", target="/", service="web"),
                                    end_stream=True)
        async with asyncio.timeout(10):
            head, ended = await stream.response
            chunks = [chunk async for chunk in _chunks(stream)]
        assert (head.status, ended, b"".join(chunks)) == (200, False, b"first second")
        assert len(received) == 1  # it was one message
        assert [f.flags for f in map(parse_frame, split_message(received[0]))] == [H | E, 0, F]
        viewer.close()
        server.close()
    finally:
        await viewer_pc.close()
        await server_pc.close()


async def _chunks(stream: ChannelStream) -> AsyncIterator[bytes]:
    while chunk := await stream.read():
        yield chunk
