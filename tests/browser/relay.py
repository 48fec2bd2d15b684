"""A signaling server that intercepts: it relays everything to the real one (HTTP and the /ws
WebSocket, Host header kept), but rewrites the `a=fingerprint:sha-256` line of every answer
the device sends to a viewer, as an operator who wants to sit in the middle would. Each
rewrite is logged as `REWROTE <old> -> <new>` for the tests.

Run: python -m tests.browser.relay --port 8790 --upstream 8787
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re

import aiohttp
from aiohttp import web

FORGED = ":".join(f"{b:02X}" for b in hashlib.sha256(b"the interceptor's certificate").digest())
FINGERPRINT_LINE = re.compile(r"(a=fingerprint:sha-256 )([0-9A-Fa-f:]+)", re.I)
UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)
HOP_BY_HOP = {"connection", "upgrade", "keep-alive", "transfer-encoding",
              "content-length", "sec-websocket-key", "sec-websocket-version",
              "sec-websocket-extensions", "sec-websocket-accept"}


def rewrite(text: str) -> str:
    """An answer with the forged fingerprint; any other message unchanged."""
    try:
        msg = json.loads(text)
    except ValueError:
        return text
    if not isinstance(msg, dict) or msg.get("type") != "answer":
        return text
    sdp = str(msg.get("payload", {}).get("sdp", ""))
    for match in FINGERPRINT_LINE.finditer(sdp):
        print(f"REWROTE {match.group(2)} -> {FORGED}", flush=True)
    msg["payload"]["sdp"] = FINGERPRINT_LINE.sub(lambda m: m.group(1) + FORGED, sdp)
    return json.dumps(msg)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    viewer = web.WebSocketResponse()
    await viewer.prepare(request)
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].ws_connect(url, headers={"Host": request.host}) as server:

        async def down() -> None:
            async for msg in server:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await viewer.send_str(rewrite(msg.data))

        async def up() -> None:
            async for msg in viewer:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await server.send_str(msg.data)

        tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await viewer.close()
    return viewer


async def forward(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await websocket(request)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    async with request.app[SESSION].request(
        request.method, request.app[UPSTREAM] + request.path_qs, headers=headers,
        data=await request.read(), allow_redirects=False,
    ) as upstream:
        body = await upstream.read()
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return web.Response(status=upstream.status, headers=out, body=body)


def build_app(upstream_port: int) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = f"http://127.0.0.1:{upstream_port}"

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            app[SESSION] = s
            yield

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()

    async def announce(app: web.Application) -> None:
        print(f"relay listening on 127.0.0.1:{args.port}", flush=True)

    app = build_app(args.upstream)
    app.on_startup.append(announce)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
