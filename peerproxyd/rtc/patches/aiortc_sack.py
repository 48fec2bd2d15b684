"""Delayed SACK for aiortc's SCTP (RFC 9260 section 6.2), applied from our side.

Why: aiortc 1.16 answers every packet that carries DATA with a SACK of its own. In a bulk
transfer that is one more packet, DTLS record and `sendto` on the receiver, and one more
SACK to process on the sender (which then walks its queues again), for each 1,160-byte chunk:
about a third of both ends' CPU (bench/datachannel.md). RFC 9260 6.2 lets a receiver delay its
SACK: it SHOULD acknowledge at least every second packet and within 200 ms of an
unacknowledged DATA chunk, and it SHOULD answer at once when it sees a gap (a lost or
reordered packet) or a duplicate. Chromium's SCTP does the same.

So a packet with DATA that is the second unacknowledged one, or that leaves a gap or a
duplicate to report, is acknowledged at once, as aiortc does; any other is acknowledged when
the event loop has handled the datagrams already received (a `call_soon` callback: well within
200 ms, and no later than a pending ping-pong needs it), unless the next packet has triggered a
SACK by then. Request/response latency is unchanged; a bulk receiver sends half the SACKs.

`install()` wraps `RTCSctpTransport._send_sack`, aiortc's only call of which is at the end of
`_handle_data`, when a packet set `_sack_needed`. Regression test:
tests/rtc/patches/test_aiortc_speedups.py.
"""

from __future__ import annotations

import asyncio
import logging

from aiortc.rtcsctptransport import RTCSctpTransport

from peerproxyd.rtc.patches import versions

CHECKED = {"aiortc": ("1.16.0",)}
"""The aiortc versions this patch was read against (versions.py)."""

logger = logging.getLogger(__name__)

EVERY = 2
"""Acknowledge at least every EVERY-th packet with DATA (RFC 9260 6.2: SHOULD, every 2nd)."""

_ORIGINAL_SEND_SACK = RTCSctpTransport._send_sack


async def send_sack(self: RTCSctpTransport) -> None:
    """Send the SACK now if RFC 9260 asks for it now, else when the loop is next idle."""
    unacked = getattr(self, "_pp_unacked_packets", 0) + 1
    if unacked >= EVERY or self._sack_duplicates or self._sack_misordered:
        self._pp_unacked_packets = 0
        await _ORIGINAL_SEND_SACK(self)
        return
    self._pp_unacked_packets = unacked
    if not getattr(self, "_pp_sack_scheduled", False):
        self._pp_sack_scheduled = True
        asyncio.get_running_loop().call_soon(_deferred, self)


def _deferred(self: RTCSctpTransport) -> None:
    self._pp_sack_scheduled = False
    if self._sack_needed and self._pp_unacked_packets:
        self._pp_unacked_packets = 0
        asyncio.ensure_future(_send_deferred(self))


async def _send_deferred(self: RTCSctpTransport) -> None:
    try:
        await _ORIGINAL_SEND_SACK(self)
    except ConnectionError:  # the DTLS transport closed meanwhile: nothing left to acknowledge
        logger.debug("deferred SACK not sent: transport closed")


def install(enabled: bool = True) -> None:
    """Wrap aiortc's `_send_sack` (or restore it with `enabled=False`)."""
    enabled = enabled and versions.applies(__name__, CHECKED)
    RTCSctpTransport._send_sack = (  # type: ignore[method-assign]
        send_sack if enabled else _ORIGINAL_SEND_SACK
    )
