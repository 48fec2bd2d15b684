"""Take the next in-order TSN without aiortc's sort and filter.

Why: aiortc 1.16's `RTCSctpTransport._mark_received` adds every received TSN to a set, sorts
it, and rebuilds its duplicate list and its set of out-of-order TSNs, for each DATA chunk:
~6 % of a bulk receiver's CPU in bench/datachannel.py's profiles. In the common case (no gap,
no duplicate pending, the chunk is the next TSN) all that ends with the cumulative TSN one
higher and both collections empty, which is what this fast path does directly; every other
case goes to aiortc's own method.

`install()` wraps `RTCSctpTransport._mark_received`. Regression test:
tests/rtc/patches/test_aiortc_speedups.py.
"""

from __future__ import annotations

from aiortc.rtcsctptransport import RTCSctpTransport

from peerproxyd.rtc.patches import versions

CHECKED = {"aiortc": ("1.16.0",)}
"""The aiortc versions this patch was read against (versions.py)."""

_ORIGINAL_MARK_RECEIVED = RTCSctpTransport._mark_received
_MODULO = 2**32


def mark_received(self: RTCSctpTransport, tsn: int) -> bool:
    """aiortc's `_mark_received`: True if `tsn` is a duplicate, else record it."""
    last = self._last_received_tsn
    if (
        last is not None
        and tsn == (last + 1) % _MODULO
        and not self._sack_misordered
        and not self._sack_duplicates
    ):
        self._last_received_tsn = tsn
        return False
    return _ORIGINAL_MARK_RECEIVED(self, tsn)


def install(enabled: bool = True) -> None:
    """Wrap aiortc's `_mark_received` (or restore it with `enabled=False`)."""
    enabled = enabled and versions.applies(__name__, CHECKED)
    RTCSctpTransport._mark_received = (  # type: ignore[method-assign]
        mark_received if enabled else _ORIGINAL_MARK_RECEIVED
    )
