"""mDNS on the LAN: `.local` names for our host candidates, and the `_peerproxy._tcp` service.

Host candidates. Browsers never put a LAN address in an SDP: they offer `<uuid>.local` and
answer mDNS queries for that name on the LAN (draft-ietf-mmusic-mdns-ice-candidates). aiortc
never does this, so `hide_host_addresses()` does it for our answers: every non-loopback host
address becomes a random `.local` name, published on aioice's own mDNS responder (the protocol
aioice already shares between its connections to resolve remote `.local` names; its
`publish()` is otherwise unused). A viewer on the LAN resolves the name and connects host to
host; a viewer elsewhere (and the signaling server) learns no LAN address. Loopback addresses
are left alone: they are no secret and a multicast query could not reach them.

The names live as long as aioice's shared protocol: each caller holds a reference until
`release()`, and aioice closes the socket (and we forget the names) when the last one goes.

Service discovery (`advertise()`, `discover()`): the daemon announces `_peerproxy._tcp.local.`
with TXT `id` (the device id), `version`, `services` and, when configured, `name` (the
friendly `[device] name`), with python-zeroconf, so LAN tools (and
`peerproxyd discover`) can list the devices on the LAN.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aioice.ice
import aioice.mdns
from aioice import Candidate

if TYPE_CHECKING:  # zeroconf is imported when used: the daemon's start-up does not pay for it
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

logger = logging.getLogger(__name__)

HIDDEN_ADDRESS = "0.0.0.0"
"""What browsers put where a hidden address was: the c= line and a srflx candidate's raddr."""
DISCARD_PORT = 9

# Our names on each live aioice mDNS protocol: address -> "<uuid>.local". Weak, so the names
# go with the protocol when aioice closes it.
_names: weakref.WeakKeyDictionary[aioice.mdns.MDnsProtocol, dict[str, str]] = (
    weakref.WeakKeyDictionary()
)


def is_hidden_address(host: str) -> bool:
    """True for an IP address that an mDNS name should replace (any but loopback)."""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # already a name


async def hide_host_addresses(sdp: str, subscriber: object) -> str:
    """`sdp` with each non-loopback host candidate address replaced by a published `.local`
    name, and no trace of those addresses left elsewhere (c= line, m= port, raddr).

    `subscriber` keeps aioice's mDNS responder alive until `release(subscriber)`. If mDNS is
    impossible here (no multicast route), host candidates are dropped rather than revealed."""
    lines = sdp.splitlines()
    hosts = {
        c.host for c in _candidates(lines) if c.type == "host" and is_hidden_address(c.host)
    }
    if not hosts:
        return sdp
    names = await _publish(sorted(hosts), subscriber)
    out = []
    for line in lines:
        if line.startswith("a=candidate:"):
            candidate = _candidate(line)
            if candidate.type == "host" and candidate.host in hosts:
                if names is None:
                    continue
                candidate.host = names[candidate.host]
            if candidate.related_address in hosts:
                candidate.related_address, candidate.related_port = HIDDEN_ADDRESS, 0
            line = "a=candidate:" + candidate.to_sdp()
        elif line.startswith("c=IN ") and line.split()[-1] in hosts:
            line = f"c=IN IP4 {HIDDEN_ADDRESS}"
        elif line.startswith("m="):
            line = _discard_port(line, lines, hosts)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


RESOLVE_TIMEOUT = 2.0
"""Seconds a `.local` name may take to answer on the LAN (browsers answer in milliseconds)."""


def named_candidates(sdp: str) -> list[tuple[str, str, str]]:
    """The candidates of `sdp` whose address is a `.local` name: (mid, candidate, name),
    `candidate` as in a trickled candidate (`candidate:...`), `mid` its media section's."""
    out, mid = [], "0"
    for line in sdp.splitlines():
        if line.startswith("a=mid:"):
            mid = line.removeprefix("a=mid:").strip()
        elif line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) > 4 and aioice.mdns.is_mdns_hostname(fields[4]):
                out.append((mid, line.removeprefix("a="), fields[4]))
    return out


def with_address(candidate: str, address: str) -> str:
    """`candidate` (`candidate:...`) with its connection address replaced by `address`."""
    fields = candidate.split(" ")
    fields[4] = address
    return " ".join(fields)


async def resolve_name(name: str, subscriber: object, timeout: float = RESOLVE_TIMEOUT) -> str | None:
    """The IPv4 address a `.local` name has on the LAN (a browser's or a device's host
    candidate), asked on aioice's shared mDNS protocol (with aioice_mdns's fix of its
    parser); None if nobody answers in time. For a backend that resolves no names itself
    (libdatachannel): without it a LAN peer is reached only peer-reflexive or via srflx.
    `subscriber` holds the protocol until `release(subscriber)`."""
    try:
        protocol = await aioice.ice.get_or_create_mdns_protocol(subscriber)
    except OSError as exc:
        logger.info("mDNS unavailable (%s): %s not resolved", exc, name)
        return None
    return await protocol.resolve(name, timeout=timeout)


def _candidates(lines: Sequence[str]) -> list[Candidate]:
    return [_candidate(line) for line in lines if line.startswith("a=candidate:")]


