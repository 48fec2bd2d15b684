"""The signaling server: a WebSocket rendezvous where clients and devices swap SDP.

Routes: `/ws` (the JSON protocol of messages.py), `GET /healthz`, `GET /metrics`
(metrics.py), and the browser client (web.py). State lives in AppKeys;
`build_signaling_app()` returns an Application that can run alone (`run_signaling()`) or as
a sub-app.

A device registers by proving it holds the key its id is derived from (docs/security.md
1.2): the hello carries a fresh challenge, the register message its signature. Nothing is
stored about devices beyond who is online.

Alone, one process keeps everything in memory. With `redis_url`, several instances share
presence, routing, registration and rate limits through Redis (redis.py); the
`Cluster` protocol (cluster.py) is all this module knows of it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from peerproxyd.errors import RegistrationError, SignalingError
from peerproxyd.signaling import turn_credentials
from peerproxyd.signaling.cluster import Cluster
from peerproxyd.signaling.messages import (
    PEER_ID,
    Message,
    TokenBucket,
    check_inbound,
    encode,
    error_message,
    parse_message,
    valid_device_id,
)
from peerproxyd.signaling.metrics import SignalMetrics, new_registry, render_json
from peerproxyd.signaling.web import add_webclient_routes
from peerproxyd.trust import identity

if TYPE_CHECKING:
    from peerproxyd.signaling.redis import RedisOptions

logger = logging.getLogger(__name__)

HEARTBEAT = 30.0
"""Server pings every 30 s; a client that does not answer within 15 s is dropped."""
SEND_TIMEOUT = 10.0
"""A recipient that does not take a message within this time counts as offline."""
ABUSE_RATE = 1.0
ABUSE_BURST = 50
"""Rate-limited messages a connection may send (refilled at ABUSE_RATE/s) before it is closed."""
MAX_OUTBOX = 256
"""Messages from other instances waiting for one slow connection; beyond, they are dropped."""
MAX_REMOTE_PARTNERS = 1024
MAX_FRAMES = 1 << 62
"""Bound of a connection's receive loop (never reached: the rate limit comes first)."""
HEAD_TIMEOUT = 20.0
"""Seconds a client has to send a whole request head, from connecting or from the end of its
previous response (slowloris); an idle keep-alive connection is closed after as long."""
_END = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    max_message_size: int = 64 * 1024
    rate: float = 20.0
    burst: int = 100


@dataclass(eq=False, kw_only=True, slots=True)
class Connection:
    """One WebSocket. `id` is its device id once registered, else its hello id."""

    ws: web.WebSocketResponse
    hello_id: str
    remote: str | None
    bucket: TokenBucket
    challenge: str | None = None
    """The registration challenge of this connection's hello; None once used."""
    client: str = ""
    """Whose shared rate limit this connection spends (with Redis: its address)."""
    strikes: TokenBucket | None = None
    """Made at the first rate-limited message (most connections never need one)."""
    device_id: str | None = None
    replaced: bool = False
    partners: set[Connection] | None = None
    """Connections here this one exchanged messages with (made at the first)."""
    remote_partners: set[str] | None = None
    """Ids on other instances this connection exchanged messages with."""
    outbox: deque[str] | None = None
    writing: bool = False

    @property
    def id(self) -> str:
        return self.device_id or self.hello_id

    async def send(self, msg: Message) -> bool:
        """Send `msg`; False if the socket is gone or does not take it in time."""
        return await self.send_text(encode(msg))

    async def send_text(self, text: str) -> bool:
        if self.ws.closed:
            return False
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            logger.debug("send to %s failed: %r", self.id, exc)
            return False
        return True

    def link(self, other: Connection) -> None:
        """Remember that `other` (here) and this connection talk to each other."""
        for a, b in ((self, other), (other, self)):
            if a.partners is None:
                a.partners = set()
            a.partners.add(b)

    def link_remote(self, other_id: str) -> None:
        if self.remote_partners is None:
            self.remote_partners = set()
        if len(self.remote_partners) < MAX_REMOTE_PARTNERS:
            self.remote_partners.add(other_id)


