"""The device certificate for aiortc's DTLS, instead of a fresh one per connection.

Why: viewers pin the device's DTLS fingerprint (docs/security.md 1.1, 1.5), so every peer
connection of the daemon must present the one certificate of its identity. aiortc 1.16 has
no way to pass one in: `RTCConfiguration` has no `certificates`, and
`RTCPeerConnection.__init__` calls `RTCCertificate.generateCertificate()` for each
connection, keeping it as the private `_RTCPeerConnection__certificates`.

How: `install()` wraps that classmethod once. Inside `device_certificate(identity)` (the
daemon wraps its whole run in it) it returns the identity's certificate; elsewhere, and in
every other asyncio context of the process (a native client or a test's viewer peer), it
generates a fresh one as before. A ContextVar carries the choice, so the tasks the daemon
starts inherit it and nothing else does; it also saves a key generation per connection.
Regression test: tests/rtc/patches/test_aiortc_certificate.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from aiortc.rtcdtlstransport import RTCCertificate

from peerproxyd.rtc.patches import versions
from peerproxyd.trust.identity import Identity

CHECKED = {"aiortc": ("1.16.0",)}
"""The aiortc versions this patch was read against (versions.py)."""

_current: ContextVar[RTCCertificate | None] = ContextVar("peerproxyd_dtls_certificate",
                                                        default=None)
_generate_fresh = RTCCertificate.generateCertificate.__func__  # type: ignore[attr-defined]


def _generate(cls: type[RTCCertificate]) -> Any:
    certificate = _current.get()
    return certificate if certificate is not None else _generate_fresh(cls)


def install() -> None:
    """Route aiortc's per-connection certificate through the current context (idempotent)."""
    if not versions.applies(__name__, CHECKED):
        return
    RTCCertificate.generateCertificate = classmethod(_generate)  # type: ignore[assignment, method-assign]


def certificate_of(identity: Identity) -> RTCCertificate:
    """aiortc's view of the identity's key and certificate."""
    return RTCCertificate(key=identity.private_key, cert=identity.certificate)


@contextmanager
def device_certificate(identity: Identity) -> Iterator[RTCCertificate]:
    """Every RTCPeerConnection made in this context (and in tasks started from it) uses the
    identity's certificate for DTLS (transport.device_identity enters this one for aiortc)."""
    install()
    certificate = certificate_of(identity)
    token = _current.set(certificate)
    try:
        yield certificate
    finally:
        _current.reset(token)
