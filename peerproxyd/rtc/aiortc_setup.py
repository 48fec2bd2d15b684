"""aiortc set-up shared by the daemon and the native client: process-wide ICE settings and
fixes, speed-ups, new peer connections, and their connection report (report.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from aioice import stun
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from peerproxyd.config import IceSettings
from peerproxyd.rtc.patches import (
    aioice_consent,
    aioice_follow,
    aioice_mdns,
    aioice_nomination,
    aioice_ports,
    aioice_tuning,
    aiortc_dtls,
    aiortc_receive,
    aiortc_sack,
    aiortc_transmit,
)
from peerproxyd.rtc.report import ConnectionReport, pair_type

RTT_TIMEOUT = 2.0


def configure_ice(ice: IceSettings) -> None:
    """Apply the process-wide ICE settings (host address allow list, UDP receive buffer, port
    range) and our aioice fixes: resolving browsers' `.local` candidates, direct pairs before
    relayed ones, following the viewer's later nomination, consent checks that a busy peer's
    late answers do not expire."""
    aioice_tuning.configure(
        host_addresses=ice.host_addresses, receive_buffer=ice.udp_receive_buffer
    )
    aioice_ports.configure(
        aioice_ports.parse_port_range(ice.port_range) if ice.port_range else None
    )
    aioice_mdns.install()
    aioice_nomination.install()
    aioice_follow.install()
    aioice_consent.install()
    install_speedups(SPEEDUPS)


SPEEDUPS: dict[str, Callable[[bool], None]] = {
    "sack": aiortc_sack.install,
    "transmit": aiortc_transmit.install,
    "dtls": aiortc_dtls.install,
    "receive": aiortc_receive.install,
}
"""Our aiortc speed-ups by name (issue 7), each in its own module; bench/datachannel.py
measures them against stock aiortc."""


def install_speedups(names: Iterable[str]) -> None:
    """Install the named speed-ups and remove the others (process-wide)."""
    chosen = set(names)
    unknown = chosen - SPEEDUPS.keys()
    if unknown:
        raise ValueError(f"unknown speed-ups: {sorted(unknown)}; known: {sorted(SPEEDUPS)}")
    for name, install in SPEEDUPS.items():
        install(name in chosen)


def new_peer_connection(ice: IceSettings) -> RTCPeerConnection:
    """A peer connection using exactly the configured ICE servers.

    aiortc falls back to a public STUN server when given none; we always pass the list, so an
    empty configuration means host candidates only."""
    servers = [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
        for s in ice.servers
    ]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


def _ice_connection(pc: RTCPeerConnection) -> Any:
    """aioice's Connection under the data channel (aiortc exposes no selected pair)."""
    sctp = pc.sctp
    if sctp is None:
        return None
    return sctp.transport.transport._connection


async def connection_report(
    pc: RTCPeerConnection, *, measure_rtt: bool = True
) -> ConnectionReport | None:
    """The selected pair of `pc`, or None before ICE has nominated one.

    The RTT is one STUN binding request over the selected pair, like a consent check
    (RFC 7675), timed; None if it got no answer within RTT_TIMEOUT seconds."""
    ice = _ice_connection(pc)
    pair = ice._nominated.get(1) if ice is not None else None
    if pair is None:
        return None
    local, remote = pair.local_candidate, pair.remote_candidate
    protocol = "udp"
    if local.type == "relay":
        protocol = "tls" if ice.turn_ssl else ice.turn_transport
    rtt = await _measure_rtt(ice, pair) if measure_rtt else None
    return ConnectionReport(
        type=pair_type(local, remote),
        protocol=protocol,
        local_type=local.type,
        local=f"{local.host}:{local.port}",
        remote_type=remote.type,
        remote=_address(remote.host, remote._network_host, remote.port),
        remote_ip=remote._network_host,
        remote_mdns=remote.host != remote._network_host,
        rtt_ms=rtt,
        backend="aiortc",
    )


def _address(host: str, network_host: str, port: int) -> str:
    if host != network_host:  # an mDNS name and what it resolved to
        return f"{host} ({network_host}):{port}"
    return f"{host}:{port}"


async def _measure_rtt(ice: Any, pair: Any) -> float | None:
    if ice.remote_password is None:
        return None
    request = ice.build_request(pair, nominate=False)
    started = time.monotonic()
    try:
        async with asyncio.timeout(RTT_TIMEOUT):
            await pair.protocol.request(
                request, pair.remote_addr, integrity_key=ice.remote_password.encode("utf8")
            )
    except (TimeoutError, stun.TransactionError, ConnectionError):
        return None
    return (time.monotonic() - started) * 1000