class Registry:
    """Who is online here: device id -> connection, peer (hello) id -> connection.

    With a cluster, also the receiving end of routing: the cluster calls deliver_routed(),
    undeliverable() and evict() for what other instances publish.
    """

    def __init__(self, cluster: Cluster | None = None,
                 metrics: SignalMetrics | None = None) -> None:
        self.connections: set[Connection] = set()
        self.devices: dict[str, Connection] = {}
        self.peers: dict[str, Connection] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.cluster = cluster
        self.metrics = metrics if metrics is not None else SignalMetrics()

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

    def unlink(self, conn: Connection) -> tuple[list[Connection], list[str]]:
        """Forget whom `conn` talked to; return those still worth a "bye" (here, elsewhere)."""
        partners = [p for p in conn.partners or () if not p.replaced and not p.ws.closed]
        for partner in conn.partners or ():
            if partner.partners is not None:
                partner.partners.discard(conn)
                if not partner.partners:
                    partner.partners = None
        conn.partners = None
        remote = list(conn.remote_partners or ())
        conn.remote_partners = None
        return partners, remote

    def remove(self, conn: Connection) -> tuple[list[Connection], list[str]]:
        """Forget `conn`; return the partners to tell "bye"."""
        self.connections.discard(conn)
        if self.peers.get(conn.hello_id) is conn:
            del self.peers[conn.hello_id]
        if conn.device_id is not None and self.devices.get(conn.device_id) is conn:
            del self.devices[conn.device_id]
        return self.unlink(conn)

    def held_devices(self) -> list[tuple[str, str]]:
        """(device id, hello id) of every device registered here (for the cluster)."""
        return [(d, c.hello_id) for d, c in self.devices.items() if not c.replaced]

    def lookup(self, peer_id: str) -> Connection | None:
        if PEER_ID.fullmatch(peer_id):
            return self.peers.get(peer_id)
        return self.devices.get(peer_id)

    def sessions(self) -> int:
        """Viewer-device pairs whose device is registered here."""
        return sum(len(c.partners or ()) + len(c.remote_partners or ())
                   for c in self.devices.values())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in a task that on_shutdown cancels (no fire-and-forget)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- called by the cluster for what other instances publish

    def deliver_routed(self, sender: str, to: str, kind: str, text: str) -> bool:
        """Queue a message from another instance for `to`; False if `to` is not here."""
        dest = self.lookup(to)
        if dest is None or dest.replaced or dest.ws.closed:
            return False
        if dest.outbox is None:
            dest.outbox = deque()
        if len(dest.outbox) >= MAX_OUTBOX:
            logger.info("dropping a %s for %s: %d messages wait already", kind, to, MAX_OUTBOX)
            return False
        dest.outbox.append(text)
        if not dest.writing:
            dest.writing = True
            self.spawn(self._drain(dest))
        if kind == "bye":
            if dest.remote_partners is not None:
                dest.remote_partners.discard(sender)
        else:
            dest.link_remote(sender)
        self.metrics.messages_routed_in += 1
        return True

    async def _drain(self, dest: Connection) -> None:
        """Write the outbox in order, without holding up deliveries to anyone else."""
        try:
            while dest.outbox:
                if not await dest.send_text(dest.outbox[0]):
                    dest.outbox.clear()  # the socket is going; its partners hear "bye"
                    return
                dest.outbox.popleft()
                self.metrics.messages_delivered += 1
        finally:
            dest.writing = False

    def undeliverable(self, sender: str, to: str, kind: str) -> None:
        conn = self.lookup(sender)
        if conn is None or conn.replaced:
            return
        if conn.remote_partners is not None:
            conn.remote_partners.discard(to)
        self.metrics.messages_offline += 1
        self.spawn(_send(conn, _offline(to, kind)))

    def evict(self, device_id: str, hello_id: str, why: str) -> None:
        """Connection `hello_id` no longer holds `device_id`: tell it, and its partners."""
        conn = self.devices.get(device_id)
        if conn is None or conn.hello_id != hello_id or conn.replaced:
            return
        del self.devices[device_id]
        conn.replaced = True
        self.metrics.takeovers += 1
        logger.info("device %s %s; closing its connection here", device_id, why)
        partners, remote = self.unlink(conn)
        self.spawn(_takeover(self, conn, partners, remote))


