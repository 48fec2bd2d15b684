"""The daemon requests nothing but its configured upstreams, even when an upstream redirects
elsewhere (an open redirect in the app, say): a plain request's 3xx goes to the viewer as it
is, and a WebSocket handshake answered with a 3xx is refused with that status, never
followed. The daemon's Router on a real aiortc connection in this process
(tests/support/peer_pair.py), a real aiohttp upstream, and a second real server standing for
an internal host that must never be reached."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from peerproxyd.config import ServiceSettings
from peerproxyd.device.router import Router, new_upstream_session
from peerproxyd.protocol import RequestHead
from peerproxyd.tunnel.channel import ChannelStream
from tests.support.peer_pair import PeerPair


@dataclass
class Net:
    router: Router
    internal_hits: list[str]  # every request the internal host received
    internal: str  # its base URL


async def _site(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    hits: list[str] = []

    async def internal(request: web.Request) -> web.StreamResponse:
        hits.append(request.path_qs)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str("internal secret")
            await ws.close()
            return ws
        return web.Response(text="internal secret")

    inner = web.Application()
    inner.router.add_route("*", "/{tail:.*}", internal)
    inner_runner, inner_port = await _site(inner)
    internal_url = f"http://127.0.0.1:{inner_port}"

    async def go(request: web.Request) -> web.StreamResponse:  # an open redirect
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/go", go)
    runner, port = await _site(app)
    services = {"camera": ServiceSettings(upstream=f"http://127.0.0.1:{port}")}
    async with new_upstream_session() as http:
        yield Net(Router(services, http), hits, internal_url)
    await runner.cleanup()
    await inner_runner.cleanup()


async def answer(stream: ChannelStream) -> tuple[int, dict[str, str], bytes]:
    response, _ = await asyncio.wait_for(stream.response, 20)
    body = b""
    while chunk := await asyncio.wait_for(stream.read(), 20):
        body += chunk
    return response.status, {k.lower(): v for k, v in response.headers}, body


async def test_a_redirect_is_passed_to_the_viewer_not_followed(net: Net) -> None:
    target = f"/go?to={net.internal}/admin"
    async with PeerPair(net.router) as pair:
        head = RequestHead(method="GET", target=target, service="camera")
        status, headers, _ = await answer(pair.viewer.open_stream(head, end_stream=True))
    assert (status, headers["location"]) == (302, f"{net.internal}/admin")
    assert net.internal_hits == []


async def test_a_websocket_handshake_redirect_is_refused_not_followed(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    target = f"/go?to={net.internal}/ws"
    async with PeerPair(net.router) as pair:
        head = RequestHead(method="GET", target=target, service="camera", websocket=True)
        status, _, body = await answer(pair.viewer.open_stream(head))
        assert net.internal_hits == []
        assert status == 302, body
        assert b"redirect" in body and b"not followed" in body, body
        # The same peer still gets its plain requests answered.
        head = RequestHead(method="GET", target="/go?to=/elsewhere", service="camera")
        status, _, _ = await answer(pair.viewer.open_stream(head, end_stream=True))
        assert status == 302
    assert net.internal_hits == []
    assert f"redirected a websocket handshake to '{net.internal}/ws': not followed" in caplog.text
