"""Who may register which device id on the signaling server.

`DeviceAuthenticator` is the one-method interface the server depends on, in two flavours: a
plain `verify` the server runs in a worker thread (`SecretBinding`, in memory), or an
`async def verify` it awaits (`signaling_redis.RedisSecretBinding`, shared by every instance).
`authenticate()` calls either. Both are trust on first use: the first registration of an id
binds it to its secret. A later release replaces them with key-based identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import os
import threading
from typing import Any, Protocol

logger = logging.getLogger(__name__)

SALT_SIZE = 16


class DeviceAuthenticator(Protocol):
    def verify(self, device_id: str, credentials: dict[str, Any]) -> bool:
        """True if `credentials` (the whole register message) may register `device_id`.

        Called from a worker thread (it may be slow on purpose); must be thread-safe.
        """
        ...


class AsyncDeviceAuthenticator(Protocol):
    async def verify(self, device_id: str, credentials: dict[str, Any]) -> bool:
        """As DeviceAuthenticator.verify, awaited on the event loop (must not block it).

        May raise ConnectionError when the store behind it is unreachable.
        """
        ...


Authenticator = DeviceAuthenticator | AsyncDeviceAuthenticator


async def authenticate(
    authenticator: Authenticator, device_id: str, credentials: dict[str, Any]
) -> bool:
    """Run either kind of authenticator without blocking the event loop."""
    if inspect.iscoroutinefunction(authenticator.verify):
        return bool(await authenticator.verify(device_id, credentials))
    return bool(await asyncio.to_thread(authenticator.verify, device_id, credentials))


def presented_secret(credentials: dict[str, Any]) -> str | None:
    """The secret of a register message, or None if it has none worth hashing."""
    secret = credentials.get("secret")
    return secret if isinstance(secret, str) and secret else None


def hash_secret(secret: str, salt: bytes, cost: int) -> bytes:
    """scrypt(secret, salt) with N=`cost`, r=8, p=1: 32 bytes. Slow on purpose."""
    return hashlib.scrypt(
        secret.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=cost,
        r=8,
        p=1,
        maxmem=256 * cost * 8 + 1024 * 1024,
        dklen=32,
    )


class SecretBinding:
    """In-memory binding of device id -> salted scrypt hash of its secret.

    The first registration of an id binds it; later ones must present the same secret.
    Bindings live as long as the process. At most `max_bindings` ids are bound; beyond
    that new ids are refused, so strangers cannot grow the table without bound.
    `cost` is scrypt's N (2**14: about 50 ms and 16 MiB per check); tests lower it.
    """

    def __init__(self, *, cost: int = 2**14, max_bindings: int = 10_000) -> None:
        self.cost = cost
        self.max_bindings = max_bindings
        self._bindings: dict[str, tuple[bytes, bytes]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._bindings)

    def _hash(self, secret: str, salt: bytes) -> bytes:
        return hash_secret(secret, salt, self.cost)

    def verify(self, device_id: str, credentials: dict[str, Any]) -> bool:
        secret = presented_secret(credentials)
        if secret is None:
            return False
        # Hash outside the lock (checks run in parallel threads); check-and-bind inside it,
        # so that two first registrations cannot both win.
        with self._lock:
            binding = self._bindings.get(device_id)
            full = len(self._bindings) >= self.max_bindings
        if binding is None:
            if full:
                logger.warning("refusing device %s: %d ids bound already",
                               device_id, len(self._bindings))
                return False
            salt = os.urandom(SALT_SIZE)
            digest = self._hash(secret, salt)
            with self._lock:
                binding = self._bindings.get(device_id)
                if binding is None:
                    if len(self._bindings) >= self.max_bindings:
                        return False
                    self._bindings[device_id] = (salt, digest)
                    logger.info("device id %s bound to its secret", device_id)
                    return True
        salt, digest = binding
        return hmac.compare_digest(digest, self._hash(secret, salt))

    def forget(self, device_id: str) -> None:
        """Drop a binding (an operator reset); the next registration binds the id anew."""
        with self._lock:
            self._bindings.pop(device_id, None)
