"""Signaling: the sans-IO wire format, the server over real sockets, and SignalingClient."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from peerproxyd.device_auth import DeviceAuthenticator, SecretBinding
from peerproxyd.errors import SignalingError
from peerproxyd.signaling import SignalingClient
from peerproxyd.signaling_messages import (
    MESSAGE_TYPES,
    Message,
    TokenBucket,
    check_inbound,
    encode,
    parse_message,
    valid_device_id,
)
from peerproxyd.signaling_server import REGISTRY, build_signaling_app

WAIT = 5.0
HELLO_ID = re.compile(r"c-[0-9a-f]{16}")
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
ServerFactory = Callable[..., Awaitable[TestServer]]


def make_app(**kwargs: Any) -> web.Application:
    kwargs.setdefault("authenticator", SecretBinding(cost=2**10))
    return build_signaling_app(**kwargs)


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        frame = await ws.receive()
    assert frame.type is WSMsgType.TEXT, frame
    data: dict[str, Any] = json.loads(frame.data)
    return data


async def send(ws: aiohttp.ClientWebSocketResponse, **data: Any) -> None:
    await ws.send_str(json.dumps(data))


async def connect(client: TestClient[Any, Any]) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    ws = await client.ws_connect("/ws")
    hello = await recv(ws)
    assert hello["type"] == "hello"
    assert HELLO_ID.fullmatch(hello["id"])
    return ws, hello["id"]


async def register(
    client: TestClient[Any, Any], device: str = "camera-pi", secret: str = "s3cret"
) -> aiohttp.ClientWebSocketResponse:
    ws, _ = await connect(client)
    await send(ws, type="register", device=device, secret=secret)
    assert await recv(ws) == {"type": "registered", "device": device}
    return ws


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    async with asyncio.timeout(WAIT):
        while True:
            frame = await ws.receive()
            if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return ws.close_code


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app())


# --- sans-IO: parse_message, encode, check_inbound, device ids, TokenBucket, SecretBinding


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ("x" * 101, "too-large", "message of 101 bytes exceeds the limit of 100 bytes"),
        ('"' + "é" * 50 + '"', "too-large", "message of 102 bytes exceeds the limit of 100 bytes"),
        ("{", "bad-message",
         "message is not valid JSON: Expecting property name enclosed in double quotes "
         "at position 1"),
        ("", "bad-message", "message is not valid JSON: Expecting value at position 0"),
        ('{"type": NaN}', "bad-message", "message is not valid JSON: NaN is not allowed"),
        ("[1]", "bad-message", "message is not a JSON object"),
        ("{}", "bad-message", "message needs a 'type' string"),
        ('{"type": 1}', "bad-message", "message needs a 'type' string"),
        ('{"type": "nope"}', "bad-message", "unknown message type 'nope'"),
        ('{"type": "' + "z" * 60 + '"}', "bad-message",
         "unknown message type '" + "z" * 40 + "...'"),
        ('{"type": "offer", "to": 5}', "bad-message", "'to' must be a string"),
        ('{"type": "offer", "from": []}', "bad-message", "'from' must be a string"),
        ('{"type": "offer", "payload": "sdp"}', "bad-message", "'payload' must be an object"),
        ('{"type": "register", "device": "a"}', "bad-message",
         "register message needs a non-empty 'secret' string"),
        ('{"type": "register", "device": "", "secret": "x"}', "bad-message",
         "register message needs a non-empty 'device' string"),
        ('{"type": "error", "code": "x"}', "bad-message",
         "error message needs a non-empty 'message' string"),
        ('{"type": "hello"}', "bad-message", "hello message needs a non-empty 'id' string"),
    ],
)
def test_parse_message_errors(text: str, code: str, message: str) -> None:
    with pytest.raises(SignalingError) as info:
        parse_message(text, 100)
    assert (info.value.code, info.value.message) == (code, message)
    assert str(info.value) == f"{code}: {message}"


def test_parse_message_deep_nesting() -> None:
    with pytest.raises(SignalingError, match="bad-message: message is nested too deeply"):
        parse_message("[" * 50_000 + "]" * 50_000, 200_000)


def test_parse_and_encode_round_trip() -> None:
    text = '{"type":"offer","to":"camera-pi","from":"c-0123456789abcdef","payload":{"sdp":"v=0"}}'
    msg = parse_message(text, 1000)
    assert msg == Message(
        type="offer", to="camera-pi", from_="c-0123456789abcdef", payload={"sdp": "v=0"}
    )
    assert encode(msg) == text
    error = parse_message('{"type":"error","code":"device-offline","message":"m","ref":"offer"}')
    assert error.get("code") == "device-offline"
    assert error.get("ref") == "offer"
    assert encode(error) == '{"type":"error","code":"device-offline","message":"m","ref":"offer"}'
    assert encode(Message(type="bye", from_="x")) == '{"type":"bye","from":"x"}'
    assert MESSAGE_TYPES >= {"hello", "register", "registered", "offer", "answer",
                             "candidate", "bye", "error"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "hello", "id": "x"}', "message type 'hello' cannot be sent to the server"),
        ('{"type": "offer", "payload": {}}', "offer message needs a non-empty 'to' string"),
        ('{"type": "answer", "to": "a"}', "answer message needs a 'payload' object"),
    ],
)
def test_check_inbound(text: str, message: str) -> None:
    with pytest.raises(SignalingError) as info:
        check_inbound(parse_message(text))
    assert (info.value.code, info.value.message) == ("bad-message", message)


def test_check_inbound_accepts_bye_without_payload() -> None:
    check_inbound(parse_message('{"type": "bye", "to": "camera-pi"}'))


@pytest.mark.parametrize(
    ("device_id", "valid"),
    [
        ("camera-pi", True),
        ("a", True),
        ("0", True),
        ("a" * 40, True),
        ("a" * 41, False),
        ("", False),
        ("Camera", False),
        ("camera_pi", False),
        ("-camera", False),
        ("camera-", False),
        ("camera\n", False),
        ("c-0123456789abcdef", False),  # looks like a hello id
        ("c-3po", True),
    ],
)
def test_valid_device_id(device_id: str, valid: bool) -> None:
    assert valid_device_id(device_id) is valid


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.allow(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(10.25) is False  # half a token
    assert bucket.allow(10.5) is True
    assert bucket.allow(10.5) is False


def test_token_bucket_caps_at_burst_and_ignores_clock_going_back() -> None:
    bucket = TokenBucket(rate=100.0, burst=2)
    assert bucket.allow(0.0)
    assert [bucket.allow(1000.0) for _ in range(3)] == [True, True, False]
    assert bucket.allow(999.0) is False
    assert bucket.allow(1000.02) is True
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=1)


def test_secret_binding() -> None:
    auth: DeviceAuthenticator = SecretBinding(cost=2**10, max_bindings=2)
    assert auth.verify("camera-pi", {"secret": "one"})
    assert auth.verify("camera-pi", {"secret": "one"})
    assert not auth.verify("camera-pi", {"secret": "two"})
    assert not auth.verify("camera-pi", {})
    assert not auth.verify("other", {"secret": ""})
    assert auth.verify("other", {"secret": "two"})
    assert not auth.verify("third", {"secret": "x"})  # max_bindings reached
    assert isinstance(auth, SecretBinding)
    assert b"one" not in b"".join(salt + digest for salt, digest in auth._bindings.values())
    auth.forget("camera-pi")
    assert auth.verify("camera-pi", {"secret": "two"})


# --- the server, over real sockets


async def test_register_and_relay_with_unforgeable_from(client: TestClient[Any, Any]) -> None:
    device = await register(client)
    peer, peer_id = await connect(client)
    await send(peer, type="offer", to="camera-pi", **{"from": "camera-pi"},
               payload={"sdp": "v=0 offer"})
    assert await recv(device) == {
        "type": "offer", "to": "camera-pi", "from": peer_id, "payload": {"sdp": "v=0 offer"},
    }
    await send(device, type="answer", to=peer_id, **{"from": "c-0000000000000000"},
               payload={"sdp": "v=0 answer"}, extra="dropped")
    assert await recv(peer) == {
        "type": "answer", "to": peer_id, "from": "camera-pi", "payload": {"sdp": "v=0 answer"},
    }
    await send(peer, type="candidate", to="camera-pi", payload={"candidate": None})
    assert (await recv(device))["payload"] == {"candidate": None}


async def test_offline_recipients(client: TestClient[Any, Any]) -> None:
    peer, _ = await connect(client)
    await send(peer, type="offer", to="camera-pi", payload={})
    assert await recv(peer) == {
        "type": "error", "code": "device-offline", "message": "device camera-pi is not online",
        "ref": "offer", "to": "camera-pi",
    }
    await send(peer, type="answer", to="c-0123456789abcdef", payload={})
    assert await recv(peer) == {
        "type": "error", "code": "peer-offline", "message": "peer c-0123456789abcdef is not online",
        "ref": "answer", "to": "c-0123456789abcdef",
    }


async def test_wrong_secret_cannot_hijack(client: TestClient[Any, Any]) -> None:
    device = await register(client, secret="right")
    thief, _ = await connect(client)
    await send(thief, type="register", device="camera-pi", secret="wrong")
    reply = await recv(thief)
    assert reply["code"] == "unauthorized"
    assert reply["message"] == "device id camera-pi is registered with another secret"
    peer, peer_id = await connect(client)
    await send(peer, type="offer", to="camera-pi", payload={"n": 1})
    assert (await recv(device))["from"] == peer_id
    assert not thief.closed


async def test_right_secret_takes_over(client: TestClient[Any, Any]) -> None:
    old = await register(client)
    peer, peer_id = await connect(client)
    await send(peer, type="offer", to="camera-pi", payload={"n": 1})
    assert (await recv(old))["type"] == "offer"
    new = await register(client)
    replaced = await recv(old)
    assert replaced["type"] == "error" and replaced["code"] == "replaced"
    assert await closed_with(old) == WSCloseCode.OK
    # the old device's sessions are over, and the peer hears it before anything else
    assert await recv(peer) == {"type": "bye", "from": "camera-pi"}
    await send(peer, type="offer", to="camera-pi", payload={"n": 2})
    assert await recv(new) == {
        "type": "offer", "to": "camera-pi", "from": peer_id, "payload": {"n": 2},
    }


async def test_bye_to_partners_on_disconnect(client: TestClient[Any, Any]) -> None:
    device = await register(client)
    peer, peer_id = await connect(client)
    bystander, _ = await connect(client)
    await send(peer, type="offer", to="camera-pi", payload={})
    await recv(device)
    await peer.close()
    assert await recv(device) == {"type": "bye", "from": peer_id}
    other, other_id = await connect(client)
    await send(other, type="offer", to="camera-pi", payload={})
    await recv(device)
    await device.close()
    assert await recv(other) == {"type": "bye", "from": "camera-pi"}
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await bystander.receive()


async def test_too_large_closes_with_1009(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(max_message_size=1024))
    peer, _ = await connect(client)
    text = json.dumps({"type": "offer", "to": "camera-pi", "payload": {"sdp": ""}})
    await peer.send_str(text[:-2] + "x" * (1025 - len(text)) + text[-2:])
    assert await recv(peer) == {
        "type": "error", "code": "too-large",
        "message": "message of 1025 bytes exceeds the limit of 1024 bytes",
    }
    assert await closed_with(peer) == WSCloseCode.MESSAGE_TOO_BIG


async def test_rate_limit(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(rate=0.5, burst=3))
    peer, _ = await connect(client)
    for _ in range(4):
        await send(peer, type="bye", to="camera-pi")
    codes = [(await recv(peer))["code"] for _ in range(4)]
    assert codes == ["device-offline"] * 3 + ["rate-limited"]
    assert not peer.closed


async def test_persistent_abuse_closes_with_1008(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(rate=0.5, burst=1))
    peer, _ = await connect(client)
    for _ in range(60):
        await send(peer, type="bye", to="camera-pi")
    assert await closed_with(peer) == WSCloseCode.POLICY_VIOLATION


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[]",
        '{"type": "nope"}',
        '{"type": "offer", "payload": {}}',
        '{"type": "offer", "to": 7, "payload": {}}',
        '{"type": "register", "device": "camera-pi"}',
        '{"type": "registered", "device": "camera-pi"}',
    ],
)
async def test_bad_messages_keep_the_connection(client: TestClient[Any, Any], frame: str) -> None:
    ws, _ = await connect(client)
    await ws.send_str(frame)
    reply = await recv(ws)
    assert reply["type"] == "error" and reply["code"] == "bad-message", reply
    await send(ws, type="register", device="camera-pi", secret="s")
    assert await recv(ws) == {"type": "registered", "device": "camera-pi"}


async def test_binary_frames_are_bad_messages(client: TestClient[Any, Any]) -> None:
    ws, _ = await connect(client)
    await ws.send_bytes(b"{}")
    assert await recv(ws) == {
        "type": "error", "code": "bad-message", "message": "binary frames are not supported",
    }


@pytest.mark.parametrize("device", ["Camera", "a" * 41, "-x", "c-0123456789abcdef"])
async def test_invalid_device_id(client: TestClient[Any, Any], device: str) -> None:
    ws, _ = await connect(client)
    await send(ws, type="register", device=device, secret="s")
    reply = await recv(ws)
    assert reply["code"] == "invalid-device-id"
    assert reply["message"].startswith(f"device id {device!r} is not a DNS label")


async def test_one_device_id_per_connection(client: TestClient[Any, Any]) -> None:
    ws = await register(client, "one")
    await send(ws, type="register", device="one", secret="s3cret")
    assert await recv(ws) == {"type": "registered", "device": "one"}
    await send(ws, type="register", device="two", secret="s3cret")
    reply = await recv(ws)
    assert reply["code"] == "bad-message"
    assert reply["message"] == "this connection is registered as device one"


async def test_healthz_counts(client: TestClient[Any, Any]) -> None:
    async def health() -> Any:
        resp = await client.get("/healthz")
        assert resp.status == 200
        return await resp.json()

    assert await health() == {"status": "ok", "devices": 0, "peers": 0}
    device = await register(client)
    await connect(client)
    await connect(client)
    assert await health() == {"status": "ok", "devices": 1, "peers": 2}
    await device.close()
    async with asyncio.timeout(WAIT):
        while (await health())["devices"]:
            await asyncio.sleep(0.01)


async def test_without_a_webclient_only_signaling_is_served(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """The browser client's routes live in peerproxyd/web.py (tests/test_browser_web.py)."""
    empty = await aiohttp_client(make_app(webclient_dir=tmp_path / "nope"))
    assert (await empty.get("/")).status == 404
    assert (await empty.get("/healthz")).status == 200


