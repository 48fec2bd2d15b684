"""The connection report: which candidate pair a connected peer connection uses.

Both backends make one (transport_aiortc.py through aiortc_setup.py, transport_native.py);
it lives apart from them so that the daemon, the native client and the metrics can name it
without importing a WebRTC stack (issue 15: a process imports only its chosen backend)."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

PairType = Literal["host", "srflx", "relay"]


class Candidate(Protocol):
    """What `pair_type` reads of a candidate (aioice's Candidate, or the native backend's)."""

    type: str
    host: str


@dataclass(frozen=True, kw_only=True)
class ConnectionReport:
    """The selected ICE candidate pair of a connected peer connection.

    `type` is the path: `relay` through a TURN server, `srflx` through at least one NAT
    (a server- or peer-reflexive candidate with a public address), `host` directly.
    `protocol` is how our packets leave: `udp`, or `tcp`/`tls` to a TURN server. `backend`
    is the WebRTC stack of our end (transport.py)."""

    type: PairType
    protocol: str
    local_type: str
    local: str
    remote_type: str
    remote: str
    rtt_ms: float | None
    backend: str = "aiortc"
    remote_ip: str = ""
    """The remote candidate's IP address (an mDNS name resolved); for a relay pair the
    TURN server's relayed address."""
    remote_mdns: bool = False
    """Whether the remote candidate came as an mDNS `.local` name (browsers hide their host
    addresses so)."""

    def __str__(self) -> str:
        rtt = f"{self.rtt_ms:.1f} ms" if self.rtt_ms is not None else "unknown"
        return (
            f"{self.type} ({self.protocol}) {self.local} [{self.local_type}] <-> "
            f"{self.remote} [{self.remote_type}], rtt {rtt}, backend {self.backend}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_type(local: Candidate, remote: Candidate) -> PairType:
    if "relay" in (local.type, remote.type):
        return "relay"
    reflexive = [c for c in (local, remote) if c.type in ("srflx", "prflx")]
    # A peer-reflexive candidate on a LAN address is a LAN host the checks found first.
    if any(c.type == "srflx" or not _is_lan(c.host) for c in reflexive):
        return "srflx"
    return "host"


_LAN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
              "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128")
)


def _is_lan(host: str) -> bool:
    """An RFC 1918 / link-local / loopback / ULA address, or an mDNS name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # an mDNS name: on the LAN by definition
    return any(address in network for network in _LAN_NETWORKS)
