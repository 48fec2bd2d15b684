"""Router: one stream -> one request to a configured local service, streamed both ways."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from peerproxyd.config import ServiceSettings
from peerproxyd.device.metrics import OTHER_SERVICE, DaemonMetrics
from peerproxyd.device.websocket_upstream import refuse_websocket_redirects, serve_websocket
from peerproxyd.errors import PeerGoneError, StreamResetError
from peerproxyd.protocol import ErrorCode, RequestHead, ResponseHead
from peerproxyd.protocol.http_headers import (
    BadRequest,
    BodyCounter,
    check_request,
    downstream_response_headers,
    has_body,
    service_request_headers,
)
from peerproxyd.tunnel.channel import ChannelStream
from peerproxyd.tunnel.replies import reply
from peerproxyd.tunnel.websocket_relay import WebSocketRelay

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
        middlewares=(refuse_websocket_redirects,),
    )


class Router:
    def __init__(
        self, services: dict[str, ServiceSettings], session: aiohttp.ClientSession,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self.services = services
        self.session = session
        self.metrics = metrics if metrics is not None else DaemonMetrics()
        self.websockets: set[WebSocketRelay] = set()
        """The open WebSockets."""

    async def handle(
        self, stream: ChannelStream, head: RequestHead, end_stream: bool, *, peer: str,
        address: str | None = None,
    ) -> None:
        """Serve one request; never raises (errors become responses or a stream reset).
        `peer` names the viewer in logs; `address` is its IP address, if known."""
        started = time.monotonic()
        status = 0
        if head.websocket and (service := self.services.get(head.service)):
            try:
                status = await serve_websocket(
                    self.session, service, stream, head, peer=peer, address=address,
                    live=self.websockets, on_error=self.metrics.error)
            finally:
                self.account(stream, head, status, started)
            return
        try:
            status = await self._forward(stream, head, end_stream, address)
        except (StreamResetError, PeerGoneError) as exc:
            logger.debug("stream %d abandoned by the viewer: %s", stream.id, exc)
            status = 499
            self.metrics.error("peer_gone")
        except asyncio.CancelledError:  # the peer session closed
            status = 499
            self.metrics.error("peer_gone")
            raise
        except Exception:  # a bug: keep serving everyone else
            logger.exception("stream %d failed", stream.id)
            self.metrics.error("internal")
            stream.reset(ErrorCode.INTERNAL_ERROR, "internal error")
        finally:
            self.account(stream, head, status, started)
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

    def account(self, stream: ChannelStream, head: RequestHead, status: int,
                started: float) -> None:
        """Count one finished request in the metrics (`started`: time.monotonic())."""
        service = head.service if head.service in self.services else OTHER_SERVICE
        head_at = stream.head_sent_at
        self.metrics.request(service, status, received=stream.bytes_in, sent=stream.bytes_out,
                             head_seconds=None if head_at is None else head_at - started)

    async def _forward(
        self, stream: ChannelStream, head: RequestHead, end_stream: bool, address: str | None
    ) -> int:
        service = self.services.get(head.service)
        if service is None:
            self.metrics.error("unknown_service")
            return await reply(stream, 404, f"unknown service {head.service!r}")
        try:
            checked = check_request(head, max_body=service.max_request_body)
            counter = BodyCounter(checked.content_length, service.max_request_body)
            if end_stream:
                counter.end()
        except BadRequest as exc:
            logger.info("stream %d refused (%d): %s", stream.id, exc.status, exc)
            self.metrics.error("bad_request")
            return await reply(stream, exc.status, str(exc))
        # The service's base URL and an origin-form target that cannot leave its path: the
        # only URLs this daemon ever requests.
        url = URL(service.upstream + checked.target, encoded=True)
        # No read timeout once the head is there: event streams, long polls and cameras may
        # be quiet for as long as they like (read_timeout bounds the wait for the head).
        timeout = aiohttp.ClientTimeout(
            total=None, connect=service.connect_timeout, sock_connect=service.connect_timeout
        )
        moved = _Progress()
        head_sent = False
        try:
            request = self.session.request(
                head.method,
                url,
                headers=CIMultiDict(service_request_headers(head.headers, service, address)),
                data=None if end_stream else _request_body(stream, counter, moved),
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=SKIP_AUTO_HEADERS,
            )
            async with await _head_within(request, moved, service.read_timeout) as upstream:
                headers = downstream_response_headers(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers
                )
                with_body = has_body(head.method, upstream.status)
                stream.send_response(
                    ResponseHead(status=upstream.status, headers=tuple(headers)),
                    end_stream=not with_body,
                )
                head_sent = True
                if with_body:
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
        except (aiohttp.ClientError, TimeoutError) as exc:
            if counter.error is not None:
                # The request body broke the rules: aiohttp dropped the upstream connection
                # before any offending byte was written.
                error = counter.error
                logger.info("stream %d refused (%d): %s", stream.id, error.status, error)
                self.metrics.error("bad_request")
                if head_sent:
                    stream.reset(ErrorCode.CANCEL, str(error))
                    return error.status
                return await reply(stream, error.status, str(error))
            if isinstance(exc, (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError)):
                if head_sent:
                    raise
                self.metrics.error("upstream_down")
                return await reply(stream, 502, f"upstream {head.service} unreachable: {exc}")
            if isinstance(exc, TimeoutError):
                self.metrics.error("upstream_timeout")
                if head_sent:
                    stream.reset(ErrorCode.UPSTREAM_ERROR, "upstream timed out")
                    return 504
                return await reply(stream, 504, f"upstream {head.service} timed out {exc}".strip())
            self.metrics.error("upstream_error")
            if head_sent:
                stream.reset(ErrorCode.UPSTREAM_ERROR, f"upstream failed: {exc}")
                return 502
            return await reply(stream, 502, f"upstream {head.service} failed: {exc}")


class _Progress:
    """When the request last moved (started, or a body chunk went upstream)."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def moved(self) -> None:
        self.at = time.monotonic()


async def _head_within(
    request: Awaitable[aiohttp.ClientResponse], progress: _Progress, timeout: float
) -> aiohttp.ClientResponse:
    """The upstream's response once its head arrives; TimeoutError when `timeout` seconds
    pass in which neither a head came nor the request body moved."""
    task = asyncio.ensure_future(request)
    try:
        while (wait := progress.at + timeout - time.monotonic()) > 0:
            done, _ = await asyncio.wait({task}, timeout=wait)
            if done:
                return task.result()
        raise TimeoutError(f"no response head within {timeout:g} s")
    except BaseException:
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            task.result().close()
        raise


async def _request_body(
    stream: ChannelStream, counter: BodyCounter, progress: _Progress
) -> AsyncIterator[bytes]:
    """The viewer's body as it arrives; BadRequest (recorded in `counter.error`) before a chunk
    that would break the declared length or the service's limit."""
    while chunk := await stream.read():
        counter.add(len(chunk))
        progress.moved()
        yield chunk
    counter.end()
