"""The daemon's side of a WebSocket stream: open the WebSocket upstream, then relay.

Router.handle() hands a request head with `websocket: true` here (docs/protocol.md §12). The
upgrade is aiohttp's `ws_connect` to the configured service; a refusal is answered like any
response (the upstream's status, a short text body), success with 101 and the records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from yarl import URL

from peerproxyd.config import ServiceSettings
from peerproxyd.errors import PeerGoneError, StreamResetError
from peerproxyd.protocol import ErrorCode, RequestHead, ResponseHead
from peerproxyd.protocol.http_headers import (
    WEBSOCKET_HANDSHAKE,
    BadRequest,
    check_request,
    downstream_response_headers,
    service_request_headers,
)
from peerproxyd.protocol.websocket import MAX_MESSAGE
from peerproxyd.tunnel.channel import ChannelStream
from peerproxyd.tunnel.replies import reply
from peerproxyd.tunnel.websocket_relay import CLOSE_TIMEOUT, WebSocketRelay

logger = logging.getLogger(__name__)
access_log = logging.getLogger("peerproxyd.access")


REDIRECTS = frozenset({301, 302, 303, 307, 308})


async def refuse_websocket_redirects(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Client middleware of the upstream session: a WebSocket handshake answered with a
    redirect fails with that status. `ws_connect` has no `allow_redirects` and would follow
    it, to any host the upstream names: a viewer could reach hosts that are no upstream
    through an open redirect in the app (SSRF). Browsers do not follow it either."""
    response = await handler(request)
    if response.status in REDIRECTS and "Upgrade" in request.headers:
        location = response.headers.get("Location", "")
        logger.warning("upstream %s redirected a websocket handshake to %r: not followed",
                       request.url.origin(), location[:200])
        response.release()
        raise aiohttp.WSServerHandshakeError(
            response.request_info, (), status=response.status,
            message=f"redirect to {location[:200]!r} not followed", headers=response.headers)
    return response


def requested_protocols(head: RequestHead) -> list[str]:
    """The subprotocols of `sec-websocket-protocol` (comma-separated, possibly repeated)."""
    return [
        p.strip()
        for name, value in head.headers
        if name.lower() == "sec-websocket-protocol"
        for p in value.split(",")
        if p.strip()
    ]


def handshake_request_headers(
    head: RequestHead, service: ServiceSettings, address: str | None
) -> list[tuple[str, str]]:
    return [
        (n, v)
        for n, v in service_request_headers(head.headers, service, address)
        if n.lower() not in WEBSOCKET_HANDSHAKE
    ]


async def serve_websocket(
    session: aiohttp.ClientSession,
    service: ServiceSettings,
    stream: ChannelStream,
    head: RequestHead,
    *,
    peer: str,
    address: str | None = None,
    max_message: int = MAX_MESSAGE,
    live: set[WebSocketRelay] | None = None,
    on_error: Callable[[str], None] = lambda kind: None,
) -> int:
    """Serve one WebSocket stream; never raises except CancelledError. While it is open
    its relay is in `live` (so a draining daemon can close it with 1001). Returns the
    status (101 once upgraded); `on_error(kind)` hears each error (device/metrics.py)."""
    started = time.monotonic()
    status, code = 0, None
    relay: WebSocketRelay | None = None
    try:
        status, relay = await _open(session, service, stream, head, address, max_message,
                                    on_error)
        if relay is not None:
            if live is not None:
                live.add(relay)
            try:
                await relay.run()
            finally:
                if live is not None:
                    live.discard(relay)
            code = relay.close_code
    except (StreamResetError, PeerGoneError) as exc:
        logger.debug("websocket stream %d abandoned by the viewer: %s", stream.id, exc)
        status = status or 499
        on_error("peer_gone")
    except asyncio.CancelledError:
        status = status or 499
        raise
    except Exception:  # a bug: keep serving everyone else
        logger.exception("websocket stream %d failed", stream.id)
        on_error("internal")
        stream.reset(ErrorCode.INTERNAL_ERROR, "internal error")
    finally:
        if stream.is_open and relay is None:
            stream.reset(ErrorCode.NO_ERROR, "response complete")
        access_log.info(
            "%s WS %s %d %dB %.1fms%s peer=%s",
            head.service,
            head.target,
            status,
            stream.bytes_out,
            (time.monotonic() - started) * 1000,
            f" code={code}" if code is not None else "",
            peer,
        )
    return status


async def _open(
    session: aiohttp.ClientSession,
    service: ServiceSettings,
    stream: ChannelStream,
    head: RequestHead,
    address: str | None,
    max_message: int,
    on_error: Callable[[str], None],
) -> tuple[int, WebSocketRelay | None]:
    try:  # the same policy as every request: no path escape, no smuggled headers
        target = check_request(head).target
    except BadRequest as exc:
        logger.info("websocket stream %d refused (%d): %s", stream.id, exc.status, exc)
        on_error("bad_request")
        return exc.status, await _refuse(stream, exc.status, str(exc))
    url = URL(service.upstream + target, encoded=True)
    try:
        async with asyncio.timeout(service.connect_timeout + service.read_timeout):
            ws = await session.ws_connect(
                url,
                protocols=requested_protocols(head),
                headers=handshake_request_headers(head, service, address),
                autoping=True,
                max_msg_size=max_message,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
            )
    except aiohttp.WSServerHandshakeError as exc:
        # The upstream answered, but not with an upgrade: its status (or 502 if it said 101
        # with a broken handshake).
        status = exc.status if 200 <= exc.status <= 599 else 502
        return status, await _refuse(stream, status, f"upstream {head.service} refused the "
                                     f"websocket: {exc.status} {exc.message}")
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        on_error("upstream_down")
        return 502, await _refuse(stream, 502, f"upstream {head.service} unreachable: {exc}")
    except TimeoutError:
        on_error("upstream_timeout")
        return 504, await _refuse(stream, 504, f"upstream {head.service} timed out")
    except aiohttp.ClientError as exc:
        on_error("upstream_error")
        return 502, await _refuse(stream, 502, f"upstream {head.service} failed: {exc}")

    # The 101's own headers (a Set-Cookie, say): aiohttp keeps that response only privately.
    response = getattr(ws, "_response", None)
    raw = response.raw_headers if response is not None else ()
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    kept = [
        (n, v) for n, v in downstream_response_headers(headers)
        if n.lower() not in WEBSOCKET_HANDSHAKE
    ]
    if ws.protocol:
        kept.append(("sec-websocket-protocol", ws.protocol))
    try:
        stream.send_response(ResponseHead(status=101, headers=tuple(kept)))
    except BaseException:
        await ws.close(code=1001)
        raise

    async def viewer_gone() -> None:
        await ws.close(code=1001)

    relay = WebSocketRelay(
        ws,
        stream,
        lost_code=ErrorCode.UPSTREAM_ERROR,
        lost_reason="upstream websocket connection lost",
        on_stream_lost=viewer_gone,
        max_message=max_message,
    )
    return 101, relay


async def _refuse(stream: ChannelStream, status: int, text: str) -> None:
    """Answer the upgrade with `status` (no relay follows)."""
    await reply(stream, status, text)
