"""Support for the live-stream tests (tests/apps/test_camera.py, test_streams.py): processes
that run inside a BrowserWorld's namespace, next to the daemon.

    python -m tests.apps.streams meter --listen P --upstream P --path /0/stream --status FILE
        A byte-for-byte TCP relay between the daemon and the camera server (motion) that counts
        the multipart parts (frames) each request carries, with the times it started and ended
        (the next request on the connection, or the connection's end), plus one control
        client reading the same stream straight from the camera: the rate the source really
        delivers on this (busy) machine. The counts go to FILE as JSON twice a second
        (`{"control": {...}, "requests": [{"id", "request", "opened", "closed", "parts",
        "bytes"}, ...]}`), starts and ends to stdout (`OPEN 1 GET /...`, `CLOSE 1 ...`).
    python -m tests.apps.streams look --cdp P --origin ORIGIN
        Attaches to a running Chromium's DevTools port once, looks at the camera view in the
        app frame of the page at ORIGIN (two screenshots of the frame 1.5 s apart, the <img>'s
        size) and prints it as JSON. The camera soak runs Chromium without DevTools attached
        (DevTools lifts a service worker's time limits) and looks only at the end.
    python -m tests.apps.streams media --port P --media DIR
        A small aiohttp app: `/events` (Server-Sent Events, below), `/media/*` (aiohttp's static
        files from DIR: real Range support, 206), `/video.html?src=...` (a page with a <video>)
        and `/`. Its access log (stdout) carries each request's Range header.

/events: the first connection gets events 1-5 and is closed by the server; a reconnection
with `Last-Event-ID: N` gets N+1 up to 10 and is closed again; one with 10 (or more) gets
204, which tells an EventSource to stop reconnecting. Each connection is logged as
`SSE connect last-event-id=<value or ->`. `/events?endless` sends an event every 0.2 s
(after the Last-Event-ID) until the client goes away (`SSE gone after N`).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web

logger = logging.getLogger("streams")
BOUNDARY = b"--BoundaryString"  # motion's multipart boundary
REQUEST_LINE = re.compile(rb"[A-Z]+ /\S* HTTP/1\.[01]\r\n")
SSE_FIRST, SSE_LAST = 5, 10
SSE_RETRY_MS = 300


# ----- the camera meter


@dataclass
class Exchange:
    """One request through the meter (or the control client's stream)."""

    id: int
    request: str = ""
    opened: float = 0.0
    closed: float | None = None
    parts: int = 0
    bytes: int = 0


class PartCounter:
    """Counts BOUNDARY markers in a byte stream that arrives in arbitrary pieces."""

    def __init__(self) -> None:
        self.count = 0
        self._tail = b""

    def feed(self, data: bytes) -> None:
        joined = self._tail + data
        self.count += joined.count(BOUNDARY)
        # Keep what could be the start of a marker split across pieces (never a whole one).
        self._tail = joined[-(len(BOUNDARY) - 1):]


class Meter:
    def __init__(self, upstream: int, path: str, status: Path) -> None:
        self.upstream = upstream
        self.path = path
        self.status = status
        self.requests: list[Exchange] = []
        self.control = Exchange(id=0, request=f"GET {path} (control)")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Relay one connection; each request on it (keep-alive reuses connections) is an
        entry of `requests` that ends at the next request or when the connection closes."""
        current: Exchange | None = None
        counter = PartCounter()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError as exc:
            logger.info("CLOSE upstream unreachable: %s", exc)
            writer.close()
            return

        async def down() -> None:  # camera -> daemon
            while data := await up_reader.read(65536):
                if current is not None:
                    counter.feed(data)
                    current.parts, current.bytes = counter.count, current.bytes + len(data)
                writer.write(data)
                await writer.drain()

        async def up() -> None:  # daemon -> camera
            nonlocal current, counter
            while data := await reader.read(65536):
                if REQUEST_LINE.match(data):  # a new request (its head comes in one piece)
                    if current is not None:
                        current.closed = time.time()
                    current = Exchange(id=len(self.requests) + 1, opened=time.time(),
                                   request=data.split(b"\r\n", 1)[0].decode("latin-1"))
                    counter = PartCounter()
                    self.requests.append(current)
                    logger.info("OPEN %d %s", current.id, current.request)
                up_writer.write(data)
                await up_writer.drain()

        tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
        try:
            # Either side closing ends the relay: the daemon dropping the connection is the
            # cancellation the tests look for.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
            if current is not None:
                current.closed = current.closed or time.time()
                logger.info("CLOSE %d parts=%d bytes=%d", current.id, current.parts,
                            current.bytes)

    async def run_control(self) -> None:
        """One direct client of the camera's stream, reconnecting if it ends."""
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream)
                writer.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                counter = PartCounter()
                base = self.control.parts
                self.control.opened = self.control.opened or time.time()
                while data := await reader.read(65536):
                    counter.feed(data)
                    self.control.parts = base + counter.count
                    self.control.bytes += len(data)
                writer.close()
            except OSError:
                pass
            await asyncio.sleep(0.5)

    async def report(self) -> None:
        while True:
            state = {"time": time.time(), "control": asdict(self.control),
                     "requests": [asdict(r) for r in self.requests]}
            tmp = self.status.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.status)
            await asyncio.sleep(0.5)


async def run_meter(listen: int, upstream: int, path: str, status: Path) -> None:
    meter = Meter(upstream, path, status)
    server = await asyncio.start_server(meter.serve, "127.0.0.1", listen)
    logger.info("meter listening on %d for %d", listen, upstream)
    async with server:
        await asyncio.gather(server.serve_forever(), meter.run_control(), meter.report())


