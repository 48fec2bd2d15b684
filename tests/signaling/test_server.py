"""Signaling: the sans-IO wire format, the server over real sockets, and SignalingClient."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from peerproxyd import b64u
from peerproxyd.errors import SignalingError
from peerproxyd.signaling.client import SignalingClient
from peerproxyd.signaling.messages import (
    MESSAGE_TYPES,
    Message,
    TokenBucket,
    check_inbound,
    encode,
    parse_message,
    valid_device_id,
)
from peerproxyd.signaling.server import REGISTRY, build_signaling_app
from peerproxyd.trust.identity import Identity

WAIT = 5.0
HELLO_ID = re.compile(r"c-[0-9a-f]{16}")
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
ServerFactory = Callable[..., Awaitable[TestServer]]
DEVICE = Identity.generate()
D = DEVICE.device_id
"""The device of most tests; THIEF wants its id without its key."""
THIEF = Identity.generate()


def make_app(**kwargs: Any) -> web.Application:
    return build_signaling_app(**kwargs)


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        frame = await ws.receive()
    assert frame.type is WSMsgType.TEXT, frame
    data: dict[str, Any] = json.loads(frame.data)
    return data


async def send(ws: aiohttp.ClientWebSocketResponse, **data: Any) -> None:
    await ws.send_str(json.dumps(data))


async def connect_hello(
    client: TestClient[Any, Any],
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await client.ws_connect("/ws")
    hello = await recv(ws)
    assert hello["type"] == "hello"
    assert HELLO_ID.fullmatch(hello["id"])
    assert len(b64u.decode(hello["challenge"])) == 32
    return ws, hello


async def connect(client: TestClient[Any, Any]) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    ws, hello = await connect_hello(client)
    return ws, hello["id"]


async def register(
    client: TestClient[Any, Any], ident: Identity = DEVICE
) -> aiohttp.ClientWebSocketResponse:
    ws, hello = await connect_hello(client)
    await send(ws, type="register", **ident.register_fields(hello["challenge"]))
    assert await recv(ws) == {"type": "registered", "device": ident.device_id}
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


# --- sans-IO: parse_message, encode, check_inbound, device ids, TokenBucket


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
        ('{"type": "register", "device": "a", "signature": "s"}', "bad-message",
         "register message needs a non-empty 'key' string"),
        ('{"type": "register", "device": "a", "key": "k"}', "bad-message",
         "register message needs a non-empty 'signature' string"),
        ('{"type": "register", "device": "", "key": "k", "signature": "s"}', "bad-message",
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
        (D, True),
        ("abcdefghijklmnopqrstuvwxyz234567", True),
        ("a" * 31, False),
        ("a" * 33, False),
        ("", False),
        ("camera-pi", False),
        (D.upper(), False),
        ("a" * 31 + "1", False),
        (D + "\n", False),
        ("c-0123456789abcdef", False),  # a hello id
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


# --- the server, over real sockets


async def test_register_and_relay_with_unforgeable_from(client: TestClient[Any, Any]) -> None:
    device = await register(client)
    peer, peer_id = await connect(client)
    await send(peer, type="offer", to=D, **{"from": D},
               payload={"sdp": "v=0 offer"})
    assert await recv(device) == {
        "type": "offer", "to": D, "from": peer_id, "payload": {"sdp": "v=0 offer"},
    }
    await send(device, type="answer", to=peer_id, **{"from": "c-0000000000000000"},
               payload={"sdp": "v=0 answer"}, extra="dropped")
    assert await recv(peer) == {
        "type": "answer", "to": peer_id, "from": D, "payload": {"sdp": "v=0 answer"},
    }
    await send(peer, type="candidate", to=D, payload={"candidate": None})
    assert (await recv(device))["payload"] == {"candidate": None}


async def test_offline_recipients(client: TestClient[Any, Any]) -> None:
    peer, _ = await connect(client)
    await send(peer, type="offer", to=D, payload={})
    assert await recv(peer) == {
        "type": "error", "code": "device-offline", "message": f"device {D} is not online",
        "ref": "offer", "to": D,
    }
    await send(peer, type="answer", to="c-0123456789abcdef", payload={})
    assert await recv(peer) == {
        "type": "error", "code": "peer-offline", "message": "peer c-0123456789abcdef is not online",
        "ref": "answer", "to": "c-0123456789abcdef",
    }


async def hijack_refused(
    client: TestClient[Any, Any], thief: aiohttp.ClientWebSocketResponse, reason: str,
    **fields: str,
) -> None:
    """The register message `fields` is refused with `unauthorized` and `reason`; DEVICE
    (registered before) stays registered and reachable; the thief stays connected."""
    await send(thief, type="register", **fields)
    reply = await recv(thief)
    assert (reply["type"], reply["code"], reply["ref"]) == ("error", "unauthorized", "register")
    assert reason in reply["message"], reply["message"]
    assert not thief.closed


async def test_hijack_attempts_are_refused(client: TestClient[Any, Any]) -> None:
    device = await register(client)
    thief, hello = await connect_hello(client)
    challenge = hello["challenge"]
    own = DEVICE.register_fields(challenge)
    stolen = THIEF.register_fields(challenge)
    # the thief's own key, claiming the device's id
    await hijack_refused(client, thief, f"device id {D} is not derived from this key",
                         **{**stolen, "device": D})
    # the device's public key (public: the server relays it), signed by the thief's key
    await hijack_refused(client, thief, "signature does not verify",
                         **{**own, "signature": stolen["signature"]})
    # a signature the device made for another connection's challenge (replayed)
    replayed = DEVICE.register_fields(b64u.encode(b"x" * 32))
    await hijack_refused(client, thief, "signature does not verify", **replayed)
    # an id that is no device id at all
    await hijack_refused(client, thief, "is not a device id",
                         **{**stolen, "device": "camera-pi"})
    # no key, or one that is not a P-256 key
    await hijack_refused(client, thief, "key is not a public key",
                         **{**own, "key": b64u.encode(b"junk")})
    await hijack_refused(client, thief, "key or signature is not base64url",
                         **{**own, "key": "not base64!"})
    metrics = client.server.app[REGISTRY].metrics
    assert (metrics.registrations, metrics.registrations_refused) == (1, 6)
    # the device is still the one registered, and reachable
    assert client.server.app[REGISTRY].devices[D].ws is not None
    peer, peer_id = await connect(client)
    await send(peer, type="offer", to=D, payload={"n": 1})
    assert (await recv(device))["from"] == peer_id
    # a thief's valid registration of its own id works on the same connection
    await send(thief, type="register", **stolen)
    assert await recv(thief) == {"type": "registered", "device": THIEF.device_id}


async def test_challenge_is_good_for_one_registration(client: TestClient[Any, Any]) -> None:
    ws, hello = await connect_hello(client)
    fields = DEVICE.register_fields(hello["challenge"])
    await send(ws, type="register", **fields)
    assert await recv(ws) == {"type": "registered", "device": D}
    await send(ws, type="register", **fields)
    reply = await recv(ws)
    assert reply["code"] == "unauthorized"
    assert reply["message"] == (
        "this connection's challenge was used already; reconnect to register again")
    # each connection has its own challenge
    _, other = await connect_hello(client)
    assert other["challenge"] != hello["challenge"]


async def test_right_key_takes_over(client: TestClient[Any, Any]) -> None:
    old = await register(client)
    peer, peer_id = await connect(client)
    await send(peer, type="offer", to=D, payload={"n": 1})
    assert (await recv(old))["type"] == "offer"
    new = await register(client)
    replaced = await recv(old)
    assert replaced["type"] == "error" and replaced["code"] == "replaced"
    assert await closed_with(old) == WSCloseCode.OK
    # the old device's sessions are over, and the peer hears it before anything else
    assert await recv(peer) == {"type": "bye", "from": D}
    await send(peer, type="offer", to=D, payload={"n": 2})
    assert await recv(new) == {
        "type": "offer", "to": D, "from": peer_id, "payload": {"n": 2},
    }


async def test_device_asks_a_viewer_to_restart_ice(client: TestClient[Any, Any]) -> None:
    """`restart` is relayed like `bye`: from the device to a viewer, payload optional."""
    device = await register(client)
    peer, peer_id = await connect(client)
    await send(peer, type="offer", to=D, payload={})
    await recv(device)
    await send(device, type="restart", to=peer_id, payload={"reason": "network changed"})
    assert await recv(peer) == {
        "type": "restart", "to": peer_id, "from": D, "payload": {"reason": "network changed"},
    }
    await send(device, type="restart", to=peer_id)
    assert await recv(peer) == {"type": "restart", "to": peer_id, "from": D}


async def test_bye_to_partners_on_disconnect(client: TestClient[Any, Any]) -> None:
    device = await register(client)
    peer, peer_id = await connect(client)
    bystander, _ = await connect(client)
    await send(peer, type="offer", to=D, payload={})
    await recv(device)
    await peer.close()
    assert await recv(device) == {"type": "bye", "from": peer_id}
    other, other_id = await connect(client)
    await send(other, type="offer", to=D, payload={})
    await recv(device)
    await device.close()
    assert await recv(other) == {"type": "bye", "from": D}
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await bystander.receive()


async def test_partner_sets_are_made_on_first_exchange_and_dropped(
    client: TestClient[Any, Any],
) -> None:
    """Memory per idle connection: no partner set until it talks to someone here."""
    registry = client.server.app[REGISTRY]
    device = await register(client)
    peer, peer_id = await connect(client)
    device_conn, peer_conn = registry.devices[D], registry.peers[peer_id]
    assert device_conn.partners is None and peer_conn.partners is None
    await send(peer, type="offer", to=D, payload={})
    await recv(device)
    assert device_conn.partners == {peer_conn} and peer_conn.partners == {device_conn}
    assert registry.sessions() == 1
    await peer.close()
    assert await recv(device) == {"type": "bye", "from": peer_id}
    assert device_conn.partners is None
    assert registry.sessions() == 0


async def test_no_permessage_deflate(client: TestClient[Any, Any]) -> None:
    """Browsers ask for compression; its zlib state would cost each idle socket ~300 KB."""
    ws = await client.ws_connect("/ws", compress=15)
    assert ws.compress == 0
    assert (await recv(ws))["type"] == "hello"


def test_signaling_without_stun_does_not_load_aioice() -> None:
    """aioice (with dnspython, ifaddr) costs the idle server ~4 MB; only `stun` needs it."""
    code = ("import sys; from peerproxyd.signaling.server import build_signaling_app; "
            "build_signaling_app(); print('aioice' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.strip() == "False"


async def test_too_large_closes_with_1009(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(max_message_size=1024))
    peer, _ = await connect(client)
    text = json.dumps({"type": "offer", "to": D, "payload": {"sdp": ""}})
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
        await send(peer, type="bye", to=D)
    codes = [(await recv(peer))["code"] for _ in range(4)]
    assert codes == ["device-offline"] * 3 + ["rate-limited"]
    assert not peer.closed


async def test_persistent_abuse_closes_with_1008(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(rate=0.5, burst=1))
    peer, _ = await connect(client)
    for _ in range(60):
        await send(peer, type="bye", to=D)
    assert await closed_with(peer) == WSCloseCode.POLICY_VIOLATION


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[]",
        '{"type": "nope"}',
        '{"type": "offer", "payload": {}}',
        '{"type": "offer", "to": 7, "payload": {}}',
        '{"type": "register", "device": "D", "key": "k"}',
        '{"type": "registered", "device": "D"}',
    ],
)
async def test_bad_messages_keep_the_connection(client: TestClient[Any, Any], frame: str) -> None:
    ws, hello = await connect_hello(client)
    await ws.send_str(frame.replace('"D"', f'"{D}"'))
    reply = await recv(ws)
    assert reply["type"] == "error" and reply["code"] == "bad-message", reply
    await send(ws, type="register", **DEVICE.register_fields(hello["challenge"]))
    assert await recv(ws) == {"type": "registered", "device": D}


async def test_binary_frames_are_bad_messages(client: TestClient[Any, Any]) -> None:
    ws, _ = await connect(client)
    await ws.send_bytes(b"{}")
    assert await recv(ws) == {
        "type": "error", "code": "bad-message", "message": "binary frames are not supported",
    }


@pytest.mark.parametrize("device", ["Camera", "a" * 33, "-x", "c-0123456789abcdef"])
async def test_invalid_device_id(client: TestClient[Any, Any], device: str) -> None:
    ws, hello = await connect_hello(client)
    fields = DEVICE.register_fields(hello["challenge"])
    await send(ws, type="register", **{**fields, "device": device})
    reply = await recv(ws)
    assert reply["code"] == "unauthorized"
    assert reply["message"].startswith(f"device id {device!r} is not a device id")


async def test_one_device_id_per_connection(client: TestClient[Any, Any]) -> None:
    ws, hello = await connect_hello(client)
    await send(ws, type="register", **DEVICE.register_fields(hello["challenge"]))
    assert await recv(ws) == {"type": "registered", "device": D}
    await send(ws, type="register", **THIEF.register_fields(hello["challenge"]))
    reply = await recv(ws)
    assert reply["code"] == "bad-message"
    assert reply["message"] == f"this connection is registered as device {D}"


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
    """The browser client's routes live in signaling/web.py (tests/signaling/test_web.py)."""
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
    device, device_rec = fast(url, identity=DEVICE), Recorder()
    browser, browser_rec = fast(url), Recorder()
    running(device, device_rec)
    running(browser, browser_rec)
    await device.wait_connected(WAIT)
    await browser.wait_connected(WAIT)
    assert device.id == D and device.connected
    assert browser.id is not None and HELLO_ID.fullmatch(browser.id)

    await browser.send("offer", D, {"sdp": "v=0"})
    offer = await device_rec.next()
    assert (offer.type, offer.from_, offer.payload) == ("offer", browser.id, {"sdp": "v=0"})
    await device.send("answer", browser.id, {"sdp": "v=0 answer"})
    answer = await browser_rec.next()
    assert (answer.type, answer.from_) == ("answer", D)

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
    await browser.send("offer", D, {"sdp": "again"})
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
    await browser.send("offer", D, {})
    error = await rec.next()
    assert (error.type, error.get("code"), error.to) == ("error", "device-offline", D)
    assert browser.connected


