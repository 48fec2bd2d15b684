"""PeerSession: one viewer's RTCPeerConnection and data channel, served by the Router.

Nothing is served before the viewer authenticates (docs/security.md 1.5): its first message
on the data channel must be a text `auth` whose MAC binds its token to both DTLS
fingerprints. Until `auth-ok` no ChannelLink exists, so no binary message is ever parsed; a
binary message, a malformed auth or no auth within `[limits] handshake_timeout` closes the
connection. Afterwards the session serves one service only (others get 403) and the daemon
calls `check()` every second: revoked, expired, replaced or idle viewers are closed, and a
new selected pair is logged ("now connected via") and counted under its path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from peerproxyd.appliance import mdns
from peerproxyd.config import Settings
from peerproxyd.device.metrics import path_of
from peerproxyd.device.router import Router
from peerproxyd.errors import AuthError
from peerproxyd.protocol import ErrorCode, Limits, ProxyConnection, RequestHead, Role
from peerproxyd.rtc import sdp_restart
from peerproxyd.rtc.report import ConnectionReport
from peerproxyd.rtc.transport import CHANNEL_LABEL, Backend, Transport, new_transport
from peerproxyd.trust.viewer_auth import (
    AuthCode,
    Granted,
    access_refusal,
    decide,
    encode_auth_error,
    encode_auth_ok,
    fingerprint_from_sdp,
    format_time,
    parse_auth,
)
from peerproxyd.trust.viewers import ViewerStore
from peerproxyd.tunnel.channel import ChannelLink, ChannelStream
from peerproxyd.tunnel.replies import reply_quietly

if TYPE_CHECKING:
    from peerproxyd.rtc.aiortc_ice_restart import IceRestart

logger = logging.getLogger(__name__)
access_log = logging.getLogger("peerproxyd.access")

REFUSAL_LINGER = 1.0
"""Seconds an auth-error gets to reach the viewer (which then closes) before we close: aiortc
aborts the SCTP association on close, dropping whatever is still queued."""


class PeerSession:
    """Answers one viewer's offer, authenticates it, and serves its service's requests."""

    def __init__(
        self,
        peer_id: str,
        settings: Settings,
        router: Router,
        on_closed: Callable[[PeerSession], None],
        *,
        backend: Backend,
        viewers: ViewerStore,
        refresh_viewers: Callable[[], None] = lambda: None,
        admit: Callable[[], bool] = lambda: True,
        packing: bool = True,
    ) -> None:
        """`packing`: agree to packed messages when the viewer asks (docs/protocol.md §1.1);
        False answers as a daemon from before packing did (tests)."""
        self.peer_id = peer_id
        self._settings = settings
        self._router = router
        self._on_closed = on_closed
        self._viewers = viewers
        self._refresh_viewers = refresh_viewers
        self._admit = admit
        self._packing = packing
        self._pc: Transport = new_transport(settings.ice, backend=backend)
        self._channel: Any = None  # the data channel (peerproxyd.tunnel.channel.DataChannel)
        self._channel_closed = asyncio.Event()
        self._link: ChannelLink | None = None
        self._viewer_fp = b""
        self._device_fp = b""
        self.granted: Granted | None = None
        self._key = b""  # the stored key the viewer proved: a new share replaces it
        self._deadline: asyncio.Task[None] | None = None
        self._refusing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.ice_restarts = 0  # ICE restarts completed on this connection
        self.viewer_address: str | None = None
        """The viewer's IP address on the selected pair, once known (X-Forwarded-For)."""
        self.path: str | None = None
        """The selected pair's path for the metrics (device/metrics.py), once known."""
        self._pair: tuple[str, str] | None = None  # the logged pair's two ends
        self._following: asyncio.Task[None] | None = None
        self._ice_restarted = asyncio.Event()
        self._viewer_offer = ""  # the offer that began the session
        self._viewer_ufrag: str | None = None  # the viewer's ICE ufrag in use
        self._pc.on_channel(self._on_datachannel)
        self._pc.on_state(self._on_connection_state)

    def __repr__(self) -> str:
        if self.granted is not None:
            return f"PeerSession({self.peer_id} {self.granted.viewer})"
        return f"PeerSession({self.peer_id})"

    @property
    def open_streams(self) -> int:
        return self._link.conn.open_streams if self._link else 0

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def link(self) -> ChannelLink | None:
        return self._link

    @property
    def label(self) -> str:
        """How logs and upstream forwarding headers name this peer: `viewer@peer id`."""
        return f"{self.granted.viewer}@{self.peer_id}" if self.granted else self.peer_id

    async def accept(self, offer: dict[str, Any]) -> dict[str, str]:
        """Apply the viewer's offer; return our answer (with every candidate gathered).
        FingerprintError if either SDP lacks exactly one sha-256 fingerprint."""
        sdp = str(offer["sdp"])
        self._viewer_fp = fingerprint_from_sdp(sdp)
        self._deadline = self._spawn(self._handshake_deadline())
        self._viewer_offer, self._viewer_ufrag = sdp, sdp_restart.ice_ufrag(sdp)
        sdp = await self._pc.answer(sdp)
        self._device_fp = fingerprint_from_sdp(sdp)
        return await self._published(sdp)

    async def _published(self, sdp: str) -> dict[str, str]:
        """Our answer as the viewer gets it: host addresses as .local names if mdns."""
        if self._settings.ice.mdns:
            sdp = await mdns.hide_host_addresses(sdp, subscriber=self)
        return {"sdp": sdp, "type": "answer"}

    # ----- ICE restart (aiortc_ice_restart.py, sdp_restart.py; docs/network.md)
    @property
    def restarts_ice(self) -> bool:
        """Whether this session's backend can restart ICE (aiortc: yes; native: no)."""
        return self._pc.restarts_ice

    def is_ice_restart(self, offer: dict[str, Any]) -> bool:
        """True if `offer` restarts ICE on this session's connection (sdp_restart.py): the
        same certificate and SDP session, new ICE credentials. Else a new connection."""
        return not self._closing and sdp_restart.is_restart_offer(
            str(offer.get("sdp", "")), self._viewer_offer, self._viewer_ufrag
        )

    async def restart_ice(self, offer: dict[str, Any]) -> dict[str, str]:
        """Answer the viewer's ICE-restart offer on the live connection (DTLS, SCTP and
        every stream go on); the new pair takes over once nominated. IceRestartError if the
        connection cannot restart; after any other error the session is unusable."""
        sdp = str(offer["sdp"])
        answer, restart = await self._pc.restart_answer(sdp)
        self._spawn(self._after_restart(restart, sdp_restart.ice_ufrag(sdp)))
        return await self._published(answer)

    async def _after_restart(self, restart: IceRestart, ufrag: str | None) -> None:
        if not await restart.wait():
            return  # the old pair carries on; the viewer renegotiates if it is gone
        self._viewer_ufrag = ufrag
        self.ice_restarts += 1
        self._router.metrics.ice_restarts.inc()
        self._ice_restarted.set()
        await self._log_report()

    async def wait_ice_restart(self, since: int, timeout: float) -> bool:
        """True once more than `since` ICE restarts have completed; False after `timeout`
        seconds or when the session closes."""
        try:
            async with asyncio.timeout(timeout):
                while self.ice_restarts <= since and not self._closing:
                    self._ice_restarted.clear()
                    await self._ice_restarted.wait()
        except TimeoutError:
            pass
        return self.ice_restarts > since

    async def report(self) -> ConnectionReport | None:
        """The selected candidate pair (host / srflx / relay), protocol and RTT; None until
        ICE has selected a pair."""
        return await self._pc.report()

    async def add_candidate(self, payload: dict[str, Any]) -> None:
        """A trickled ICE candidate from the viewer (browsers trickle; aiortc does not)."""
        await self._pc.add_candidate(payload)

    def _on_connection_state(self, state: str) -> None:
        logger.info("%r: connection %s", self, state)
        if state in ("failed", "closed"):
            self._spawn(self.close())

    async def _log_report(self, how: str = "connected") -> None:
        report = await self.report()
        if report is not None:
            self.viewer_address = report.remote_ip or None  # new after an ICE restart
            self.path = path_of(report)
            self._pair = (report.local, report.remote)
            logger.info("%r: %s via %s", self, how, report)

    async def _follow_pair(self) -> None:
        """The viewer (controlling ICE) may move the connection to another pair after it
        started, e.g. from TURN to a direct pair (rtc/patches/aioice_follow.py): then the
        path and the viewer's address follow, and the log says so."""
        report = await self._pc.report(measure_rtt=False)
        if report is not None and self._pair not in (None, (report.local, report.remote)):
            await self._log_report("now connected")

    # ----- authentication (docs/security.md 1.5)
    async def _handshake_deadline(self) -> None:
        timeout = self._settings.limits.handshake_timeout
        await asyncio.sleep(timeout)
        if self.granted is None and not self._refusing:
            logger.warning("%r: no viewer authentication within %.1f s: closing", self, timeout)
            await self.close()

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != CHANNEL_LABEL or self._channel is not None:
            logger.warning("%r: refusing data channel %r", self, channel.label)
            channel.close()
            return
        self._channel = channel
        channel.on("close", self._channel_closed.set)
        channel.on("message", self._on_auth_message)
        logger.info("%r: data channel open, waiting for the viewer's auth", self)

    def _on_auth_message(self, message: bytes | str) -> None:
        if self.granted is not None or self._refusing or self._closing:
            return  # closing: nothing more is read
        if isinstance(message, bytes):
            logger.warning("%r: binary message before auth: closing", self)
            self._refusing = True
            self._spawn(self.close())
            return
        try:
            auth = parse_auth(message)
            self._refresh_viewers()  # a link shared a moment ago works at once
            record = self._viewers.get(auth.viewer)
            granted = decide(
                record, auth, viewer_fp=self._viewer_fp, device_fp=self._device_fp,
                now=datetime.now(UTC),
            )
            if not self._admit():
                raise AuthError(
                    AuthCode.TOO_MANY_PEERS,
                    f"this device serves at most {self._settings.limits.max_peers} viewers",
                )
        except AuthError as exc:
            logger.warning("%r: viewer refused: %s", self, exc)
            self._router.metrics.error("auth_refused")
            self._refuse(exc)
            return
        assert record is not None and self._channel is not None
        granted = replace(granted, packed=auth.packed and self._packing)
        self.granted, self._key = granted, record.key
        if self._deadline is not None:
            self._deadline.cancel()
        self._channel.remove_listener("message", self._on_auth_message)
        self._channel.send(encode_auth_ok(granted))
        logger.info(
            "%r: viewer %s authenticated for %s (expires %s%s)",
            self, granted.viewer, granted.service, format_time(granted.expires) or "never",
            "; packed messages" if granted.packed else "",
        )
        self._start_link(self._channel)

    def _refuse(self, error: AuthError) -> None:
        """Send auth-error, give it REFUSAL_LINGER seconds to arrive, close."""
        if self._refusing or self._closing:
            return
        self._refusing = True
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            if self._link is not None:
                self._link.send_queued()  # what was written before the refusal goes first
            channel.send(encode_auth_error(error))
        self._spawn(self._close_after_refusal())

    async def _close_after_refusal(self) -> None:
        try:
            async with asyncio.timeout(REFUSAL_LINGER):
                await self._channel_closed.wait()
        except TimeoutError:
            pass
        await self.close()

    def check(self, now: datetime) -> None:
        """The daemon's once-a-second check: close a viewer that was revoked, expired,
        deleted or shared anew (new key) since it authenticated, or that has been idle
        (no streams, nothing but heartbeats) for `[limits] idle_timeout`; and look whether the
        viewer moved the connection to another candidate pair."""
        if self.granted is None or self._closing or self._refusing:
            return
        record = self._viewers.get(self.granted.viewer)
        refusal = access_refusal(record, now)
        if refusal is None and record is not None and record.key != self._key:
            refusal = AuthError(AuthCode.UNAUTHORIZED, "the viewer was shared anew")
        if refusal is not None:
            logger.warning("%r: closing: %s", self, refusal)
            self._refuse(refusal)
            return
        link = self._link
        if link is None:
            return
        if self._following is None or self._following.done():
            self._following = self._spawn(self._follow_pair())
        if link.conn.open_streams:
            link.last_activity = time.monotonic()
            return
        idle = time.monotonic() - link.last_activity
        if idle >= self._settings.limits.idle_timeout:
            logger.info("%r: idle for %.0f s (no streams, only heartbeats): closing", self, idle)
            self._spawn(self.close())

    # ----- serving
    def _start_link(self, channel: Any) -> None:
        limits = self._settings.limits
        conn = ProxyConnection(
            Role.SERVER,
            Limits(
                max_streams=limits.max_streams_per_peer,
                max_header_bytes=limits.max_header_bytes,
            ),
            packed=self.granted is not None and self.granted.packed,
        )
        self._link = ChannelLink(
            channel, conn, on_request=self._on_request, on_text=self._on_text,
            on_error=self._router.metrics.error, name=repr(self),
        )
        if self._channel_closed.is_set():
            self._link.close()
        self._spawn(self._watch())
        self._spawn(self._log_report())

    def _on_text(self, message: str) -> None:
        logger.warning("%r: text message after auth-ok (a second auth?): closing", self)
        self._spawn(self.close())

    async def _watch(self) -> None:
        """Close the session when the peer goes silent or the channel closes."""
        assert self._link is not None
        limits = self._settings.limits
        await self._link.keepalive(limits.heartbeat_interval, limits.heartbeat_timeout)
        await self.close()

    def _on_request(self, stream: ChannelStream, head: RequestHead, end_stream: bool) -> None:
        if self._closing:
            stream.reset(ErrorCode.REFUSED_STREAM, "peer session closing")
            return
        assert self.granted is not None
        if head.service != self.granted.service:
            self._spawn(self._forbidden(stream, head))
            return
        self._spawn(self._serve(stream, head, end_stream))

    async def _serve(self, stream: ChannelStream, head: RequestHead, end_stream: bool) -> None:
        if self.viewer_address is None:  # the first requests may beat _log_report
            report = await self._pc.report(measure_rtt=False)
            self.viewer_address = report.remote_ip if report else None
        await self._router.handle(stream, head, end_stream, peer=self.label,
                                  address=self.viewer_address)

    async def _forbidden(self, stream: ChannelStream, head: RequestHead) -> None:
        assert self.granted is not None
        started = time.monotonic()
        self._router.metrics.error("forbidden")
        await reply_quietly(stream, 403, f"viewer {self.granted.viewer} may use service "
                            f"{self.granted.service} only, not {head.service}")
        self._router.account(stream, head, 403, started)
        access_log.info("%s %s %s 403 %dB peer=%s", head.service, head.method, head.target,
                        stream.bytes_out, self.label)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancel every stream and upstream request of this peer, then close the connection."""
        if self._closing:
            return
        self._closing = True
        self._ice_restarted.set()  # wakes wait_ice_restart()
        logger.info("%r: closing", self)
        if self._link is not None:
            self._link.close()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pc.close()
        await mdns.release(subscriber=self)
        self._on_closed(self)