REGISTRY = web.AppKey("signaling_registry", Registry)
LIMITS = web.AppKey("signaling_limits", Limits)
PROMETHEUS = web.AppKey("signaling_prometheus", CollectorRegistry)


@dataclass(frozen=True)
class IceOffer:
    """The ICE servers handed to every browser in its hello."""

    urls: tuple[str, ...]
    turn_secret: str | None
    turn_ttl: int


ICE = web.AppKey("signaling_ice", IceOffer)


def _offline(to: str, ref: str) -> Message:
    if PEER_ID.fullmatch(to):
        return error_message("peer-offline", f"peer {to} is not online", ref=ref, to=to)
    return error_message("device-offline", f"device {to} is not online", ref=ref, to=to)


class _Handler:
    """The messages of one connection, handled in order."""

    __slots__ = ("registry", "limits", "conn")

    def __init__(self, app: web.Application, conn: Connection) -> None:
        self.registry = app[REGISTRY]
        self.limits = app[LIMITS]
        self.conn = conn

    async def on_text(self, text: str) -> bool:
        """Handle one frame; False once the connection must end."""
        conn, cluster = self.conn, self.registry.cluster
        if conn.replaced:
            return False
        now = asyncio.get_running_loop().time()
        allowed = conn.bucket.allow(now)
        if allowed and cluster is not None:
            allowed = await cluster.allow(conn.client)
        if not allowed:
            self.registry.metrics.rate_limited += 1
            if conn.strikes is None:
                conn.strikes = TokenBucket(ABUSE_RATE, ABUSE_BURST)
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
        conn, registry = self.conn, self.registry
        device_id: str = msg.get("device")
        if conn.device_id is not None and conn.device_id != device_id:
            await conn.send(error_message(
                "bad-message", f"this connection is registered as device {conn.device_id}",
                ref="register"))
            return
        try:
            self.check_proof(device_id, msg)
        except RegistrationError as exc:
            registry.metrics.registrations_refused += 1
            logger.warning("refused registration of device %s from %s: %s",
                           device_id[:64], conn.remote, exc)
            await conn.send(error_message(exc.code, str(exc), ref="register"))
            return
        if registry.cluster is not None:
            try:
                await registry.cluster.claim(device_id, conn.hello_id)
            except ConnectionError as exc:
                registry.metrics.registrations_refused += 1
                logger.warning("cannot register device %s now: %s", device_id, exc)
                await conn.send(error_message(
                    "unavailable", "the signaling service cannot register devices right now; "
                    "try again shortly", ref="register"))
                return
        conn.challenge = None  # good for one registration
        old = registry.bind_device(conn, device_id)
        registry.metrics.registrations += 1
        if old is not None:
            # The old socket's sessions are over: say so now, not when its close
            # handshake ends (a half-dead socket takes a while, and by then the new
            # one may have started sessions with the same partners).
            registry.metrics.takeovers += 1
            await _bye(registry, device_id, *registry.unlink(old))
            registry.spawn(_replace(old))
        logger.info("device %s registered from %s%s", device_id, conn.remote,
                    " (replacing its previous connection)" if old is not None else "")
        await conn.send(Message(type="registered", extra={"device": device_id}))

    def check_proof(self, device_id: str, msg: Message) -> None:
        """Raise RegistrationError unless `msg` proves the sender holds `device_id`'s key
        for this connection's challenge (docs/security.md 1.2). Costs one ECDSA verification
        (about 0.1 ms), run only for a well-formed register with an unused challenge."""
        if not valid_device_id(device_id):
            raise RegistrationError(
                f"device id {device_id[:64]!r} is not a device id (32 characters a-z, 2-7, "
                "derived from the device key)")
        challenge = self.conn.challenge
        if challenge is None:
            raise RegistrationError(
                "this connection's challenge was used already; reconnect to register again")
        identity.verify_registration(
            device_id, msg.get("key"), msg.get("signature"), challenge)

    async def relay(self, msg: Message) -> None:
        conn, to, registry = self.conn, msg.to, self.registry
        if to is None:  # check_inbound() rejected it already
            return
        dest = registry.lookup(to)
        out = Message(type=msg.type, to=to, from_=conn.id, payload=msg.payload)
        if dest is not None and not dest.replaced:
            if await dest.send(out):
                registry.metrics.messages_delivered += 1
                if dest is not conn:
                    conn.link(dest)
                return
        elif registry.cluster is not None and await registry.cluster.route(
            conn.id, to, msg.type, encode(out)
        ):
            conn.link_remote(to)
            return
        registry.metrics.messages_offline += 1
        await conn.send(_offline(to, msg.type))


