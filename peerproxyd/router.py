"""Router: one stream -> one request to a configured local service, streamed both ways."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from peerproxyd.channel import ChannelStream
from peerproxyd.config import ServiceSettings
from peerproxyd.errors import PeerGoneError, StreamResetError
from peerproxyd.http_headers import (
    downstream_response_headers,
    has_body,
    upstream_request_headers,
)
from peerproxyd.protocol import ErrorCode, RequestHead, ResponseHead
from peerproxyd.websocket_upstream import serve_websocket

logger = logging.getLogger(__name__)
access_log = logging.getLogger("peerproxyd.access")

# The upstream's own headers, not ours: aiohttp must not add these by itself.
SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept-Encoding", "Content-Type"})


def new_upstream_session() -> aiohttp.ClientSession:
    """One pooled client session for every upstream; bodies are passed on still encoded."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=256),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class Router:
    def __init__(
        self, services: dict[str, ServiceSettings], session: aiohttp.ClientSession
    ) -> None:
        self.services = services
        self.session = session

    async def handle(
        self, stream: ChannelStream, head: RequestHead, end_stream: bool, *, peer: str
    ) -> None:
        """Serve one request; never raises (errors become responses or a stream reset)."""
        if head.websocket and (service := self.services.get(head.service)):
            await serve_websocket(self.session, service, stream, head, peer=peer)
            return
        started = time.monotonic()
        status = 0
        try:
            status = await self._forward(stream, head, end_stream, peer)
        except (StreamResetError, PeerGoneError) as exc:
            logger.debug("stream %d abandoned by the viewer: %s", stream.id, exc)
            status = 499
        except asyncio.CancelledError:  # the peer session closed
            status = 499
            raise
        except Exception:  # a bug: keep serving everyone else
            logger.exception("stream %d failed", stream.id)
            stream.reset(ErrorCode.INTERNAL_ERROR, "internal error")
        finally:
            # The response is complete but the request body may still be arriving (an error
            # reply, or an upstream that answered early): tell the viewer to stop sending.
            if stream.is_open:
                stream.reset(ErrorCode.NO_ERROR, "response complete")
            access_log.info(
                "%s %s %s %d %dB %.1fms peer=%s",
                head.service,
                head.method,
                head.target,
                status,
                stream.bytes_out,
                (time.monotonic() - started) * 1000,
                peer,
            )

    async def _forward(
        self, stream: ChannelStream, head: RequestHead, end_stream: bool, peer: str
    ) -> int:
        service = self.services.get(head.service)
        if service is None:
            return await _reply(stream, 404, f"unknown service {head.service!r}")
        url = URL(service.upstream + head.target, encoded=True)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=service.connect_timeout,
            sock_connect=service.connect_timeout,
            sock_read=service.read_timeout,
        )
        head_sent = False
        try:
            async with self.session.request(
                head.method,
                url,
                headers=CIMultiDict(upstream_request_headers(head.headers, peer=peer)),
                data=None if end_stream else _request_body(stream),
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=SKIP_AUTO_HEADERS,
            ) as upstream:
                headers = downstream_response_headers(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers
                )
                body = has_body(head.method, upstream.status)
                stream.send_response(
                    ResponseHead(status=upstream.status, headers=tuple(headers)),
                    end_stream=not body,
                )
                head_sent = True
                if body:
                    # FINAL rides on the last chunk when the upstream body is known complete,
                    # saving a message (and its SCTP packet and SACK) per response.
                    ended = False
                    while not ended and (chunk := await upstream.content.readany()):
                        ended = upstream.content.at_eof()
                        await stream.write(chunk, end=ended)
                    if not ended:
                        await stream.end()
                return upstream.status
        except (StreamResetError, PeerGoneError):
            raise
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
            if head_sent:
                raise
            return await _reply(stream, 502, f"upstream {head.service} unreachable: {exc}")
        except TimeoutError as exc:
            if head_sent:
                stream.reset(ErrorCode.UPSTREAM_ERROR, "upstream timed out")
                return 504
            return await _reply(stream, 504, f"upstream {head.service} timed out {exc}".strip())
        except aiohttp.ClientError as exc:
            if head_sent:
                stream.reset(ErrorCode.UPSTREAM_ERROR, f"upstream failed: {exc}")
                return 502
            return await _reply(stream, 502, f"upstream {head.service} failed: {exc}")


async def _request_body(stream: ChannelStream) -> AsyncIterator[bytes]:
    while chunk := await stream.read():
        yield chunk


async def _reply(stream: ChannelStream, status: int, text: str) -> int:
    """A short text/plain response made by peerproxyd itself."""
    if len(text) > 300:  # e.g. a parser error quoting the upstream's garbage
        text = text[:297] + "..."
    body = (text + "\n").encode()
    stream.send_response(
        ResponseHead(
            status=status,
            headers=(
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("X-Peerproxy-Error", "1"),
            ),
        )
    )
    await stream.write(body, end=True)
    return status
