"""The signaling server: a WebSocket rendezvous where clients and devices swap SDP.

Routes: `/ws` (the JSON protocol of signaling_messages.py), `GET /healthz`, and the
static `webclient/` directory at `/`. State lives in AppKeys; `build_signaling_app()`
returns an Application that can run alone (`run_signaling()`) or as a sub-app.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from peerproxyd.device_auth import DeviceAuthenticator, SecretBinding
from peerproxyd.errors import SignalingError
from peerproxyd.signaling_messages import (
    PEER_ID,
    Message,
    TokenBucket,
    check_inbound,
    encode,
    error_message,
    parse_message,
    valid_device_id,
)

logger = logging.getLogger(__name__)

DEFAULT_WEBCLIENT_DIR = Path(__file__).resolve().parent.parent / "webclient"
HEARTBEAT = 30.0
"""Server pings every 30 s; a client that does not answer within 15 s is dropped."""
SEND_TIMEOUT = 10.0
"""A recipient that does not take a message within this time counts as offline."""
ABUSE_RATE = 1.0
ABUSE_BURST = 50
"""Rate-limited messages a connection may send (refilled at ABUSE_RATE/s) before it is closed."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    max_message_size: int = 64 * 1024
    rate: float = 20.0
    burst: int = 100


@dataclass(eq=False, kw_only=True)
class Connection:
    """One WebSocket. `id` is its device id once registered, else its hello id."""

    ws: web.WebSocketResponse
    hello_id: str
    remote: str | None
    bucket: TokenBucket
    strikes: TokenBucket
    device_id: str | None = None
    replaced: bool = False
    partners: set[Connection] = field(default_factory=set)

    @property
    def id(self) -> str:
        return self.device_id or self.hello_id

    async def send(self, msg: Message) -> bool:
        """Send `msg`; False if the socket is gone or does not take it in time."""
        if self.ws.closed:
            return False
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await self.ws.send_str(encode(msg))
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            logger.debug("send to %s failed: %r", self.id, exc)
            return False
        return True


