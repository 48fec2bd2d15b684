"""Viewer access control over real parts (docs/security.md 1.3-1.5): a real signaling server,
a real Daemon and real aiortc viewers, every candidate on 127.0.0.1.

`Viewer` speaks the auth step itself, so tests can send what a well-behaved client never
would. In every test a bystander viewer is served before and after the attack."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiortc import RTCSessionDescription

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
from peerproxyd.errors import AuthError, FingerprintError
from peerproxyd.protocol import Frame, ProxyConnection, RequestHead, Role
from peerproxyd.rtc.aiortc_setup import configure_ice, new_peer_connection
from peerproxyd.rtc.transport import CHANNEL_LABEL
from peerproxyd.signaling.client import SignalingClient
from peerproxyd.signaling.server import build_signaling_app
from peerproxyd.trust.viewer_auth import (
    Granted,
    ShareLink,
    auth_mac,
    encode_auth,
    fingerprint_from_sdp,
    parse_auth_reply,
    token_key,
)
from peerproxyd.trust.viewers import ViewerStore
from peerproxyd.tunnel.channel import ChannelLink

ICE = IceSettings(host_addresses=["127.0.0.1"], mdns=False)
STEP = 0.05


@dataclass
class Stack:
    signal_url: str
    daemon: Daemon
    store: ViewerStore
    tokens: dict[str, str]

    def share(self, name: str, service: str = "camera", *, expires: datetime | None = None) -> str:
        token = self.store.add(name, service, expires=expires, now=datetime.now(UTC))
        self.tokens[name] = token
        return token


def upstream_app() -> web.Application:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello from camera\n")

    app.router.add_get("/", hello)
    return app


async def _stack(tmp_path: Path, **limits: Any) -> AsyncIterator[Stack]:
    configure_ice(ICE)
    upstream = TestServer(upstream_app(), host="127.0.0.1")
    signal = TestServer(build_signaling_app(), host="127.0.0.1")
    await upstream.start_server()
    await signal.start_server()
    url = f"http://127.0.0.1:{upstream.port}"
    settings = Settings(
        device=DeviceSettings(state_dir=tmp_path / "state"),
        signaling=SignalingSettings(
            url=f"ws://127.0.0.1:{signal.port}/ws", reconnect_min=0.1, reconnect_max=1.0
        ),
        services={"camera": ServiceSettings(upstream=url), "ha": ServiceSettings(upstream=url)},
        ice=ICE,
        limits=LimitsSettings(heartbeat_interval=0.5, heartbeat_timeout=5.0, **limits),
    )
    store = ViewerStore(tmp_path / "state")
    daemon = Daemon(settings, viewers=store)
    task = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(20):
            await daemon.registered.wait()
        yield Stack(settings.signaling.url, daemon, store, {})
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await signal.close()
        await upstream.close()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in _stack(tmp_path, handshake_timeout=4.0):
        yield s


class Viewer:
    """One browser-like viewer: real aiortc offerer, real signaling, hand-made auth."""

    def __init__(self, signal_url: str, device: str) -> None:
        self.device = device
        self.signaling = SignalingClient(signal_url, backoff_max=1.0)
        self.texts: asyncio.Queue[str] = asyncio.Queue()
        self.binary: list[bytes] = []
        self.closed = asyncio.Event()
        self.link: ChannelLink | None = None
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> Viewer:
        self._answer = asyncio.get_running_loop().create_future()

        async def on_message(msg: Any) -> None:
            if msg.type == "answer" and not self._answer.done():
                self._answer.set_result(msg.payload)

        self._task = asyncio.create_task(self.signaling.run(on_message))
        await self.signaling.wait_connected(10)
        self.pc = new_peer_connection(ICE)
        self.channel = self.pc.createDataChannel(CHANNEL_LABEL, ordered=True)
        opened = asyncio.Event()
        self.channel.on("open", opened.set)
        self.channel.on("close", self.closed.set)
        self.channel.on("message", self._record)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.signaling.send(
            "offer", self.device, {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        )
        answer = await asyncio.wait_for(self._answer, 10)
        self.viewer_fp = fingerprint_from_sdp(self.pc.localDescription.sdp)
        self.device_fp = fingerprint_from_sdp(answer["sdp"])
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(opened.wait(), 10)
        return self

    def _record(self, message: bytes | str) -> None:
        if isinstance(message, str):
            self.texts.put_nowait(message)
        elif self.link is None:
            self.binary.append(message)

    def auth_message(self, name: str, token: str) -> str:
        return encode_auth(name, auth_mac(token_key(token), self.viewer_fp, self.device_fp))

    async def reply(self, timeout: float = 10.0) -> str:
        return await asyncio.wait_for(self.texts.get(), timeout)

    async def login(self, name: str, token: str) -> Granted:
        self.channel.send(self.auth_message(name, token))
        granted = parse_auth_reply(await self.reply())
        self.link = ChannelLink(self.channel, ProxyConnection(Role.CLIENT), name=name)
        return granted

    async def refused(self, message: str | bytes) -> AuthError:
        """Send `message`; expect auth-error and the daemon closing the connection."""
        self.channel.send(message)
        with pytest.raises(AuthError) as info:
            parse_auth_reply(await self.reply())
        await asyncio.wait_for(self.closed.wait(), 10)
        return info.value

    async def get(self, service: str = "camera", target: str = "/") -> tuple[int, bytes]:
        assert self.link is not None
        stream = self.link.open_stream(
            RequestHead(method="GET", target=target, headers=(), service=service),
            end_stream=True,
        )
        head, _ = await asyncio.wait_for(stream.response, 10)
        chunks = []
        while chunk := await asyncio.wait_for(stream.read(), 10):
            chunks.append(chunk)
        return head.status, b"".join(chunks)

    async def close(self) -> None:
        if self.link is not None:
            self.link.close()
        await self.pc.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.signaling.close()


@pytest.fixture
async def viewers(stack: Stack) -> AsyncIterator[list[Viewer]]:
    made: list[Viewer] = []
    yield made
    await asyncio.gather(*(v.close() for v in made), return_exceptions=True)


async def new_viewer(stack: Stack, viewers: list[Viewer]) -> Viewer:
    viewer = Viewer(stack.signal_url, stack.daemon.device_id)
    viewers.append(viewer)
    return await viewer.open()


async def bystander(stack: Stack, viewers: list[Viewer]) -> Viewer:
    token = stack.share("bystander")
    viewer = await new_viewer(stack, viewers)
    await viewer.login("bystander", token)
    assert await viewer.get() == (200, b"hello from camera\n")
    return viewer


async def still_served(viewer: Viewer) -> None:
    assert not viewer.closed.is_set()
    assert await viewer.get() == (200, b"hello from camera\n")


async def until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(STEP)


# ----- tests
async def test_auth_ok_serves_one_service_only(
    stack: Stack, viewers: list[Viewer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    token = stack.share("alice", expires=expires)
    alice = await new_viewer(stack, viewers)
    assert await alice.login("alice", token) == Granted(
        viewer="alice", service="camera", expires=expires
    )
    assert await alice.get() == (200, b"hello from camera\n")
    status, body = await alice.get("ha")
    assert (status, body) == (403, b"viewer alice may use service camera only, not ha\n")
    assert await alice.get() == (200, b"hello from camera\n")  # the session lives on
    access = [r.getMessage() for r in caplog.records if r.name == "peerproxyd.access"]
    assert any(line.startswith("camera GET / 200") and "peer=alice@" in line for line in access)
    assert any(line.startswith("ha GET / 403") and "peer=alice@" in line for line in access)
    assert any("alice" in r.getMessage() and "connected via" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize(
    ("name", "token", "code"),
    [
        ("alice", "wrong", "unauthorized"),
        ("nobody", None, "unauthorized"),
    ],
    ids=["wrong token", "unknown viewer"],
)
async def test_wrong_token_or_unknown_viewer(
    stack: Stack, viewers: list[Viewer], name: str, token: str | None, code: str
) -> None:
    other = await bystander(stack, viewers)
    real = stack.share("alice")
    wrong = stack.tokens["bystander"] if token == "wrong" else real
    attacker = await new_viewer(stack, viewers)
    error = await attacker.refused(attacker.auth_message(name, wrong))
    assert (error.code, error.message) == (code, "unknown viewer or wrong key")
    await still_served(other)


async def test_revoked_viewer_refused_at_once_and_live_session_closed(
    stack: Stack, viewers: list[Viewer]
) -> None:
    other = await bystander(stack, viewers)
    token = stack.share("alice")
    live = await new_viewer(stack, viewers)
    await live.login("alice", token)
    assert await live.get() == (200, b"hello from camera\n")
    stack.store.revoke("alice", now=datetime.now(UTC))
    # The daemon notices within its 1-second poll: auth-error "revoked", then it closes.
    with pytest.raises(AuthError) as info:
        parse_auth_reply(await live.reply(timeout=5))
    assert info.value.code == "revoked"
    await asyncio.wait_for(live.closed.wait(), 5)
    fresh = await new_viewer(stack, viewers)
    error = await fresh.refused(fresh.auth_message("alice", token))
    assert error.code == "revoked" and error.message.startswith("viewer alice was revoked at ")
    await still_served(other)


async def test_expired_viewer(stack: Stack, viewers: list[Viewer]) -> None:
    other = await bystander(stack, viewers)
    now = datetime.now(UTC)
    old = stack.share("old", expires=now - timedelta(seconds=1))
    viewer = await new_viewer(stack, viewers)
    error = await viewer.refused(viewer.auth_message("old", old))
    assert error.code == "expired"
    # A live session is closed when its viewer expires (here: its expiry is moved to now).
    brief = stack.share("brief", expires=now + timedelta(days=1))
    live = await new_viewer(stack, viewers)
    await live.login("brief", brief)
    assert await live.get() == (200, b"hello from camera\n")
    with stack.store.edit() as records:
        records["brief"] = replace(records["brief"], expires=datetime.now(UTC))
    with pytest.raises(AuthError) as info:
        parse_auth_reply(await live.reply(timeout=6))
    assert info.value.code == "expired"
    await asyncio.wait_for(live.closed.wait(), 5)
    await still_served(other)


async def test_shared_anew_closes_the_old_session(stack: Stack, viewers: list[Viewer]) -> None:
    token = stack.share("alice")
    live = await new_viewer(stack, viewers)
    await live.login("alice", token)
    stack.store.revoke("alice", now=datetime.now(UTC))
    stack.share("alice")  # replaces the tombstone with a new key within the same second
    await asyncio.wait_for(live.closed.wait(), 5)


async def test_replayed_auth_message_is_refused(stack: Stack, viewers: list[Viewer]) -> None:
    other = await bystander(stack, viewers)
    token = stack.share("alice")
    first = await new_viewer(stack, viewers)
    captured = first.auth_message("alice", token)
    await first.login("alice", token)
    second = await new_viewer(stack, viewers)
    error = await second.refused(captured)
    assert error.code == "unauthorized"
    await still_served(first)
    await still_served(other)


async def test_binary_before_auth_closes_without_an_answer(
    stack: Stack, viewers: list[Viewer]
) -> None:
    other = await bystander(stack, viewers)
    viewer = await new_viewer(stack, viewers)
    viewer.channel.send(bytes(Frame.heartbeat(1)))
    await asyncio.wait_for(viewer.closed.wait(), 5)
    assert viewer.texts.empty() and viewer.binary == []
    await still_served(other)


async def test_no_auth_within_handshake_timeout(stack: Stack, viewers: list[Viewer]) -> None:
    other = await bystander(stack, viewers)
    viewer = await new_viewer(stack, viewers)
    await asyncio.wait_for(viewer.closed.wait(), 20)  # handshake_timeout = 4 s
    assert viewer.texts.empty() and viewer.binary == []
    await still_served(other)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("not json", "auth message is not JSON"),
        ('{"type":"auth","v":1,"viewer":"alice","mac":"x"}', "mac must be base64url of 32 bytes"),
        ("x" * 5000, "auth message longer than 1024 bytes"),
    ],
)
async def test_malformed_auth_is_bad_auth(
    stack: Stack, viewers: list[Viewer], message: str, reason: str
) -> None:
    viewer = await new_viewer(stack, viewers)
    error = await viewer.refused(message)
    assert (error.code, error.message) == ("bad-auth", reason)


async def test_second_auth_closes(stack: Stack, viewers: list[Viewer]) -> None:
    other = await bystander(stack, viewers)
    token = stack.share("alice")
    viewer = await new_viewer(stack, viewers)
    await viewer.login("alice", token)
    viewer.channel.send(viewer.auth_message("alice", token))
    await asyncio.wait_for(viewer.closed.wait(), 5)
    await still_served(other)


async def test_too_many_peers(tmp_path: Path) -> None:
    async for stack in _stack(tmp_path, max_peers=1):
        made: list[Viewer] = []
        try:
            other = await bystander(stack, made)
            token = stack.share("alice")
            viewer = await new_viewer(stack, made)
            error = await viewer.refused(viewer.auth_message("alice", token))
            assert error.code == "too-many-peers"
            await still_served(other)
        finally:
            await asyncio.gather(*(v.close() for v in made), return_exceptions=True)


async def test_idle_viewer_is_closed(tmp_path: Path) -> None:
    async for stack in _stack(tmp_path, idle_timeout=2.0):
        made: list[Viewer] = []
        try:
            token = stack.share("alice")
            viewer = await new_viewer(stack, made)
            await viewer.login("alice", token)
            assert viewer.link is not None
            # Heartbeats flow both ways (interval 0.5 s) but are not activity.
            pings = asyncio.create_task(viewer.link.keepalive(0.5, 30))
            await asyncio.wait_for(viewer.closed.wait(), 10)
            pings.cancel()
            assert viewer.link.rtt is not None  # our heartbeats were answered meanwhile
        finally:
            await asyncio.gather(*(v.close() for v in made), return_exceptions=True)


async def fingerprint_swapping_relay(signal_url: str) -> TestServer:
    """A signaling "server" in the middle: relays every message to the real one, but writes
    another fingerprint into each answer, as a hostile operator would."""
    async def ws(request: web.Request) -> web.WebSocketResponse:
        down = web.WebSocketResponse()
        await down.prepare(request)
        async with aiohttp.ClientSession() as http, http.ws_connect(signal_url) as up:

            async def upward() -> None:
                async for msg in down:
                    await up.send_str(msg.data)
                await up.close()

            task = asyncio.create_task(upward())
            async for msg in up:
                data = json.loads(msg.data)
                if data.get("type") == "answer":
                    data["payload"]["sdp"] = re.sub(
                        r"(a=fingerprint:sha-256 )[0-9A-F:]+", r"\g<1>" + ":".join(["AB"] * 32),
                        data["payload"]["sdp"],
                    )
                await down.send_str(json.dumps(data))
            task.cancel()
        return down

    app = web.Application()
    app.router.add_get("/ws", ws)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def native_link(stack: Stack, name: str) -> ShareLink:
    port = stack.signal_url.split(":")[2].split("/")[0]
    return ShareLink(scheme="http", host=f"localhost:{port}", device=stack.daemon.device_id,
                     service="camera", name=name, token=stack.tokens[name],
                     fingerprint=stack.daemon.identity.fingerprint_bytes)


async def start_native(link: ShareLink, signal_url: str | None = None) -> tuple[
    NativeClient, asyncio.Task[None]
]:
    client = NativeClient(link=link, signal_url=signal_url, listen=("127.0.0.1", 0), ice=ICE,
                          connect_timeout=10)
    ready = asyncio.Event()
    task = asyncio.create_task(client.run(ready))
    await asyncio.wait([task, asyncio.create_task(ready.wait())], timeout=20,
                       return_when=asyncio.FIRST_COMPLETED)
    return client, task


async def test_native_client_pins_authenticates_and_is_revoked(
    stack: Stack, viewers: list[Viewer]
) -> None:
    other = await bystander(stack, viewers)
    stack.share("alice")
    link = native_link(stack, "alice")
    assert link.signal_url == stack.signal_url.replace("127.0.0.1", "localhost")
    client, task = await start_native(link)  # the signaling URL comes from the link
    assert client.granted is not None and client.granted.viewer == "alice"
    async with aiohttp.ClientSession() as http, http.get(client.url) as r:
        assert (r.status, await r.text()) == (200, "hello from camera\n")
    stack.store.revoke("alice", now=datetime.now(UTC))
    with pytest.raises(AuthError) as info:
        await asyncio.wait_for(task, 10)  # revoked: no reconnecting
    assert info.value.code == "revoked"
    await still_served(other)


@pytest.mark.parametrize("state", ["unknown", "expired"])
async def test_native_client_gives_up_on_a_dead_link(stack: Stack, state: str) -> None:
    stack.share("alice", expires=datetime.now(UTC) - timedelta(minutes=1))
    link = native_link(stack, "alice")
    if state == "unknown":
        link = ShareLink(**{**link.__dict__, "name": "mallory"})
    client, task = await start_native(link)
    with pytest.raises(AuthError) as info:
        await asyncio.wait_for(task, 10)
    assert info.value.code == {"unknown": "unauthorized", "expired": "expired"}[state]
    assert client.connections == 0


async def test_native_client_refuses_a_swapped_fingerprint(
    stack: Stack, viewers: list[Viewer]
) -> None:
    other = await bystander(stack, viewers)
    stack.share("alice")
    relay = await fingerprint_swapping_relay(stack.signal_url)
    try:
        client, task = await start_native(
            native_link(stack, "alice"), f"ws://127.0.0.1:{relay.port}/ws"
        )
        with pytest.raises(FingerprintError, match="does not match the link"):
            await asyncio.wait_for(task, 10)
        assert client.connections == 0
    finally:
        await relay.close()
    await still_served(other)
