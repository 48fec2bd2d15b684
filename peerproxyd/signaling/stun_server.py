"""A STUN binding responder (RFC 8489), so a self-hosted signaling server is the only server
two peers behind cone NATs need: each learns its public address:port (server-reflexive
candidate) from us, and they connect peer to peer. Relaying (TURN) stays coturn's job.

It answers Binding requests and nothing else: no authentication (there is nothing to protect,
the answer is the sender's own address), no state, one datagram out per datagram in. The
reply to a 20-byte request is 40 bytes (52 for IPv6); messages without the RFC 5389 magic
cookie, with a bad FINGERPRINT, or of any other class or method get no reply at all, so the
responder talks to no one except in answer to a well-formed request. Message encoding: aioice.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any, cast

from aioice import stun

logger = logging.getLogger(__name__)

DEFAULT_PORT = 3478
MAGIC_COOKIE = 0x2112A442


def binding_response(data: bytes, addr: tuple[str, int]) -> bytes | None:
    """The response to `data` received from `addr`, or None if it deserves none."""
    if len(data) < stun.HEADER_LENGTH or struct.unpack_from("!I", data, 4)[0] != MAGIC_COOKIE:
        return None
    try:
        request = stun.parse_message(data)
    except (ValueError, struct.error):
        return None
    if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
        return None
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = (addr[0], addr[1])
    response.add_fingerprint()
    return bytes(response)


class StunResponder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        response = binding_response(data, (addr[0], addr[1]))
        if response is not None and self.transport is not None:
            self.transport.sendto(response, addr)
            self.answered += 1

    def error_received(self, exc: Exception) -> None:
        logger.debug("STUN: %s", exc)  # e.g. ICMP port unreachable from a vanished client


async def start(
    host: str, port: int = DEFAULT_PORT
) -> tuple[asyncio.DatagramTransport, StunResponder]:
    """Answer STUN binding requests on UDP host:port until the transport is closed."""
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        StunResponder, local_addr=(host, port)
    )
    bound = transport.get_extra_info("sockname")
    logger.info("STUN responder on udp %s:%s", bound[0], bound[1])
    return transport, protocol


def cleanup_ctx(host: str, port: int = DEFAULT_PORT) -> Any:
    """An aiohttp `cleanup_ctx` entry running the responder with the application.

    A port already in use (another server, coturn on the same host) is logged and skipped:
    signaling works without STUN, and peers can still use any STUN server they are given."""

    async def responder(app: Any) -> AsyncIterator[None]:
        try:
            transport, _ = await start(host, port)
        except OSError as exc:
            logger.warning("STUN responder not started on udp %s:%s: %s", host, port, exc)
            yield
            return
        try:
            yield
        finally:
            transport.close()

    return responder


async def _serve(host: str, port: int) -> None:
    transport, _ = await start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> None:
    """`python -m peerproxyd.signaling.stun_server --host 0.0.0.0 --port 3478` (tests, bench)."""
    parser = argparse.ArgumentParser(prog="python -m peerproxyd.signaling.stun_server")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