async def test_client_signs_and_a_refusal_is_fatal(
    aiohttp_server: ServerFactory, running: Any
) -> None:
    server = await aiohttp_server(make_app())
    url = server.make_url("/ws")
    owner, owner_rec = fast(url, identity=DEVICE), Recorder()
    running(owner, owner_rec)
    await owner.wait_connected(WAIT)
    assert owner.id == D

    # An identity whose certificate is right but whose key is not the device's: its
    # signatures cannot verify, and the client gives up instead of retrying forever.
    forged = Identity(THIEF.private_key, THIEF.certificate)
    object.__setattr__(forged, "device_id", D)
    thief, thief_rec = fast(url, identity=forged), Recorder()
    with pytest.raises(SignalingError) as info:
        async with asyncio.timeout(WAIT):
            await thief.run(thief_rec.on_message, thief_rec.on_state)
    assert info.value.code == "unauthorized"
    assert thief.last_error == f"unauthorized: device id {D} is not derived from this key"
    assert not thief.connected
    assert owner.connected
    assert set(server.app[REGISTRY].devices) == {D}


async def test_client_replaced_reconnects(aiohttp_server: ServerFactory, running: Any) -> None:
    server = await aiohttp_server(make_app())
    url = server.make_url("/ws")
    first, first_rec = fast(url, identity=DEVICE), Recorder()
    running(first, first_rec)
    await first_rec.wait_state(True)
    second, second_rec = fast(url, identity=DEVICE), Recorder()
    running(second, second_rec)
    await second_rec.wait_state(True)
    await first_rec.wait_state(False)  # replaced; it will take the id back after a backoff
    await first_rec.wait_state(True)


async def test_client_reconnect_on_request(aiohttp_server: ServerFactory, running: Any) -> None:
    """reconnect() (the daemon's answer to a network change) drops the connection and
    registers again on a new one, without backoff; run() keeps going."""
    server = await aiohttp_server(make_app())
    registry = server.app[REGISTRY]
    device, rec = SignalingClient(str(server.make_url("/ws")), identity=DEVICE,
                                  backoff_min=0.02, backoff_max=30.0), Recorder()
    task = running(device, rec)
    await rec.wait_state(True)
    first = registry.devices[D]
    device.reconnect()
    await rec.wait_state(False)
    await rec.wait_state(True)
    assert registry.devices[D] is not first and not task.done()
    assert device.last_error == "reconnecting (network change)"


async def test_client_cancel_and_close(aiohttp_server: ServerFactory, running: Any) -> None:
    server = await aiohttp_server(make_app())
    registry = server.app[REGISTRY]
    url = server.make_url("/ws")
    device, rec = fast(url, identity=DEVICE), Recorder()
    task = running(device, rec)
    await device.wait_connected(WAIT)
    assert set(registry.devices) == {D}
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