class Registry:
    """Who is online: device id -> connection, peer (hello) id -> connection."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.devices: dict[str, Connection] = {}
        self.peers: dict[str, Connection] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.peers[conn.hello_id] = conn

    def bind_device(self, conn: Connection, device_id: str) -> Connection | None:
        """Make `conn` the device; return the connection it replaces, if any."""
        old = self.devices.get(device_id)
        self.devices[device_id] = conn
        self.peers.pop(conn.hello_id, None)
        conn.device_id = device_id
        if old is not None and old is not conn:
            old.replaced = True
            return old
        return None

    def unlink(self, conn: Connection) -> list[Connection]:
        """Forget whom `conn` talked to; return those still worth a "bye"."""
        partners = [p for p in conn.partners if not p.replaced and not p.ws.closed]
        for partner in conn.partners:
            partner.partners.discard(conn)
        conn.partners.clear()
        return partners

    def remove(self, conn: Connection) -> list[Connection]:
        """Forget `conn`; return the partners to tell "bye"."""
        self.connections.discard(conn)
        if self.peers.get(conn.hello_id) is conn:
            del self.peers[conn.hello_id]
        if conn.device_id is not None and self.devices.get(conn.device_id) is conn:
            del self.devices[conn.device_id]
        return self.unlink(conn)

    def lookup(self, peer_id: str) -> Connection | None:
        if PEER_ID.fullmatch(peer_id):
            return self.peers.get(peer_id)
        return self.devices.get(peer_id)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in a task that on_shutdown cancels (no fire-and-forget)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


REGISTRY = web.AppKey("signaling_registry", Registry)
LIMITS = web.AppKey("signaling_limits", Limits)
# A Protocol is no concrete class, so the type goes in the annotation (mypy type-abstract).
AUTHENTICATOR: web.AppKey[DeviceAuthenticator] = web.AppKey("signaling_authenticator")


def _offline(to: str, ref: str) -> Message:
    if PEER_ID.fullmatch(to):
        return error_message("peer-offline", f"peer {to} is not online", ref=ref, to=to)
    return error_message("device-offline", f"device {to} is not online", ref=ref, to=to)


class _Handler:
    """The messages of one connection, handled in order."""

    def __init__(self, app: web.Application, conn: Connection) -> None:
        self.registry = app[REGISTRY]
        self.limits = app[LIMITS]
        self.authenticator = app[AUTHENTICATOR]
        self.conn = conn

    async def on_text(self, text: str) -> bool:
        """Handle one frame; False once the connection must end."""
        conn = self.conn
        if conn.replaced:
            return False
        now = asyncio.get_running_loop().time()
        if not conn.bucket.allow(now):
            if not conn.strikes.allow(now):
                logger.info("closing %s (%s): rate limit exceeded again and again",
                            conn.id, conn.remote)
                await conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"rate limited")
                return False
            await conn.send(error_message("rate-limited", "too many messages; message dropped"))
            return True
        try:
            msg = parse_message(text, self.limits.max_message_size)
            check_inbound(msg)
        except SignalingError as exc:
            await conn.send(error_message(exc.code, exc.message))
            if exc.code == "too-large":
                await conn.ws.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=b"message too large")
                return False
            return True
        if msg.type == "register":
            await self.register(msg)
        else:
            await self.relay(msg)
        return True

    async def register(self, msg: Message) -> None:
        conn = self.conn
        device_id: str = msg.get("device")
        if conn.device_id is not None and conn.device_id != device_id:
            await conn.send(error_message(
                "bad-message", f"this connection is registered as device {conn.device_id}",
                ref="register"))
            return
        if not valid_device_id(device_id):
            await conn.send(error_message(
                "invalid-device-id",
                f"device id {device_id[:64]!r} is not a DNS label of 1-40 characters "
                "a-z, 0-9 and '-'", ref="register"))
            return
        credentials = {"type": msg.type, **msg.extra}
        ok = await asyncio.to_thread(self.authenticator.verify, device_id, credentials)
        if not ok:
            logger.warning("refused registration of device %s from %s: wrong secret",
                           device_id, conn.remote)
            await conn.send(error_message(
                "unauthorized", f"device id {device_id} is registered with another secret",
                ref="register"))
            return
        old = self.registry.bind_device(conn, device_id)
        if old is not None:
            # The old socket's sessions are over: say so now, not when its close
            # handshake ends (a half-dead socket takes a while, and by then the new
            # one may have started sessions with the same partners).
            await _bye(device_id, self.registry.unlink(old))
            self.registry.spawn(_replace(old))
        logger.info("device %s registered from %s%s", device_id, conn.remote,
                    " (replacing its previous connection)" if old is not None else "")
        await conn.send(Message(type="registered", extra={"device": device_id}))

    async def relay(self, msg: Message) -> None:
        conn, to = self.conn, msg.to
        if to is None:  # check_inbound() rejected it already
            return
        dest = self.registry.lookup(to)
        out = Message(type=msg.type, to=to, from_=conn.id, payload=msg.payload)
        if dest is None or dest.replaced or not await dest.send(out):
            await conn.send(_offline(to, msg.type))
            return
        if dest is not conn:
            conn.partners.add(dest)
            dest.partners.add(conn)


async def _bye(sender: str, partners: list[Connection]) -> None:
    if partners:
        bye = Message(type="bye", from_=sender)
        await asyncio.gather(*(p.send(bye) for p in partners))


async def _replace(old: Connection) -> None:
    await old.send(error_message(
        "replaced", f"device {old.device_id} registered again from another connection"))
    await old.ws.close(code=WSCloseCode.OK, message=b"replaced")


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    limits = app[LIMITS]
    registry = app[REGISTRY]
    # The transport limit is above ours, so that a message a little too large gets a
    # "too-large" error first; aiohttp itself closes with 1009 beyond twice the limit.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=2 * limits.max_message_size)
    await ws.prepare(request)
    conn = Connection(
        ws=ws,
        hello_id="c-" + secrets.token_hex(8),
        remote=request.remote,
        bucket=TokenBucket(limits.rate, limits.burst),
        strikes=TokenBucket(ABUSE_RATE, ABUSE_BURST),
    )
    registry.add(conn)
    handler = _Handler(app, conn)
    logger.debug("peer %s connected from %s", conn.hello_id, conn.remote)
    try:
        await conn.send(Message(type="hello", extra={"id": conn.hello_id}))
        async for frame in ws:
            if frame.type is WSMsgType.TEXT:
                if not await handler.on_text(frame.data):
                    break
            elif frame.type is WSMsgType.BINARY:
                await conn.send(error_message("bad-message", "binary frames are not supported"))
    finally:
        partners = registry.remove(conn)
        kind = "device" if conn.device_id else "peer"
        logger.info("%s %s disconnected (%s)", kind, conn.id, conn.remote)
        # A task of its own: aiohttp cancels this handler once the peer's TCP is gone.
        if partners:
            registry.spawn(_bye(conn.id, partners))
        if not ws.closed:
            await ws.close()
    return ws


async def _healthz(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    return web.json_response(
        {"status": "ok", "devices": len(registry.devices), "peers": len(registry.peers)}
    )


async def _on_shutdown(app: web.Application) -> None:
    registry = app[REGISTRY]
    for task in list(registry.tasks):
        task.cancel()
    await asyncio.gather(
        *registry.tasks,
        *(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
          for c in list(registry.connections)),
        return_exceptions=True,
    )


def build_signaling_app(
    *,
    webclient_dir: Path | str | None = None,
    max_message_size: int = 65536,
    rate: float = 20.0,
    burst: int = 100,
    authenticator: DeviceAuthenticator | None = None,
) -> web.Application:
    """The signaling server. `authenticator` defaults to an in-memory SecretBinding."""
    app = web.Application()
    app[REGISTRY] = Registry()
    app[LIMITS] = Limits(max_message_size=max_message_size, rate=rate, burst=burst)
    app[AUTHENTICATOR] = authenticator if authenticator is not None else SecretBinding()
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/healthz", _healthz)
    static = Path(webclient_dir) if webclient_dir is not None else DEFAULT_WEBCLIENT_DIR
    if (static / "index.html").is_file():
        index = static / "index.html"

        async def _index(request: web.Request) -> web.FileResponse:
            return web.FileResponse(index)

        app.router.add_get("/", _index)
        app.router.add_static("/", static)
    else:
        logger.warning("no webclient at %s; serving only /ws and /healthz", static)
    return app


async def run_signaling(host: str = "127.0.0.1", port: int = 8765, **kwargs: Any) -> None:
    """Serve build_signaling_app(**kwargs) on host:port until cancelled."""
    runner = web.AppRunner(build_signaling_app(**kwargs), shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        for address in runner.addresses:
            bound_host, bound_port = address[0], address[1]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            logger.info("signaling server listening on http://%s:%s", shown, bound_port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