async def _send(conn: Connection, msg: Message) -> None:
    await conn.send(msg)


async def _bye(registry: Registry, sender: str, partners: list[Connection],
               remote: list[str]) -> None:
    bye = Message(type="bye", from_=sender)
    sends: list[Coroutine[Any, Any, bool]] = [p.send(bye) for p in partners]
    if remote and registry.cluster is not None:
        text = encode(bye)
        sends += [registry.cluster.route(sender, to, "bye", text) for to in remote]
    if sends:
        await asyncio.gather(*sends)


async def _replace(old: Connection) -> None:
    await old.send(error_message(
        "replaced", f"device {old.device_id} registered again from another connection"))
    await old.ws.close(code=WSCloseCode.OK, message=b"replaced")


async def _takeover(registry: Registry, old: Connection, partners: list[Connection],
                    remote: list[str]) -> None:
    assert old.device_id is not None
    await _bye(registry, old.device_id, partners, remote)
    await _replace(old)


def _hello(conn: Connection, ice: IceOffer) -> Message:
    hello: dict[str, Any] = {"id": conn.hello_id, "challenge": conn.challenge}
    if ice.urls:  # browsers' RTCConfiguration.iceServers, TURN credentials minted per peer
        hello["iceServers"] = turn_credentials.ice_servers(
            list(ice.urls), ice.turn_secret, conn.hello_id, ttl=ice.turn_ttl
        )
    return Message(type="hello", extra=hello)


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    limits = app[LIMITS]
    registry = app[REGISTRY]
    cluster = registry.cluster
    # The transport limit is above ours, so that a message a little too large gets a
    # "too-large" error first; aiohttp itself closes with 1009 beyond twice the limit.
    # No permessage-deflate: browsers ask for it, and its zlib streams would cost every
    # idle connection hundreds of KB to shrink a few small JSON messages.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=2 * limits.max_message_size,
                               compress=False)
    await ws.prepare(request)
    conn = Connection(
        ws=ws,
        hello_id=cluster.new_peer_id() if cluster is not None else "c-" + secrets.token_hex(8),
        remote=request.remote,
        client=cluster.client_key(request) if cluster is not None else "",
        bucket=TokenBucket(limits.rate, limits.burst),
        challenge=identity.new_challenge(),
    )
    registry.add(conn)
    handler = _Handler(app, conn)
    logger.debug("peer %s connected from %s", conn.hello_id, conn.remote)
    try:
        await conn.send(_hello(conn, app[ICE]))
        # receive(), not `async for`: one coroutine frame less waiting on every idle socket
        for _ in range(MAX_FRAMES):
            frame = await ws.receive()
            if frame.type is WSMsgType.TEXT:
                if not await handler.on_text(frame.data):
                    break
            elif frame.type is WSMsgType.BINARY:
                await conn.send(error_message("bad-message", "binary frames are not supported"))
            elif frame.type in _END:
                break
            del frame  # an idle connection does not keep its last message's text
    finally:
        partners, remote = registry.remove(conn)
        kind = "device" if conn.device_id else "peer"
        logger.info("%s %s disconnected (%s)", kind, conn.id, conn.remote)
        # Tasks of their own: aiohttp cancels this handler once the peer's TCP is gone.
        if partners or remote:
            registry.spawn(_bye(registry, conn.id, partners, remote))
        if cluster is not None and conn.device_id is not None and not conn.replaced:
            registry.spawn(cluster.release(conn.device_id, conn.hello_id))
        if not ws.closed:
            await ws.close()
    return ws


