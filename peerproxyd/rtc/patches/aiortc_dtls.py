"""Skip aiortc's empty DTLS flush after each received record.

Why: aiortc 1.16's `RTCDtlsTransport._recv_next` calls `_write_ssl()` after decrypting every
datagram, in case OpenSSL produced something to send (a handshake flight, an alert). Once the
channel carries data it almost never has: `_write_ssl` then asks pyOpenSSL's `bio_read`, which
raises and catches `WantReadError`, per datagram. In bench/datachannel.py's profiles that was
~6 % of a bulk receiver's CPU and ~4 % of the sender's (its SACKs).

So `_write_ssl` first asks the memory BIO how many bytes it holds (BIO_get_mem_data, O(1),
no exception) and returns at once when it holds none: exactly what aiortc's version does then,
minus the exception. pyOpenSSL keeps the BIO in `Connection._from_ssl` (a private name: the
regression test fails if that changes, and `install()` then leaves aiortc's method alone).

`install()` wraps `RTCDtlsTransport._write_ssl`. Regression test:
tests/rtc/patches/test_aiortc_speedups.py.
"""

from __future__ import annotations

from typing import Any

from aiortc.rtcdtlstransport import RTCDtlsTransport
from OpenSSL._util import ffi, lib

from peerproxyd.rtc.patches import versions

CHECKED = {"aiortc": ("1.16.0",)}
"""The aiortc versions this patch was read against (versions.py)."""

_ORIGINAL_WRITE_SSL = RTCDtlsTransport._write_ssl


def pending(ssl: Any) -> int:
    """Bytes OpenSSL has written to the connection's outgoing memory BIO and nobody read."""
    return int(lib.BIO_get_mem_data(ssl._from_ssl, ffi.NULL))


async def write_ssl(self: RTCDtlsTransport) -> None:
    """aiortc's `_write_ssl`, returning at once when there is nothing to send."""
    if pending(self._ssl) > 0:
        await _ORIGINAL_WRITE_SSL(self)


def supported() -> bool:
    from OpenSSL import SSL

    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    return getattr(connection, "_from_ssl", None) is not None and pending(connection) == 0


def install(enabled: bool = True) -> None:
    """Wrap aiortc's `_write_ssl` (or restore it with `enabled=False`, or if unsupported)."""
    use = enabled and versions.applies(__name__, CHECKED) and supported()
    RTCDtlsTransport._write_ssl = (  # type: ignore[method-assign]
        write_ssl if use else _ORIGINAL_WRITE_SSL
    )