def motion_config(path: Path, *, movie: Path, stream_port: int, webcontrol_port: int,
                  work_dir: Path) -> Path:
    """A motion.conf: one camera playing `movie` in a loop, its MJPEG stream on stream_port."""
    lines = {
        "daemon": "off", "setup_mode": "off", "log_level": "6",
        "target_dir": str(work_dir), "pid_file": str(work_dir / "motion.pid"),
        "netcam_url": f"file://{movie}",
        "width": "640", "height": "480", "framerate": "10",
        "picture_output": "off", "movie_output": "off", "snapshot_interval": "0",
        "webcontrol_port": str(webcontrol_port), "webcontrol_localhost": "on",
        "stream_port": str(stream_port), "stream_localhost": "on",
        "stream_maxrate": "10", "stream_quality": "90", "stream_motion": "off",
    }
    path.write_text("".join(f"{k} {v}\n" for k, v in lines.items()))
    return path


def look(cdp_port: int, origin: str) -> dict[str, object]:
    """What the camera view in the app frame of the page at `origin` shows (see the module)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.connect_over_cdp(f"http://127.0.0.1:{cdp_port}", timeout=30_000)
        try:
            pages = [p for c in browser.contexts for p in c.pages if p.url.startswith(origin)]
            if not pages:
                return {"error": f"no page at {origin}",
                        "pages": [p.url for c in browser.contexts for p in c.pages]}
            page = pages[0]
            view = page.evaluate("""() => {
                const frame = document.getElementById('app');
                const r = frame.getBoundingClientRect();
                const doc = frame.contentDocument, img = doc && doc.querySelector('img');
                return {phase: document.body.dataset.phase, type: doc && doc.contentType,
                        width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0,
                        x: r.x, y: r.y};
            }""")
            clip = {"x": view["x"], "y": view["y"], "width": 640, "height": 480}
            first = page.screenshot(clip=clip)
            page.wait_for_timeout(1500)
            second = page.screenshot(clip=clip)
            return {**view, "changed": first != second}
        finally:
            browser.close()  # over CDP: disconnects, leaves the browser as it was


# ----- the media app: SSE, static files with ranges, a video page


async def events(request: web.Request) -> web.StreamResponse:
    last = request.headers.get("Last-Event-ID")
    logger.info("SSE connect last-event-id=%s", last if last is not None else "-")
    if "endless" in request.query:
        return await endless_events(request)
    start = int(last) + 1 if last and last.isdigit() else 1
    if start > SSE_LAST:
        return web.Response(status=204)
    end = SSE_FIRST if start <= SSE_FIRST else SSE_LAST
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
    for n in range(start, end + 1):
        await asyncio.sleep(0.1)
        await response.write(f"id: {n}\nevent: tick\ndata: event {n}\n\n".encode())
    await response.write_eof()  # the server closes the stream: the browser must reconnect
    return response


async def endless_events(request: web.Request) -> web.StreamResponse:
    """An event every 0.2 s, after the Last-Event-ID if any, until the client goes (logged as
    `SSE gone after N`), or 5 min."""
    last = request.headers.get("Last-Event-ID", "")
    first = int(last) + 1 if last.isdigit() else 1
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
    n = 0
    try:
        for n in range(first, first + 1500):
            await response.write(f"id: {n}\ndata: tick {n}\n\n".encode())
            await asyncio.sleep(0.2)
    except ConnectionError:
        logger.info("SSE gone after %d", n)
        return response
    except asyncio.CancelledError:
        logger.info("SSE gone after %d", n)
        raise
    await response.write_eof()
    return response


VIDEO_PAGE = """<!doctype html><meta charset="utf-8"><title>Video</title>
<video id="v" muted playsinline preload="metadata" width="640" height="360" src="{src}"></video>
"""


async def video_page(request: web.Request) -> web.Response:
    src = html.escape(request.query.get("src", "/media/clip-faststart.mp4"))
    return web.Response(text=VIDEO_PAGE.format(src=src), content_type="text/html")


async def index(request: web.Request) -> web.Response:
    return web.Response(text="<!doctype html><title>Streams</title><h1>Streams</h1>",
                        content_type="text/html")


def media_app(media: Path) -> web.Application:
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/events", events)
    app.router.add_get("/video.html", video_page)
    app.router.add_static("/media", media)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.apps.streams")
    sub = parser.add_subparsers(dest="command", required=True)
    meter = sub.add_parser("meter")
    meter.add_argument("--listen", type=int, required=True)
    meter.add_argument("--upstream", type=int, required=True)
    meter.add_argument("--path", default="/0/stream")
    meter.add_argument("--status", type=Path, required=True)
    peek = sub.add_parser("look")
    peek.add_argument("--cdp", type=int, required=True)
    peek.add_argument("--origin", required=True)
    media = sub.add_parser("media")
    media.add_argument("--port", type=int, required=True)
    media.add_argument("--media", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "meter":
        asyncio.run(run_meter(args.listen, args.upstream, args.path, args.status))
    elif args.command == "look":
        print(json.dumps(look(args.cdp, args.origin)))
    else:
        logger.info("media app listening on %d", args.port)
        web.run_app(media_app(args.media), host="127.0.0.1", port=args.port, print=None,
                    access_log_format='%r %s %b range=%{Range}i')


if __name__ == "__main__":
    main()