async def _healthz(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    body: dict[str, Any] = {
        "status": "ok", "devices": len(registry.devices), "peers": len(registry.peers)
    }
    if registry.cluster is not None:
        body["instance"] = registry.cluster.instance
        body["redis"] = "up" if registry.cluster.up else "down"
    return web.json_response(body)


def _gauges(registry: Registry) -> tuple[dict[str, float], str]:
    """The live gauges and the instance name, read when /metrics is asked."""
    cluster = registry.cluster
    gauges: dict[str, float] = {
        "devices": len(registry.devices),
        "peers": len(registry.peers),
        "sessions": registry.sessions(),
    }
    if cluster is None:
        return gauges, "local"
    gauges["redis_up"] = 1 if cluster.up else 0
    return gauges, cluster.instance


async def _metrics(request: web.Request) -> web.StreamResponse:
    if request.query.get("format") == "json":
        registry = request.app[REGISTRY]
        return web.json_response(render_json(registry.metrics, *_gauges(registry)))
    response = await make_aiohttp_handler(request.app[PROMETHEUS])(request)
    response.headers["Cache-Control"] = "no-store"
    return response


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


async def _cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    registry = app[REGISTRY]
    assert registry.cluster is not None
    await registry.cluster.start(registry)
    yield
    # The sockets are closed by now; let their "release" and "bye" tasks reach Redis.
    if registry.tasks:
        await asyncio.wait(set(registry.tasks), timeout=2.0)
    await registry.cluster.stop()


def build_signaling_app(
    *,
    webclient_dir: Path | str | None = None,
    max_message_size: int = 65536,
    rate: float = 20.0,
    burst: int = 100,
    redis_url: str | None = None,
    redis_options: RedisOptions | None = None,
    ice_urls: Sequence[str] = (),
    turn_secret: str | None = None,
    turn_ttl: int = turn_credentials.DEFAULT_TTL,
    stun: tuple[str, int] | None = None,
) -> web.Application:
    """The signaling server.

    Without `redis_url` everything lives in this process. With it (`redis://host:6379/0`),
    this is one of several instances sharing Redis: presence and routing span them all, and
    a client address's `rate`/`burst` hold across all instances (RedisOptions tunes them).
    """
    app = web.Application()
    metrics = SignalMetrics()
    cluster = None
    limits = Limits(max_message_size=max_message_size, rate=rate, burst=burst)
    if redis_url is not None:
        from peerproxyd.signaling.redis import RedisCluster, RedisOptions

        options = redis_options if redis_options is not None else RedisOptions()
        cluster = RedisCluster(redis_url, options, rate=rate, burst=burst, metrics=metrics)
        app.cleanup_ctx.append(_cluster_ctx)
    registry = app[REGISTRY] = Registry(cluster, metrics)
    app[PROMETHEUS] = new_registry(metrics, lambda: _gauges(registry))
    app[LIMITS] = limits
    app[ICE] = IceOffer(tuple(ice_urls), turn_secret, turn_ttl)
    if stun is not None:
        from peerproxyd.signaling import stun_server  # aioice and its imports: ~4 MB, only if asked

        app.cleanup_ctx.append(stun_server.cleanup_ctx(*stun))
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    add_webclient_routes(app, webclient_dir)
    return app


async def run_signaling(
    host: str = "127.0.0.1", port: int = 8765, *, redis_url: str | None = None,
    head_timeout: float = HEAD_TIMEOUT, **kwargs: Any
) -> None:
    """Serve build_signaling_app(redis_url=..., **kwargs) on host:port until cancelled; a
    connection that has not sent a whole request head within `head_timeout` is closed."""
    # aiohttp's keep-alive timer runs from the connection's start (and from each response's
    # end) until a whole head has arrived: the only bound on a head sent a byte at a time.
    runner = web.AppRunner(build_signaling_app(redis_url=redis_url, **kwargs),
                           shutdown_timeout=5.0, keepalive_timeout=head_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        for address in runner.addresses:
            bound_host, bound_port = address[0], address[1]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            logger.info("signaling server listening on http://%s:%s (request heads within "
                        "%g s)", shown, bound_port, head_timeout)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