async def test_shutdown_closes_sockets(aiohttp_server: ServerFactory) -> None:
    server = await aiohttp_server(make_app())
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.make_url("/ws"))
        await recv(ws)
        await server.close()
        assert await closed_with(ws) == WSCloseCode.GOING_AWAY


# --- SignalingClient against a real server


class Recorder:
    """Collects what a SignalingClient delivers."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.states: asyncio.Queue[bool] = asyncio.Queue()

    async def on_message(self, msg: Message) -> None:
        await self.messages.put(msg)

    def on_state(self, connected: bool) -> None:
        self.states.put_nowait(connected)

    async def next(self) -> Message:
        async with asyncio.timeout(WAIT):
            return await self.messages.get()

    async def wait_state(self, wanted: bool) -> None:
        async with asyncio.timeout(WAIT):
            while await self.states.get() is not wanted:
                pass


@pytest.fixture
async def running() -> AsyncIterator[Callable[[SignalingClient, Recorder], asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []

    def start(sc: SignalingClient, rec: Recorder) -> asyncio.Task[None]:
        task = asyncio.create_task(sc.run(rec.on_message, rec.on_state))
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def fast(url: Any, **kwargs: Any) -> SignalingClient:
    return SignalingClient(str(url), backoff_min=0.02, backoff_max=0.1, **kwargs)


async def test_client_relay_and_reconnect_after_server_restart(
    aiohttp_server: ServerFactory, running: Any
) -> None:
    server = await aiohttp_server(make_app())
    port = server.port
    url = server.make_url("/ws")
    device, device_rec = fast(url, device_id="camera-pi", secret="s3cret"), Recorder()
    browser, browser_rec = fast(url), Recorder()
    running(device, device_rec)
    running(browser, browser_rec)
    await device.wait_connected(WAIT)
    await browser.wait_connected(WAIT)
    assert device.id == "camera-pi" and device.connected
    assert browser.id is not None and HELLO_ID.fullmatch(browser.id)

    await browser.send("offer", "camera-pi", {"sdp": "v=0"})
    offer = await device_rec.next()
    assert (offer.type, offer.from_, offer.payload) == ("offer", browser.id, {"sdp": "v=0"})
    await device.send("answer", browser.id, {"sdp": "v=0 answer"})
    answer = await browser_rec.next()
    assert (answer.type, answer.from_) == ("answer", "camera-pi")

    await server.close()
    await device_rec.wait_state(False)
    await browser_rec.wait_state(False)
    assert not device.connected
    with pytest.raises(SignalingError) as info:
        await device.send("bye", "x")
    assert info.value.code == "not-connected"

    restarted = await aiohttp_server(make_app(), port=port)
    assert restarted.port == port
    await device_rec.wait_state(True)
    await browser_rec.wait_state(True)
    await browser.send("offer", "camera-pi", {"sdp": "again"})
    offer = await device_rec.next()
    assert (offer.from_, offer.payload) == (browser.id, {"sdp": "again"})
    assert device.last_error is not None


async def test_client_delivers_errors_and_survives_handler_exceptions(
    aiohttp_server: ServerFactory, running: Any
) -> None:
    server = await aiohttp_server(make_app())
    browser, rec = fast(server.make_url("/ws")), Recorder()
    calls = 0
    original = rec.on_message

    async def flaky(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await original(msg)

    rec.on_message = flaky  # type: ignore[method-assign]
    running(browser, rec)
    await browser.wait_connected(WAIT)
    await browser.send("offer", "nobody", {})
    await browser.send("offer", "camera-pi", {})
    error = await rec.next()
    assert (error.type, error.get("code"), error.to) == ("error", "device-offline", "camera-pi")
    assert browser.connected


async def test_client_wrong_secret_raises(aiohttp_server: ServerFactory, running: Any) -> None:
    server = await aiohttp_server(make_app())
    url = server.make_url("/ws")
    owner, owner_rec = fast(url, device_id="camera-pi", secret="right"), Recorder()
    running(owner, owner_rec)
    await owner.wait_connected(WAIT)

    thief, thief_rec = fast(url, device_id="camera-pi", secret="wrong"), Recorder()
    with pytest.raises(SignalingError) as info:
        async with asyncio.timeout(WAIT):
            await thief.run(thief_rec.on_message, thief_rec.on_state)
    assert info.value.code == "unauthorized"
    assert thief.last_error == "unauthorized: device id camera-pi is registered with another secret"
    assert not thief.connected

    bad = fast(url, device_id="Bad_Id", secret="x")
    with pytest.raises(SignalingError) as info:
        async with asyncio.timeout(WAIT):
            await bad.run(thief_rec.on_message)
    assert info.value.code == "invalid-device-id"
    assert owner.connected


async def test_client_replaced_reconnects(aiohttp_server: ServerFactory, running: Any) -> None:
    server = await aiohttp_server(make_app())
    url = server.make_url("/ws")
    first, first_rec = fast(url, device_id="camera-pi", secret="s"), Recorder()
    running(first, first_rec)
    await first_rec.wait_state(True)
    second, second_rec = fast(url, device_id="camera-pi", secret="s"), Recorder()
    running(second, second_rec)
    await second_rec.wait_state(True)
    await first_rec.wait_state(False)  # replaced; it will take the id back after a backoff
    await first_rec.wait_state(True)


async def test_client_cancel_and_close(aiohttp_server: ServerFactory, running: Any) -> None:
    server = await aiohttp_server(make_app())
    registry = server.app[REGISTRY]
    url = server.make_url("/ws")
    device, rec = fast(url, device_id="camera-pi", secret="s"), Recorder()
    task = running(device, rec)
    await device.wait_connected(WAIT)
    assert set(registry.devices) == {"camera-pi"}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not device.connected
    async with asyncio.timeout(WAIT):
        while registry.connections:
            await asyncio.sleep(0.01)

    browser, rec = fast(url), Recorder()
    task = running(browser, rec)
    await browser.wait_connected(WAIT)
    await browser.close()
    async with asyncio.timeout(WAIT):
        await task  # run() returns after close()
    assert not browser.connected
    with pytest.raises(TimeoutError):
        await browser.wait_connected(0.05)
