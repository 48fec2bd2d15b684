"""Notice when this machine's host addresses change (DHCP renumbering, a new network).

A peer connection whose address went away is dead until heartbeats notice it (tens of
seconds). The daemon watches the addresses ICE would gather (aioice's `get_host_addresses`,
with our allow list applied) and, when they change, asks its viewers to restart ICE at once
(daemon.py, aiortc_ice_restart.py): new candidates on the new addresses, the same session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aioice.ice

INTERVAL = 2.0
"""Seconds between looks at the addresses."""


def host_addresses() -> frozenset[str]:
    """The addresses ICE would offer host candidates on now."""
    return frozenset(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True))


async def watch_addresses(
    on_change: Callable[[frozenset[str], frozenset[str]], Awaitable[None]],
    interval: float = INTERVAL,
) -> None:
    """Call `on_change(old, new)` whenever the host addresses change; runs until cancelled."""
    current = host_addresses()
    while True:
        await asyncio.sleep(interval)
        new = host_addresses()
        if new != current:
            old, current = current, new
            await on_change(old, new)
