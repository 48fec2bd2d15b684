"""aiortc set-up shared by the daemon and the native client."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from peerproxyd import aioice_tuning
from peerproxyd.config import IceSettings

CHANNEL_LABEL = "peerproxy"


def configure_ice(ice: IceSettings) -> None:
    """Apply the process-wide ICE settings (host address allow list, UDP receive buffer)."""
    aioice_tuning.configure(
        host_addresses=ice.host_addresses, receive_buffer=ice.udp_receive_buffer
    )


def new_peer_connection(ice: IceSettings) -> RTCPeerConnection:
    """A peer connection using exactly the configured ICE servers.

    aiortc falls back to a public STUN server when given none; we always pass the list, so an
    empty configuration means host candidates only."""
    servers = [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
        for s in ice.servers
    ]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))
