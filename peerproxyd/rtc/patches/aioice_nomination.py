"""Direct paths before TURN: hold relayed checks back while a direct pair may still succeed.

Why: aioice 0.13 nominates aggressively when it controls ICE (our native client, the offerer):
every check carries USE-CANDIDATE, so the first pair whose check succeeds is the connection's
pair for good. Behind a cone NAT the direct (srflx) pair's first check is often dropped by the
peer's NAT because it arrives before the peer's own check has opened the mapping; the
retransmission 500 ms later gets through, but by then a relayed pair, checked 20 ms after it,
may have succeeded on its own retransmission, and the session runs through the TURN server for
nothing (measured on tests/netns.py's cone topology: about one run in six). Browsers avoid it
by nominating late (and switching pairs); aioice can do neither.

So, on the controlling side only, a check on a relayed pair (either candidate `relay`) waits
until every direct pair of its component has succeeded or failed, or until RELAY_GRACE seconds
after the connection's first check, whichever comes first. When a direct pair wins, aioice
cancels the waiting relayed checks itself. The cost: behind a symmetric NAT, where the direct
pairs never succeed, the relayed pair starts up to RELAY_GRACE later.

`install()` wraps `aioice.ice.Connection.check_start`. Regression test: tests/rtc/test_stun_turn.py.
"""

from __future__ import annotations

import asyncio
import weakref

import aioice.ice
from aioice.ice import CandidatePair, Connection

from peerproxyd.rtc.patches import versions

CHECKED = {"aioice": ("0.13.0",)}
"""The aioice versions this patch was read against (versions.py)."""

RELAY_GRACE = 1.0
"""Seconds, from the first check, during which direct pairs go first."""
POLL = 0.02
"""How often a held check looks again (aioice paces checks every 20 ms too)."""

_ORIGINAL_CHECK_START = aioice.ice.Connection.check_start
_PENDING = (
    CandidatePair.State.FROZEN,
    CandidatePair.State.WAITING,
    CandidatePair.State.IN_PROGRESS,
)

# When each connection started its first check (loop time); weak, so it goes with it.
_first_check: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()


def is_relayed(pair: CandidatePair) -> bool:
    return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)


def direct_pending(connection: Connection, component: int) -> bool:
    """True while a direct pair of `component` has neither succeeded nor failed."""
    return any(
        p.component == component and not is_relayed(p) and p.state in _PENDING
        for p in connection._check_list
    )


async def check_start(self: Connection, pair: CandidatePair) -> None:
    """aioice's check_start, deferred for a relayed pair while a direct one is pending."""
    loop = asyncio.get_running_loop()
    started = _first_check.setdefault(self, loop.time())
    if self.ice_controlling and is_relayed(pair):
        # In progress while held, so aioice's pacing moves on to the (frozen) direct pairs
        # instead of picking this waiting pair again on every tick.
        self.check_state(pair, CandidatePair.State.IN_PROGRESS)
        deadline = started + RELAY_GRACE
        while loop.time() < deadline and direct_pending(self, pair.component):
            await asyncio.sleep(POLL)
    await _ORIGINAL_CHECK_START(self, pair)


def install(enabled: bool = True) -> None:
    """Wrap aioice's check_start (or restore it with `enabled=False`)."""
    enabled = enabled and versions.applies(__name__, CHECKED)
    aioice.ice.Connection.check_start = (  # type: ignore[method-assign]
        check_start if enabled else _ORIGINAL_CHECK_START
    )
