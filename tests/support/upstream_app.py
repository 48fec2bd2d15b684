"""A real aiohttp upstream for end-to-end tests and benchmarks.

Run: python -m tests.support.upstream_app --port 8081 --name camera
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random

from aiohttp import WSMsgType, web

CHUNK = 64 * 1024
STATS = web.AppKey("stats", dict)
NAME = web.AppKey("name", str)


def pattern(size: int) -> bytes:
    """Deterministic bytes: the same on both sides without shipping them."""
    block = hashlib.sha256(b"peerproxyd").digest() * (CHUNK // 32)
    out = block * (size // CHUNK + 1)
    return out[:size]


def random_body(seed: int, size: int) -> bytes:
    """Pseudo-random bytes from `seed`: unlike pattern(), no repeating block hides a chunk
    lost, doubled or swapped on the way."""
    return random.Random(seed).randbytes(size)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "service": request.app[NAME],
            "method": request.method,
            "path": request.path,
            "query": [[k, v] for k, v in request.query.items()],
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_size": len(body),
        }
    )


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    while chunk := await request.content.readany():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "size": size})


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", "0"))
    stats = request.app[STATS]
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("chunked") != "1":
        response.content_length = size
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    stats["active"] += 1
    seed = request.query.get("seed")  # random_body(seed, size), else pattern(size)
    body = random_body(int(seed), size) if seed is not None else None
    block = pattern(CHUNK)
    sent = 0
    rate = int(request.query.get("rate", "0"))  # bytes a second at most (0: no limit)
    started = asyncio.get_running_loop().time()
    try:
        while sent < size:
            n = min(CHUNK, size - sent)
            await response.write(block[:n] if body is None else body[sent:sent + n])
            sent += n
            if rate:  # a download that lasts at least size / rate seconds
                ahead = sent / rate - (asyncio.get_running_loop().time() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await response.write_eof()
        stats["completed"] += 1
    except (ConnectionError, asyncio.CancelledError):
        stats["aborted"] += 1
        raise
    finally:
        stats["active"] -= 1
    return response


async def cookies(request: web.Request) -> web.Response:
    response = web.Response(text="cookies")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
    response.headers.add("Set-Cookie", "c=3; Path=/; Max-Age=60")
    response.headers.add("X-Multi", "one")
    response.headers.add("X-Multi", "two")
    return response


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    headers = {"ETag": '"v1"'} if code == 304 else {}
    return web.Response(status=code, headers=headers)


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "2")))
    return web.Response(text="slow done")


async def quiet(request: web.Request) -> web.StreamResponse:
    """`a`, then `s` seconds of silence, then `b`: an event stream between two events."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"a")
    await asyncio.sleep(float(request.query.get("s", "2")))
    await response.write(b"b")
    await response.write_eof()
    return response


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """An echo WebSocket that also obeys text commands:
    `headers` -> the upgrade request as JSON; `close <code> <reason>` -> closes with that;
    `drop` -> ends the TCP connection without a close frame; `flood <n> <size>` -> n binary
    messages of size bytes. Each close it receives is recorded in /stats as ws_closes."""
    ws = web.WebSocketResponse(protocols=("chat", "superchat"), max_msg_size=64 * 1024**2)
    await ws.prepare(request)
    stats = request.app[STATS]
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT:
            command, _, rest = msg.data.partition(" ")
            if command == "headers":
                await ws.send_json({"path": request.path_qs, "protocol": ws.ws_protocol,
                                    "headers": [[k, v] for k, v in request.headers.items()]})
            elif command == "close":
                code, _, reason = rest.partition(" ")
                await ws.close(code=int(code), message=reason.encode())
                break
            elif command == "drop":
                assert request.transport is not None
                request.transport.abort()
                break
            elif command == "flood":
                count, size = map(int, rest.split())
                for i in range(count):
                    await ws.send_bytes(pattern(size)[:-1] + bytes([i % 256]))
            else:
                await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        else:
            if msg.type is WSMsgType.CLOSE:
                stats["ws_closes"].append([msg.data, msg.extra])
            break
    return ws


async def refuse_websocket(request: web.Request) -> web.Response:
    return web.Response(status=403, text="no websockets here")


async def hello(request: web.Request) -> web.Response:
    return web.Response(text=f"hello from {request.app[NAME]}\n")


def build_app(name: str) -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[NAME] = name
    app[STATS] = {"active": 0, "completed": 0, "aborted": 0, "ws_closes": []}
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/quiet", quiet)
    app.router.add_get("/stats", stats)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/ws/refuse", refuse_websocket)
    app.router.add_get("/", hello)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="upstream")
    args = parser.parse_args()
    web.run_app(build_app(args.name), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
