"""A viewer and a serving side joined by a real aiortc connection in this process, on
127.0.0.1, with the daemon's own parts on the serving side (ProxyConnection, ChannelLink,
Router): the daemon's peer session without signaling, so a test can choose the ChannelLink's
slow-reader settings and look at what the serving side buffers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc import RTCDataChannel
from aiortc.rtcsctptransport import DataChunk

from peerproxyd.config import IceSettings
from peerproxyd.device.router import Router
from peerproxyd.protocol import Limits, ProxyConnection, RequestHead, Role
from peerproxyd.rtc.aiortc_setup import new_peer_connection
from peerproxyd.rtc.transport import CHANNEL_LABEL
from peerproxyd.rtc.patches import aioice_tuning
from peerproxyd.tunnel.channel import ChannelLink, ChannelStream

ICE = IceSettings(host_addresses=["127.0.0.1"])


class PeerPair:
    def __init__(self, router: Router, *, packed: bool = False, **link_options: Any) -> None:
        """`packed`: both connections pack messages (docs/protocol.md §1.1)."""
        self.router = router
        self.packed = packed
        self.link_options = link_options
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: ChannelLink | None = None
        self.server_streams: list[ChannelStream] = []

    async def __aenter__(self) -> PeerPair:
        aioice_tuning.configure(host_addresses=["127.0.0.1"])
        self.viewer_pc = new_peer_connection(ICE)
        self.server_pc = new_peer_connection(ICE)
        served = asyncio.get_running_loop().create_future()

        @self.server_pc.on("datachannel")
        def _on_channel(channel: RTCDataChannel) -> None:
            conn = ProxyConnection(Role.SERVER, Limits(), packed=self.packed)
            self.server = ChannelLink(channel, conn, on_request=self._on_request,
                                      name="server", **self.link_options)
            served.set_result(None)

        channel = self.viewer_pc.createDataChannel(CHANNEL_LABEL, ordered=True)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        await self.viewer_pc.setLocalDescription(await self.viewer_pc.createOffer())
        await self.server_pc.setRemoteDescription(self.viewer_pc.localDescription)
        await self.server_pc.setLocalDescription(await self.server_pc.createAnswer())
        await self.viewer_pc.setRemoteDescription(self.server_pc.localDescription)
        async with asyncio.timeout(20):
            await opened.wait()
            await served
        self.viewer = ChannelLink(channel, ProxyConnection(Role.CLIENT, packed=self.packed),
                                  name="viewer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.viewer.close()
        if self.server is not None:
            self.server.close()
        await self.viewer_pc.close()
        await self.server_pc.close()

    def _on_request(self, stream: ChannelStream, head: RequestHead, end_stream: bool) -> None:
        self.server_streams.append(stream)
        task = asyncio.get_running_loop().create_task(
            self.router.handle(stream, head, end_stream, peer="pair"))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def server_buffered(self) -> int:
        """Bytes the serving side holds for the viewer: queued on the data channel plus those
        in its SCTP association (outbound and sent-but-unacknowledged)."""
        assert self.server is not None
        return self.server.unsent()

    def viewer_stops_reading(self) -> None:
        """The viewer's SCTP discards every DATA chunk it receives (never acknowledged): from
        the serving side, a peer that does not read at all."""
        sctp = self.viewer_pc.sctp
        original = sctp._receive_chunk

        async def receive_chunk(chunk: Any) -> None:
            if not isinstance(chunk, DataChunk):
                await original(chunk)

        sctp._receive_chunk = receive_chunk
