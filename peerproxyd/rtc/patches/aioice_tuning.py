"""Two ICE settings aioice 0.13 does not expose, applied from our side.

Why: aioice's `get_host_addresses()` always skips 127.0.0.1 and offers every other address of
the machine; we need an allow list (tests and loopback-only setups must stay on 127.0.0.1, and
an appliance may want to offer only its LAN address). And aioice gives its UDP sockets a
256 KiB receive buffer, which browsers' bursts overflow (see ../shared/chromium-webrtc.md:
4 MiB cut drops from thousands to ~16 per 50 MB and nearly doubled throughput).

Both are module-level names aioice reads at call time, so we replace them once at start-up.
They are process-wide by nature; `configure()` is the only place that sets them.
Regression test: tests/rtc/patches/test_aioice_tuning.py.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

import aioice.ice
import aioice.turn
import ifaddr

from peerproxyd.rtc.patches import versions

CHECKED = {"aioice": ("0.13.0",)}
"""The aioice versions this patch was read against (versions.py)."""

_ORIGINAL_GET_HOST_ADDRESSES = aioice.ice.get_host_addresses
_ORIGINAL_RECEIVE_BUFFER = aioice.turn.UDP_SOCKET_BUFFER_SIZE


def configure(*, host_addresses: Sequence[str] = (), receive_buffer: int = 4 * 1024 * 1024) -> None:
    """Gather host candidates only on `host_addresses` (empty: aioice's default) and give ICE
    UDP sockets a `receive_buffer`-byte SO_RCVBUF (the kernel caps it at net.core.rmem_max)."""
    if not versions.applies(__name__, CHECKED):
        aioice.turn.UDP_SOCKET_BUFFER_SIZE = _ORIGINAL_RECEIVE_BUFFER
        aioice.ice.get_host_addresses = _ORIGINAL_GET_HOST_ADDRESSES
        return
    aioice.turn.UDP_SOCKET_BUFFER_SIZE = receive_buffer
    if host_addresses:
        allowed = tuple(str(ipaddress.ip_address(a)) for a in host_addresses)
        aioice.ice.get_host_addresses = functools.partial(_allowed_addresses, allowed)
    else:
        aioice.ice.get_host_addresses = _ORIGINAL_GET_HOST_ADDRESSES


def _allowed_addresses(allowed: tuple[str, ...], use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """The allowed addresses that this machine has, loopback included, in allow-list order."""
    present: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            present.add(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
    result = []
    for address in allowed:
        version = ipaddress.ip_address(address).version
        if address in present and (use_ipv4 if version == 4 else use_ipv6):
            result.append(address)
    return result
