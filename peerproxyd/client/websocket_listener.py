"""The native client's side of a WebSocket stream: accept a local WebSocket upgrade and carry
it over a stream to the device (docs/protocol.md §12)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from multidict import CIMultiDict

from peerproxyd.errors import PeerGoneError, StreamResetError
from peerproxyd.protocol import ErrorCode, RequestHead
from peerproxyd.protocol.http_headers import (
    WEBSOCKET_HANDSHAKE,
    downstream_response_headers,
    strip_hop_by_hop,
)
from peerproxyd.protocol.websocket import MAX_MESSAGE
from peerproxyd.tunnel.channel import ChannelLink
from peerproxyd.tunnel.websocket_relay import CLOSE_TIMEOUT, WebSocketRelay

MAX_REFUSAL_BODY = 64 * 1024  # bytes of a refused upgrade's body passed on


def is_websocket_upgrade(request: web.Request) -> bool:
    connection = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in connection
    )


def _head(request: web.Request, service: str) -> RequestHead:
    protocols = request.headers.getall("Sec-WebSocket-Protocol", [])
    headers = [
        (n, v)
        for n, v in strip_hop_by_hop(request.headers.items())
        if n.lower() not in WEBSOCKET_HANDSHAKE and n.lower() != "x-forwarded-proto"
    ]
    headers += [("sec-websocket-protocol", p) for p in protocols]
    headers.append(("X-Forwarded-Proto", request.scheme))
    return RequestHead(
        method="GET", target=request.raw_path, headers=tuple(headers), service=service,
        websocket=True,
    )


async def serve_local_websocket(
    request: web.Request, link: ChannelLink, service: str, *, max_message: int = MAX_MESSAGE
) -> web.StreamResponse:
    """Answer one local upgrade request: 101 and a relay, or the device's refusal."""
    try:
        stream = link.open_stream(_head(request, service))
        head, ended = await stream.response
    except (StreamResetError, PeerGoneError) as exc:
        return _text(502, f"websocket to {service} failed: {exc}")
    except asyncio.CancelledError:  # the local client went away before the answer
        stream.reset(ErrorCode.CANCEL, "the local websocket client went away")
        raise
    if head.status != 101 or ended:
        body = b""
        try:
            while len(body) < MAX_REFUSAL_BODY and (chunk := await stream.read()):
                body += chunk
        except (StreamResetError, PeerGoneError):
            pass
        if stream.is_open:
            stream.reset(ErrorCode.CANCEL, "refusal read")
        status = head.status if head.status != 101 else 502
        headers = CIMultiDict(
            (n, v) for n, v in downstream_response_headers(head.headers)
            if n.lower() != "content-length"
        )
        return web.Response(status=status, headers=headers, body=body[:MAX_REFUSAL_BODY])

    chosen = head.get("sec-websocket-protocol")
    ws = web.WebSocketResponse(
        protocols=(chosen,) if chosen else (),
        autoping=True,
        max_msg_size=max_message,
        timeout=CLOSE_TIMEOUT,
    )
    for name, value in downstream_response_headers(head.headers):
        if name.lower() not in WEBSOCKET_HANDSHAKE:
            ws.headers.add(name, value)
    try:
        await ws.prepare(request)
    except BaseException:
        stream.reset(ErrorCode.CANCEL, "the local websocket handshake failed")
        raise

    async def device_gone() -> None:
        # The device reset the stream (its upstream broke): end the local connection the
        # same way, without a close frame (the client sees 1006).
        if request.transport is not None:
            request.transport.close()

    relay = WebSocketRelay(
        ws,
        stream,
        lost_code=ErrorCode.CANCEL,
        lost_reason="the local websocket client went away",
        on_stream_lost=device_gone,
        max_message=max_message,
    )
    await relay.run()
    return ws


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers={"X-Peerproxy-Error": "1"})
