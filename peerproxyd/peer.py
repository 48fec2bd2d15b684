"""PeerSession: one viewer's RTCPeerConnection and data channel, served by the Router."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from peerproxyd import mdns
from peerproxyd.channel import ChannelLink, ChannelStream
from peerproxyd.config import Settings
from peerproxyd.protocol import ErrorCode, Limits, ProxyConnection, RequestHead, Role
from peerproxyd.router import Router
from peerproxyd.rtc import CHANNEL_LABEL, ConnectionReport
from peerproxyd.transport import Transport, new_transport

logger = logging.getLogger(__name__)


class PeerSession:
    """Answers one viewer's offer and serves the requests on its data channel."""

    def __init__(
        self,
        peer_id: str,
        settings: Settings,
        router: Router,
        on_closed: Callable[[PeerSession], None],
    ) -> None:
        self.peer_id = peer_id
        self._settings = settings
        self._router = router
        self._on_closed = on_closed
        self._pc: Transport = new_transport(settings.ice)  # aiortc or native (transport.py)
        self._link: ChannelLink | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._pc.on_channel(self._on_datachannel)
        self._pc.on_state(self._on_connection_state)

    def __repr__(self) -> str:
        return f"PeerSession({self.peer_id})"

    @property
    def open_streams(self) -> int:
        return self._link.conn.open_streams if self._link else 0

    @property
    def link(self) -> ChannelLink | None:
        return self._link

    async def accept(self, offer: dict[str, Any]) -> dict[str, str]:
        """Apply the viewer's offer; return our answer (with every candidate gathered)."""
        sdp = await self._pc.answer(str(offer["sdp"]))
        if self._settings.ice.mdns:
            sdp = await mdns.hide_host_addresses(sdp, subscriber=self)
        return {"sdp": sdp, "type": "answer"}

    async def report(self) -> ConnectionReport | None:
        """The selected candidate pair (host / srflx / relay), protocol and RTT; None until
        ICE has selected a pair."""
        return await self._pc.report()

    async def add_candidate(self, payload: dict[str, Any]) -> None:
        """A trickled ICE candidate from the viewer (browsers trickle; aiortc does not)."""
        await self._pc.add_candidate(payload)

    def _on_connection_state(self, state: str) -> None:
        logger.info("%r: connection %s", self, state)
        if state == "connected":
            self._spawn(self._log_report())
        elif state in ("failed", "closed"):
            self._spawn(self.close())

    async def _log_report(self) -> None:
        report = await self.report()
        if report is not None:
            logger.info("%r: connected via %s", self, report)

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != CHANNEL_LABEL or self._link is not None:
            logger.warning("%r: refusing data channel %r", self, channel.label)
            channel.close()
            return
        limits = self._settings.limits
        conn = ProxyConnection(
            Role.SERVER,
            Limits(
                max_streams=limits.max_streams_per_peer,
                max_header_bytes=limits.max_header_bytes,
            ),
        )
        self._link = ChannelLink(channel, conn, on_request=self._on_request, name=repr(self))
        logger.info("%r: data channel open", self)
        self._spawn(self._watch())

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
        self._spawn(self._router.handle(stream, head, end_stream, peer=self.peer_id))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel every stream and upstream request of this peer, then close the connection."""
        if self._closing:
            return
        self._closing = True
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
