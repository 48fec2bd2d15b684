"""SignalingClient: our side of the signaling server's WebSocket, with reconnects.

The daemon uses it with its Identity: it registers by signing the challenge of each
connection's hello (docs/security.md 1.2). The native client uses it anonymously (its id is
the hello id, new on every connection). Wire format: messages.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from peerproxyd.errors import SignalingError
from peerproxyd.signaling.messages import Message, encode, parse_message

if TYPE_CHECKING:  # cryptography is imported where a key is used: not by every client
    from peerproxyd.trust.identity import Identity

logger = logging.getLogger(__name__)

HEARTBEAT = 20.0
HANDSHAKE_TIMEOUT = 10.0
"""Time allowed to connect, then for the hello and for the register reply."""
CLOSE_TIMEOUT = 2.0
"""Seconds to wait for the server's answer to our close (a dead socket never answers)."""
STABLE_AFTER = 10.0
"""A connection that lasted this long resets the backoff."""
MAX_INCOMING_SIZE = 1024 * 1024
FATAL_CODES = frozenset({"unauthorized"})


class _Disconnected(Exception):
    """The server closed the connection or sent something that ends it."""


class SignalingClient:
    def __init__(
        self,
        url: str,
        *,
        identity: Identity | None = None,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.url = url
        self.identity = identity
        self.device_id = identity.device_id if identity is not None else None
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.id: str | None = None
        self.connected = False
        self.last_error: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._attempt: asyncio.Future[None] | None = None
        self._connected_event = asyncio.Event()
        self._closing = asyncio.Event()

    def _log(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        logger.log(level, "SignalingClient(%s) " + msg, self.device_id or "anonymous", *args,
                   exc_info=exc_info)

    async def run(
        self,
        on_message: Callable[[Message], Awaitable[None]],
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        """Stay connected until close() or cancellation; see the module docstring.

        Raises SignalingError if the server refuses our registration.
        """
        ceiling = self.backoff_min
        async with aiohttp.ClientSession() as session:
            while not self._closing.is_set():
                loop = asyncio.get_running_loop()
                started = loop.time()
                outcome = _Outcome()
                attempt = asyncio.ensure_future(
                    self._connect_once(session, on_message, on_state, outcome))
                self._attempt = attempt
                try:
                    await attempt
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not attempt.cancelled() or (task is not None and task.cancelling()):
                        if self.connected:
                            self._set_state(False, on_state)
                        raise
                    self.last_error = "reconnecting (network change)"  # reconnect() below
                    outcome.registered = True  # no backoff for a reconnect we asked for
                except SignalingError as exc:
                    self.last_error = str(exc)
                    if exc.code in FATAL_CODES:
                        self._log(logging.ERROR, "refused by the server: %s", exc)
                        self._set_state(False, on_state)
                        raise
                    self._log(logging.WARNING, "%s", exc)
                except (aiohttp.ClientError, OSError, TimeoutError, _Disconnected) as exc:
                    if not self._closing.is_set():
                        self.last_error = str(exc) or type(exc).__name__
                        self._log(logging.WARNING, "connection to %s failed: %s",
                                  self.url, self.last_error)
                finally:
                    self._attempt = None
                self._set_state(False, on_state)
                if self._closing.is_set():
                    break
                lasted = loop.time() - started
                if not outcome.replaced and (outcome.registered or lasted > STABLE_AFTER):
                    ceiling = self.backoff_min
                delay = random.uniform(self.backoff_min, ceiling)
                ceiling = min(ceiling * 2, self.backoff_max)
                self._log(logging.INFO, "reconnecting in %.1f s", delay)
                try:
                    async with asyncio.timeout(delay):
                        await self._closing.wait()
                except TimeoutError:
                    pass

    async def _connect_once(
        self,
        session: aiohttp.ClientSession,
        on_message: Callable[[Message], Awaitable[None]],
        on_state: Callable[[bool], None] | None,
        outcome: _Outcome,
    ) -> None:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            ws = await session.ws_connect(
                self.url, heartbeat=HEARTBEAT, max_msg_size=MAX_INCOMING_SIZE,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
            )
        try:
            self._ws = ws
            if self._closing.is_set():
                return
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                hello = await self._receive(ws)
                if hello.type != "hello":
                    raise SignalingError("bad-message", f"expected hello, got {hello.type}")
                self.id = hello.get("id")
                if self.identity is not None:
                    await self._register(ws, hello)
                    outcome.registered = True
            self._set_state(True, on_state)
            while True:
                msg = await self._receive(ws)
                if msg.type == "error" and msg.get("code") == "replaced":
                    outcome.replaced = True
                    self._log(logging.WARNING, "replaced by another connection: %s",
                              msg.get("message"))
                    raise _Disconnected("replaced by another connection")
                try:
                    await on_message(msg)
                except Exception:
                    self._log(logging.ERROR, "on_message failed for a message of type %s",
                              msg.type, exc_info=True)
        finally:
            self._ws = None
            await ws.close()

    async def _register(self, ws: aiohttp.ClientWebSocketResponse, hello: Message) -> None:
        assert self.identity is not None
        challenge = hello.get("challenge")
        if not isinstance(challenge, str) or not challenge:
            raise SignalingError(
                "bad-message", "the server's hello has no registration challenge "
                "(a signaling server older than device keys?)")
        register = Message(type="register", extra=self.identity.register_fields(challenge))
        await ws.send_str(encode(register))
        while True:
            reply = await self._receive(ws)
            if reply.type == "registered" and reply.get("device") == self.device_id:
                self.id = self.device_id
                self._log(logging.INFO, "registered at %s", self.url)
                return
            if reply.type == "error":
                raise SignalingError(reply.get("code"), reply.get("message"))
            self._log(logging.DEBUG, "ignoring %s before registration", reply.type)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> Message:
        """The next message from the server; unreadable ones are logged and skipped."""
        while True:
            frame = await ws.receive()
            if frame.type is aiohttp.WSMsgType.TEXT:
                try:
                    return parse_message(frame.data, MAX_INCOMING_SIZE)
                except SignalingError as exc:
                    self._log(logging.WARNING, "ignoring a message from the server: %s", exc)
                    continue
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                              aiohttp.WSMsgType.CLOSED):
                raise _Disconnected(f"server closed the connection (code {ws.close_code})")
            if frame.type is aiohttp.WSMsgType.ERROR:
                raise _Disconnected(f"connection error: {ws.exception()}")
            self._log(logging.DEBUG, "ignoring a %s frame", frame.type.name)

    def _set_state(self, connected: bool, on_state: Callable[[bool], None] | None) -> None:
        self.connected = connected
        if connected:
            self._connected_event.set()
        else:
            self._connected_event.clear()
        if on_state is not None:
            try:
                on_state(connected)
            except Exception:
                self._log(logging.ERROR, "on_state failed", exc_info=True)

    async def wait_connected(self, timeout: float) -> None:
        """Return once connected (registered, for a device); raise TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            await self._connected_event.wait()

    async def send(self, type: str, to: str, payload: dict[str, Any] | None = None) -> None:
        """Send one relay message (offer, answer, candidate, bye) to `to`."""
        ws = self._ws
        if not self.connected or ws is None or ws.closed:
            raise SignalingError("not-connected", "not connected to the signaling server")
        try:
            await ws.send_str(encode(Message(type=type, to=to, payload=payload)))
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise SignalingError("not-connected", f"send failed: {exc}") from exc

    def reconnect(self) -> None:
        """Drop the current connection and make a new one at once (e.g. from a new address:
        the old socket may be dead without knowing it)."""
        if self._attempt is not None and not self._attempt.done():
            self._log(logging.INFO, "reconnecting at once")
            self._attempt.cancel()

    async def close(self) -> None:
        """Disconnect for good: run() returns soon after. The client cannot be reused."""
        self._closing.set()
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.close()


class _Outcome:
    """What one connection attempt achieved, for the backoff decision."""

    __slots__ = ("registered", "replaced")

    def __init__(self) -> None:
        self.registered = False
        self.replaced = False
