"""The seam between one signaling instance and the engine several instances share.

server.py keeps who is online here (its `Registry`); redis.py (`RedisCluster`) shares
presence, routing, registration and rate limits between instances. Each knows the other only
through a protocol of this module: the server calls its `Cluster`, and the cluster calls the
instance's `LocalRegistry` back for what other instances publish.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web


class LocalRegistry(Protocol):
    """What the cluster asks of this instance's registry (server.py's `Registry`)."""

    def held_devices(self) -> list[tuple[str, str]]:
        """(device id, hello id) of every device registered here."""
        ...

    def deliver_routed(self, sender: str, to: str, kind: str, text: str) -> bool:
        """Queue a message from another instance for `to`; False if `to` is not here."""
        ...

    def undeliverable(self, sender: str, to: str, kind: str) -> None:
        """Another instance could not deliver `sender`'s message to `to`."""
        ...

    def evict(self, device_id: str, hello_id: str, why: str) -> None:
        """Connection `hello_id` no longer holds `device_id`."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in a task the instance cancels on shutdown."""
        ...


class Cluster(Protocol):
    """The engine several instances share (redis.RedisCluster).

    `claim` raises ConnectionError when the engine is unreachable; the others do not:
    `allow` then allows (the per-connection bucket still holds), `route` reports offline.
    """

    instance: str
    up: bool

    def new_peer_id(self) -> str: ...
    def client_key(self, request: web.Request) -> str: ...
    async def allow(self, client: str) -> bool: ...
    async def claim(self, device_id: str, hello_id: str) -> None: ...
    async def release(self, device_id: str, hello_id: str) -> None: ...
    async def route(self, sender: str, to: str, kind: str, text: str) -> bool: ...
    async def start(self, registry: LocalRegistry) -> None: ...
    async def stop(self) -> None: ...