def _candidate(line: str) -> Candidate:
    """An `a=candidate:` line, parsed by aioice (aiortc is not needed for this: a daemon on
    the native backend does not import it)."""
    return Candidate.from_sdp(line.removeprefix("a=candidate:"))


def _discard_port(m_line: str, lines: Sequence[str], hosts: set[str]) -> str:
    """aiortc puts the first candidate's port on the m= line: a hidden host's port goes too."""
    parts = m_line.split(" ")
    for line in lines:
        if line.startswith("a=candidate:"):
            first = _candidate(line)
            if first.host in hosts and len(parts) > 1 and parts[1] == str(first.port):
                parts[1] = str(DISCARD_PORT)
            break
    return " ".join(parts)


async def _publish(addresses: Sequence[str], subscriber: object) -> dict[str, str] | None:
    """The `.local` name of each address, published on aioice's shared mDNS protocol."""
    protocol = await aioice.ice.get_or_create_mdns_protocol(subscriber)
    names = _names.setdefault(protocol, {})
    try:
        for address in addresses:
            if address not in names:
                name = aioice.mdns.create_mdns_hostname()
                await protocol.publish(name, address)
                names[address] = name
                logger.info("mDNS: %s published for a host candidate", name)
    except OSError as exc:
        logger.warning("mDNS unavailable (%s): not offering host candidates", exc)
        return None
    return names


async def release(subscriber: object) -> None:
    """Drop `subscriber`'s reference to aioice's mDNS responder."""
    await aioice.ice.unref_mdns_protocol(subscriber)


# ----- DNS-SD: _peerproxy._tcp.local.

SERVICE_TYPE = "_peerproxy._tcp.local."


@dataclass(frozen=True, kw_only=True)
class Device:
    """A daemon found on the LAN."""

    id: str
    version: str
    services: tuple[str, ...]
    addresses: tuple[str, ...]
    port: int
    name: str = ""
    """The friendly name, if the device has one."""


@asynccontextmanager
async def advertise(
    device_id: str, version: str, services: Sequence[str], *, name: str | None = None,
    port: int = 0,
) -> AsyncIterator[None]:
    """Announce this device as `<device_id>._peerproxy._tcp.local.` while the block runs.

    Only on the interfaces of this host's LAN addresses (aioice's list, so `[ice]
    host_addresses` applies); with none (a loopback-only set-up) nothing is sent at all. The
    daemon listens on no port (it dials out), so the SRV port is 0 unless given; what LAN tools
    want is in the TXT record. Registration (probing, announcing: about 1.5 s) runs in the
    background, so entering the block does not wait for it."""
    addresses = _lan_addresses()
    if not addresses:
        yield
        return
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    properties = {"id": device_id, "version": version, "services": ",".join(services)}
    if name:
        properties["name"] = name
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        f"{device_id}.{SERVICE_TYPE}",
        port=port,
        properties=properties,
        server=f"{device_id}.local.",
        parsed_addresses=addresses,
    )
    zc = AsyncZeroconf(interfaces=addresses, ip_version=IPVersion.V4Only)
    registration = asyncio.create_task(_register(zc, info))
    try:
        yield
    finally:
        registration.cancel()
        await asyncio.gather(registration, return_exceptions=True)
        try:
            await zc.async_unregister_all_services()
        finally:
            await zc.async_close()


async def _register(zc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
    try:
        await zc.async_register_service(info, allow_name_change=True)
    except Exception as exc:  # no multicast here, a name clash we could not resolve, ...
        logger.warning("mDNS: cannot advertise %s: %s", info.name, exc)
        return
    logger.info("mDNS: advertising %s", info.name)


def format_devices(devices: Sequence[Device]) -> str:
    """`peerproxyd discover`'s output: one line per device (id, version, services,
    addresses, friendly name), or a line saying there is none."""
    if not devices:
        return "no peerproxyd device answered on this LAN"
    return "\n".join(
        f"{d.id}\t{d.version}\t{','.join(d.services) or '-'}\t{' '.join(d.addresses) or '-'}"
        f"\t{d.name or '-'}"
        for d in devices
    )


def _lan_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses (aioice's own list, so an allow list applies)."""
    return [
        a
        for a in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
        if not ipaddress.ip_address(a).is_loopback
    ]


async def discover(timeout: float = 3.0) -> list[Device]:
    """The devices that answer on the LAN within `timeout` seconds, sorted by id."""
    from zeroconf import IPVersion, ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    names: set[str] = set()

    def on_change(
        zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            names.add(name)

    browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    try:
        await asyncio.sleep(timeout)
        devices = []
        for name in sorted(names):
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(zc.zeroconf, 1000):
                continue
            props = {
                k.decode(): (v or b"").decode("utf-8", "replace")
                for k, v in info.properties.items()
            }
            devices.append(
                Device(
                    id=props.get("id", name.removesuffix("." + SERVICE_TYPE)),
                    version=props.get("version", ""),
                    services=tuple(s for s in props.get("services", "").split(",") if s),
                    addresses=tuple(info.parsed_addresses()),
                    port=info.port or 0,
                    name=props.get("name", ""),
                )
            )
        return sorted(devices, key=lambda d: d.id)
    finally:
        await browser.async_cancel()
        await zc.async_close()
