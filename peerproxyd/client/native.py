"""Native client: a local HTTP port whose requests travel to a device's service over WebRTC.

Like ptproxy's client mode: `peerproxyd connect LINK --listen 127.0.0.1:9000`, then point any
HTTP client at http://127.0.0.1:9000/. The share link names the device and service, pins the
device's DTLS fingerprint and carries the viewer's token (docs/security.md 1.3, 1.5): an
answer with another fingerprint is refused, and the first data-channel message is the auth.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from peerproxyd.client.websocket_listener import is_websocket_upgrade, serve_local_websocket
from peerproxyd.config import IceSettings
from peerproxyd.errors import (
    AuthError,
    FingerprintError,
    IceRestartError,
    PeerGoneError,
    SignalingError,
    StreamResetError,
)
from peerproxyd.protocol import ErrorCode, ProxyConnection, RequestHead, Role
from peerproxyd.protocol.http_headers import downstream_response_headers, strip_hop_by_hop
from peerproxyd.rtc.report import ConnectionReport
from peerproxyd.rtc.sdp_restart import keep_session
from peerproxyd.rtc.transport import (
    CHANNEL_LABEL,
    Transport,
    choose_backend,
    configure_ice,
    new_transport,
)
from peerproxyd.signaling.client import SignalingClient
from peerproxyd.signaling.messages import Message
from peerproxyd.trust.viewer_auth import (
    AuthCode,
    Granted,
    ShareLink,
    auth_mac,
    check_pinned,
    encode_auth,
    fingerprint_from_sdp,
    format_time,
    parse_auth_reply,
)
from peerproxyd.tunnel.channel import ChannelLink

if TYPE_CHECKING:
    from peerproxyd.rtc.aiortc_ice_restart import IceRestart

logger = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0
"""Seconds a local client has to send a whole request head (from connecting, or from the end
of its previous response) before the connection is closed: a slowloris sender cannot hold it."""
RESET_STATUS = {
    ErrorCode.REFUSED_STREAM: 503,
    ErrorCode.HEADERS_TOO_LARGE: 431,
}


class NativeClient:
    def __init__(
        self,
        *,
        link: ShareLink,
        signal_url: str | None = None,
        listen: tuple[str, int],
        ice: IceSettings,
        backend: str = "auto",
        connect_timeout: float = 15.0,
        request_wait: float = 30.0,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 20.0,
        backoff_max: float = 10.0,
        packed: bool = True,
    ) -> None:
        """`backend`: the WebRTC stack, "auto", "aiortc" or "native" (transport.py);
        ValueError if "native" cannot run here. `packed`: ask the device for packed messages
        (docs/protocol.md §1.1; False behaves as a client before them)."""
        self.share = link
        self.device = link.device
        self.service = link.service
        self.listen = listen
        self.ice = ice
        self.backend, self.backend_reason = choose_backend(backend, ice)
        self.connect_timeout = connect_timeout
        self.request_wait = request_wait
        self.heartbeat = (heartbeat_interval, heartbeat_timeout)
        self.backoff_max = backoff_max
        self.packed = packed
        self.signaling = SignalingClient(signal_url or link.signal_url, backoff_max=backoff_max)
        self.link: ChannelLink | None = None
        self.connections = 0  # peer connections made so far
        self.ice_restarts = 0  # ICE restarts completed on them
        self.last_error = "not connected yet"
        self.url = ""
        self.report: ConnectionReport | None = None  # the current connection's selected pair
        self.granted: Granted | None = None  # the current connection's auth-ok
        self.refused: AuthError | None = None  # why the device closed a live connection
        self._up = asyncio.Event()
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self._device_gone = asyncio.Event()
        self._restart_wanted = asyncio.Event()
        self._offer = ""  # the current connection's last offer
        self._runner: web.AppRunner | None = None

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Serve the local port and keep a connection to the device until cancelled."""
        configure_ice(self.ice, self.backend)
        logger.info("WebRTC backend: %s (%s)", self.backend, self.backend_reason)
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # aiohttp's keep-alive timer also runs while a request head is incomplete. A local
        # client that goes away cancels its handler, which resets the stream at once: without
        # it a request still waiting for its response head (a long poll) held its stream, and
        # the device's stream limit, until the app answered.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     keepalive_timeout=HEAD_TIMEOUT, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen[0], self.listen[1])
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.listen[0]}:{port}/"
        signaling = asyncio.create_task(self.signaling.run(self._on_signal))
        try:
            await self._connection_loop(ready)
        finally:
            signaling.cancel()
            await asyncio.gather(signaling, return_exceptions=True)
            await self.signaling.close()
            await self._runner.cleanup()

    # ----- the connection to the device
    async def _connection_loop(self, ready: asyncio.Event | None) -> None:
        delay = 0.25
        while True:
            pc = new_transport(self.ice, backend=self.backend)
            error: Exception | None = None
            try:
                link = await self._connect(pc)
            except (FingerprintError, AuthError) as exc:
                await pc.close()
                if not (isinstance(exc, AuthError) and exc.code == AuthCode.TOO_MANY_PEERS):
                    raise  # a wrong, revoked or expired link: retrying cannot help
                error = exc
            except (TimeoutError, SignalingError, ConnectionError, ValueError) as exc:
                await pc.close()
                error = exc
            if error is not None:
                self.last_error = str(error) or type(error).__name__
                logger.warning("cannot reach %s: %s", self.device, self.last_error)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = 0.25
            self.link = link
            self._up.set()
            logger.info(
                "connected to %s/%s; serving %s", self.device, self.service, self.url
            )
            if ready is not None:
                ready.set()
            try:
                await self._until_lost(pc, link)
            finally:
                self._up.clear()
                self.link = None
                link.close()
                await pc.close()
            if self.refused is not None:
                raise self.refused
            self.last_error = f"connection to {self.device} lost"
            logger.warning("%s; reconnecting", self.last_error)

    async def _connect(self, pc: Transport) -> ChannelLink:
        async with asyncio.timeout(self.connect_timeout):
            await self.signaling.wait_connected(self.connect_timeout)
            channel = pc.create_channel(CHANNEL_LABEL)
            opened = asyncio.Event()
            channel.on("open", opened.set)
            self._offer = offer = await pc.offer()
            self._answer = asyncio.get_running_loop().create_future()
            self._device_gone.clear()
            started = time.monotonic()
            await self.signaling.send(
                "offer", self.device, {"sdp": offer, "type": "offer"}
            )
            answer = await self._answer
            check_pinned(str(answer.get("sdp", "")), self.share.fingerprint)
            await pc.set_answer(str(answer["sdp"]))
            await opened.wait()
            logger.info("data channel open in %.0f ms", (time.monotonic() - started) * 1000)
            link = await self._authenticate(offer, channel)
        self.connections += 1
        self.report = await pc.report()
        if self.report is not None:
            logger.info("connected via %s", self.report)
        return link

    async def _authenticate(self, offer: str, channel: Any) -> ChannelLink:
        """Send auth (docs/security.md 1.5) and wait for the answer; on auth-ok the
        ChannelLink takes over the channel in the same step, so no message falls between."""
        result: asyncio.Future[ChannelLink] = asyncio.get_running_loop().create_future()

        def on_reply(message: bytes | str) -> None:
            if result.done():
                return
            channel.remove_listener("message", on_reply)
            try:
                self.granted = parse_auth_reply(message)
            except AuthError as exc:
                result.set_exception(exc)
                return
            conn = ProxyConnection(Role.CLIENT, packed=self.packed and self.granted.packed)
            result.set_result(
                ChannelLink(channel, conn, on_text=self._on_text, name=f"{self.device}")
            )

        def on_close() -> None:
            if not result.done():
                result.set_exception(ConnectionError(f"{self.device} closed the data channel"))

        channel.on("message", on_reply)
        channel.on("close", on_close)
        mac = auth_mac(self.share.key, fingerprint_from_sdp(offer),
                       self.share.fingerprint)
        channel.send(encode_auth(self.share.name, mac, packed=self.packed))
        link = await result
        assert self.granted is not None
        logger.info("authenticated as %s for %s (expires %s%s)", self.granted.viewer,
                    self.granted.service, format_time(self.granted.expires) or "never",
                    "; packed messages" if self.granted.packed else "")
        return link

    def _on_text(self, message: str) -> None:
        """A text message after auth-ok: the daemon closing us (revoked, expired)."""
        try:
            parse_auth_reply(message)
            error = AuthError(AuthCode.BAD_AUTH, "a second auth-ok")
        except AuthError as exc:
            error = exc
        logger.error("%s: %s", self.device, error)
        self.refused = error
        self._device_gone.set()

    async def _until_lost(self, pc: Transport, link: ChannelLink) -> None:
        """Serve until the connection is lost; restart ICE on it when asked (the device's
        `restart`, or the server's `bye` as the device's signaling socket went), and return,
        for a new connection, if a restart fails."""
        failed = asyncio.Event()

        def on_state(state: str) -> None:
            if state in ("failed", "closed"):
                failed.set()

        pc.on_state(on_state)
        self._restart_wanted.clear()
        waits = [
            asyncio.ensure_future(link.keepalive(*self.heartbeat)),
            asyncio.ensure_future(link.wait_closed()),
            asyncio.ensure_future(failed.wait()),
            asyncio.ensure_future(self._device_gone.wait()),
        ]
        try:
            while True:
                restart = asyncio.ensure_future(self._restart_wanted.wait())
                done, _ = await asyncio.wait(
                    [*waits, restart], return_when=asyncio.FIRST_COMPLETED
                )
                restart.cancel()
                if not done.isdisjoint(waits) or not await self._restart_ice(pc):
                    return
        finally:
            for w in waits:
                w.cancel()

    async def _restart_ice(self, pc: Transport) -> bool:
        """Restart ICE on the live connection (aiortc_ice_restart.py): offer new credentials
        and candidates, check against the device's; streams in flight go on. False if it did
        not complete within `connect_timeout`, or the backend cannot restart (the caller
        then connects anew)."""
        started = time.monotonic()
        restart: IceRestart | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                offer, restart = await pc.restart_offer()
                # The same SDP session as before, so the device sees a restart (sdp_restart.py)
                self._offer = offer = keep_session(offer, self._offer)
                self._answer = asyncio.get_running_loop().create_future()
                await self.signaling.send("offer", self.device, {"sdp": offer, "type": "offer"})
                answer = await self._answer
                check_pinned(str(answer.get("sdp", "")), self.share.fingerprint)
                done = await pc.finish_restart(restart, str(answer["sdp"]))
        except (IceRestartError, TimeoutError, SignalingError, ConnectionError,
                ValueError) as exc:
            if restart is not None:
                await restart.cancel()
            logger.warning("ICE restart with %s failed: %s", self.device,
                           str(exc) or type(exc).__name__)
            return False
        if not done:
            return False
        self._restart_wanted.clear()  # asked for during this restart: this one did it
        self.ice_restarts += 1
        self.report = await pc.report()
        logger.info("ICE restart with %s done in %.0f ms; connected via %s", self.device,
                    (time.monotonic() - started) * 1000, self.report)
        return True

    async def _on_signal(self, message: Message) -> None:
        if message.from_ != self.device and message.type != "error":
            return
        if message.type == "answer" and self._answer and not self._answer.done():
            self._answer.set_result(message.payload or {})
        elif message.type == "restart" and self._up.is_set():
            reason = (message.payload or {}).get("reason", "")
            logger.info("%s asks for an ICE restart: %s", self.device, reason)
            self._restart_wanted.set()
        elif message.type == "bye":
            reason = (message.payload or {}).get("reason")
            self._fail_pending(ConnectionError(f"{self.device}: {reason or 'went away'}"))
            if reason is None and self._up.is_set():
                # The server's bye: the device's signaling socket went (a new address, a
                # blip). The peer connection may well live on: restart ICE, or else connect
                # anew (a device that is really gone answers no restart offer).
                logger.info("%s left the signaling server; restarting ICE", self.device)
                self._restart_wanted.set()
                return
            logger.info("%s says bye: %s", self.device, reason or "device went away")
            self._device_gone.set()
        elif message.type == "error":
            error = SignalingError(str(message.get("code")), str(message.get("message")))
            self._fail_pending(error)

    def _fail_pending(self, error: Exception) -> None:
        if self._answer and not self._answer.done():
            self._answer.set_exception(error)

    # ----- local HTTP
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(self.request_wait):
                await self._up.wait()
        except TimeoutError:
            return _text(503, f"device {self.device} is not reachable: {self.last_error}")
        link = self.link
        assert link is not None
        if is_websocket_upgrade(request):
            return await serve_local_websocket(request, link, self.service)
        headers = strip_hop_by_hop(request.headers.items())
        headers = [(n, v) for n, v in headers if n.lower() != "x-forwarded-proto"]
        headers.append(("X-Forwarded-Proto", request.scheme))
        head = RequestHead(
            method=request.method,
            target=request.raw_path,
            headers=tuple(headers),
            service=self.service,
        )
        has_body = request.body_exists
        try:
            stream = link.open_stream(head, end_stream=not has_body)
        except PeerGoneError as exc:
            return _text(503, str(exc))
        upload = asyncio.create_task(self._upload(request, stream)) if has_body else None
        try:
            try:
                response_head, ended = await stream.response
            except StreamResetError as exc:
                return _text(RESET_STATUS.get(exc.code, 502), f"{self.device}: {exc.reason}")
            except PeerGoneError as exc:
                return _text(502, str(exc))
            response = web.StreamResponse(
                status=response_head.status,
                headers=CIMultiDict(downstream_response_headers(response_head.headers)),
            )
            await response.prepare(request)
            try:
                while chunk := await stream.read():
                    await response.write(chunk)
            except (StreamResetError, PeerGoneError) as exc:
                logger.warning("%s %s: response cut off: %s", request.method, request.path, exc)
                request.transport and request.transport.close()
                return response
            await response.write_eof()
            return response
        except ConnectionResetError:  # the local client went away: free the stream
            stream.reset(ErrorCode.CANCEL, "client went away")
            return response
        except asyncio.CancelledError:
            stream.reset(ErrorCode.CANCEL, "client went away")
            raise
        finally:
            if upload is not None and not upload.done():
                upload.cancel()

    async def _upload(self, request: web.Request, stream: Any) -> None:
        try:
            ended = False  # FINAL rides on the last chunk when the body is known complete
            while not ended and (chunk := await request.content.readany()):
                ended = request.content.at_eof()
                await stream.write(chunk, end=ended)
            if not ended:
                await stream.end()
        except (StreamResetError, PeerGoneError):
            pass  # the daemon answered early or the stream is gone: the response says why


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers={"X-Peerproxy-Error": "1"})
