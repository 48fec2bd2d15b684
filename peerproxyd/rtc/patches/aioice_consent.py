"""Consent freshness that survives a busy peer: expire after 30 s without an answer.

Why: RFC 7675 lets consent expire when no check has been answered for 30 seconds. aioice
0.13 instead sends each check (every ~5 s) once, with no retransmission, gives it 500 ms,
and closes the connection after 6 failed checks in a row. A peer that is busy for a while
answers late, not never: during a long bulk transfer on a loaded machine (or a Raspberry Pi)
the STUN check waits behind megabytes of SCTP data in the receive buffer and in the event
loop, its answer takes more than 500 ms, six checks in a row "fail", and aioice tears down a
healthy connection in the middle of a download (seen here: a 200 MB download cut at 18 MB
while the machine ran at a load of 14 on 2 cores).

So each check is retransmitted like any STUN transaction (RFC 8489: 500 ms, doubling) for up
to CHECK_RETRANSMISSIONS times, and the connection closes only when no check has been answered
for CONSENT_TIMEOUT seconds: the RFC's rule. A peer that is really gone is detected in 30-45 s
(aioice: 30-36 s); the data channel's own heartbeats usually notice it first.

`install()` replaces `aioice.ice.Connection.query_consent`. Regression test:
tests/rtc/patches/test_aioice_consent.py.
"""

from __future__ import annotations

import asyncio
import logging
import random

import aioice.ice
from aioice import stun
from aioice.ice import Connection

from peerproxyd.rtc.patches import versions

CHECKED = {"aioice": ("0.13.0",)}
"""The aioice versions this patch was read against (versions.py)."""

logger = logging.getLogger(__name__)

CONSENT_INTERVAL = 5.0
"""Seconds between checks, randomized by +-20 % (RFC 7675 section 5.1)."""
CONSENT_TIMEOUT = 30.0
"""Seconds without any answered check after which consent expires (RFC 7675)."""
CHECK_RETRANSMISSIONS = 3
"""Retransmissions of one check: it waits 0.5 + 1 + 2 + 4 = 7.5 s for an answer at most."""

_ORIGINAL_QUERY_CONSENT = aioice.ice.Connection.query_consent


async def _check(connection: Connection) -> bool:
    """One consent check on every nominated pair; True if any of them was answered."""
    assert connection.remote_password is not None
    key = connection.remote_password.encode("utf8")

    async def one(pair: aioice.ice.CandidatePair) -> bool:
        request = connection.build_request(pair, nominate=False)
        try:
            await pair.protocol.request(
                request, pair.remote_addr, integrity_key=key,
                retransmissions=CHECK_RETRANSMISSIONS,
            )
        except stun.TransactionError:
            return False
        return True

    pairs = list(connection._nominated.values())
    return any(await asyncio.gather(*(one(p) for p in pairs))) if pairs else False


async def query_consent(self: Connection) -> None:
    """Check consent periodically; close when none was answered for CONSENT_TIMEOUT."""
    loop = asyncio.get_running_loop()
    answered = loop.time()
    while True:
        await asyncio.sleep(CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
        if await _check(self):
            answered = loop.time()
        elif loop.time() - answered >= CONSENT_TIMEOUT:
            logger.info("ICE consent expired: no check answered for %.0f s", CONSENT_TIMEOUT)
            self._query_consent_task = None
            await self.close()
            return


def install() -> None:
    """Use query_consent() for every aioice connection (idempotent)."""
    if not versions.applies(__name__, CHECKED):
        return
    aioice.ice.Connection.query_consent = query_consent  # type: ignore[method-assign]


def uninstall() -> None:
    """Back to aioice's own consent checks (for tests)."""
    aioice.ice.Connection.query_consent = _ORIGINAL_QUERY_CONSENT  # type: ignore[method-assign]
