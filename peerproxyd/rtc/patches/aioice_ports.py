"""`[ice] port_range`: host candidates on a small, known set of UDP ports.

Why: aioice 0.13 binds every host candidate to port 0 (a kernel-chosen ephemeral port), per
address, per peer connection, and has no option for it; aiortc's RTCConfiguration has none
either. A device behind a strict firewall, or one whose router forwards a few UDP ports to it
(then even a viewer behind a symmetric NAT reaches it directly, without TURN), needs its ICE
traffic on ports known in advance.

`configure(range(50000, 50011))` replaces `aioice.ice.Connection.get_component_candidates` so
that each connection binds all its host addresses to ONE port: the lowest port of the range
that is free on every address. The kernel is the bookkeeper: a port is taken while a peer's
sockets are open and free again when aioice closes them. So a range of N ports serves N
concurrent peers (whatever the number of host addresses); peer N+1 gets `PortRangeExhausted`.
Server-reflexive candidates come from those same sockets, so they use the range too; aioice's
own code still gathers the TURN relay candidate, whose client socket (outbound to the TURN
server, like the signaling WebSocket) has a kernel-chosen port.
Regression test: tests/test_nat.py (port range with `ss`), tests/rtc/test_stun_turn.py.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Sequence

import aioice.ice
import aioice.turn
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol

from peerproxyd.rtc.patches import versions

CHECKED = {"aioice": ("0.13.0",)}
"""The aioice versions this patch was read against (versions.py)."""

logger = logging.getLogger(__name__)

_ORIGINAL = aioice.ice.Connection.get_component_candidates


class PortRangeExhausted(ConnectionError):
    """Every port of the range is in use by another peer connection."""

    def __init__(self, ports: range) -> None:
        super().__init__(
            f"all {len(ports)} UDP ports of [ice] port_range {ports.start}-{ports.stop - 1} "
            f"are in use (one per concurrent peer): refusing another peer"
        )
        self.ports = ports


def parse_port_range(text: str) -> range:
    """`"50000-50010"` or `"50000"` as a range (config.py has validated the syntax)."""
    low, _, high = text.partition("-")
    return range(int(low), int(high or low) + 1)


def configure(ports: range | None) -> None:
    """Bind host candidates within `ports` from now on (None: aioice's port 0 again)."""
    if ports is None or not versions.applies(__name__, CHECKED):
        aioice.ice.Connection.get_component_candidates = _ORIGINAL  # type: ignore[method-assign]
        return

    async def get_component_candidates(
        self: Connection, component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        if not addresses:
            return await _ORIGINAL(self, component, addresses, timeout)
        hosts = await bind_host_candidates(self, component, addresses, ports)
        self._protocols += hosts
        # The relay candidate: aioice's own gathering, with no host address left to bind.
        relay = asyncio.ensure_future(_ORIGINAL(self, component, [], timeout))
        srflx = await _server_reflexive(self, hosts, timeout)
        return [p.local_candidate for p in hosts] + srflx + await relay

    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


async def bind_host_candidates(
    connection: Connection, component: int, addresses: Sequence[str], ports: range
) -> list[StunProtocol]:
    """One StunProtocol per usable address, all on the lowest port free on every address."""
    for port in ports:
        protocols: list[StunProtocol] = []
        try:
            for address in addresses:
                protocol = await _bind(connection, address, port)
                if protocol is not None:
                    protocols.append(protocol)
        except OSError:  # EADDRINUSE: taken on some address, try the next port
            for protocol in protocols:
                protocol.transport.close()
            continue
        for protocol in protocols:
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", protocol.local_candidate.host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=protocol.local_candidate.host,
                port=port,
                type="host",
            )
        return protocols
    raise PortRangeExhausted(ports)


async def _bind(connection: Connection, address: str, port: int) -> StunProtocol | None:
    """A StunProtocol bound to (address, port); None if the address cannot be used at all
    (aioice skips such addresses too). Raises OSError(EADDRINUSE) if the port is taken.

    We bind the socket ourselves: event loops re-raise bind errors without their errno."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise
        logger.info("ICE: cannot bind %s:%d: %s", address, port, exc)
        return None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
    sock.setblocking(False)
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: StunProtocol(connection), sock=sock
    )
    # A placeholder until the whole set is bound (the caller fills in the candidate).
    protocol.local_candidate = Candidate("", 0, "udp", 0, address, port, "host")
    return protocol


async def _server_reflexive(
    connection: Connection, hosts: list[StunProtocol], timeout: int
) -> list[Candidate]:
    """aioice's STUN query for each IPv4 host socket, as its own gathering does."""
    if not connection.stun_server:
        return []
    queries = [
        asyncio.ensure_future(aioice.ice.server_reflexive_candidate(p, connection.stun_server))
        for p in hosts
        if ipaddress.ip_address(p.local_candidate.host).version == 4
    ]
    if not queries:
        return []
    done, pending = await asyncio.wait(queries, timeout=timeout)
    for task in pending:
        task.cancel()
    return [t.result()[0] for t in done if t.exception() is None]
