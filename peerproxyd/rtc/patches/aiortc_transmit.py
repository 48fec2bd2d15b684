"""Send new SCTP data without walking aiortc's whole sent queue each time.

Why: aiortc 1.16's `RTCSctpTransport._transmit` runs after every SACK and every queued
message, and each time it first walks the whole sent queue (every chunk in flight: ~400-900 in
a bulk transfer on loopback) looking for chunks marked for retransmission, although there are
none unless a SACK reported a gap or the T3 timer expired. It was the sender's largest
single Python cost in bench/datachannel.py's profiles (12 % of its time, 2 s of 5 s spent
under SACK handling), and it grows with the chunks in flight (bench/README.md, finding 2).

So each transport carries a flag, "a chunk may be marked for retransmission", set before
aiortc processes a SACK with gap blocks and before the T3 timer's handler marks chunks. While
it is clear and no FORWARD TSN is pending, `_transmit` runs only its last part, sending new
chunks within the congestion window and burst limit exactly as aiortc does; otherwise it runs
aiortc's own `_transmit` and then clears the flag if no chunk is left marked.

`install()` wraps `_transmit`, `_receive_sack_chunk` and `_t3_expired` of RTCSctpTransport.
Regression test: tests/rtc/patches/test_aiortc_speedups.py.
"""

from __future__ import annotations

import time
from typing import Any

from aiortc.rtcsctptransport import USERDATA_MAX_LENGTH, RTCSctpTransport, SackChunk

from peerproxyd.rtc.patches import versions

CHECKED = {"aiortc": ("1.16.0",)}
"""The aiortc versions this patch was read against (versions.py)."""

_ORIGINAL_TRANSMIT = RTCSctpTransport._transmit
_ORIGINAL_RECEIVE_SACK = RTCSctpTransport._receive_sack_chunk
_ORIGINAL_T3_EXPIRED = RTCSctpTransport._t3_expired


async def transmit(self: RTCSctpTransport) -> None:
    """aiortc's `_transmit`, without the retransmission scan when nothing can be marked."""
    if getattr(self, "_pp_retransmit_possible", False) or self._forward_tsn_chunk is not None:
        await _ORIGINAL_TRANSMIT(self)
        self._pp_retransmit_possible = any(c._retransmit for c in self._sent_queue)
        return
    # The tail of aiortc's _transmit: new data, within cwnd and the burst limit.
    burst = (2 if self._fast_recovery_exit is not None else 4) * USERDATA_MAX_LENGTH
    cwnd = min(self._flight_size + burst, self._cwnd)
    while self._outbound_queue and self._flight_size < cwnd:
        chunk = self._outbound_queue.popleft()
        self._sent_queue.append(chunk)
        self._flight_size_increase(chunk)
        chunk._sent_count += 1
        chunk._sent_time = time.time()
        await self._send_chunk(chunk)
        if not self._t3_handle:
            self._t3_start()


async def receive_sack_chunk(self: RTCSctpTransport, chunk: SackChunk) -> None:
    if chunk.gaps:  # aiortc may strike chunks missing from the gap blocks
        self._pp_retransmit_possible = True
    await _ORIGINAL_RECEIVE_SACK(self, chunk)


def t3_expired(self: RTCSctpTransport) -> None:
    self._pp_retransmit_possible = True  # aiortc marks every chunk in flight
    _ORIGINAL_T3_EXPIRED(self)


def install(enabled: bool = True) -> None:
    """Wrap the three methods (or restore aiortc's with `enabled=False`)."""
    enabled = enabled and versions.applies(__name__, CHECKED)
    cls: Any = RTCSctpTransport
    cls._transmit = transmit if enabled else _ORIGINAL_TRANSMIT
    cls._receive_sack_chunk = receive_sack_chunk if enabled else _ORIGINAL_RECEIVE_SACK
    cls._t3_expired = t3_expired if enabled else _ORIGINAL_T3_EXPIRED
