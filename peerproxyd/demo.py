"""`peerproxyd demo`: the whole path on one machine, for `make run`.

Starts a signaling server, a small demo web app, a daemon in front of it and a native
client, all on 127.0.0.1 and in this process, then prints where to look. The daemon's
device key and viewers live in a temporary directory: every demo is a new device, with a
viewer for the browser (its share link is printed) and one for the native client.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from peerproxyd.client.native import NativeClient
from peerproxyd.config import (
    DeviceSettings,
    IceSettings,
    ServiceSettings,
    Settings,
    SignalingSettings,
)
from peerproxyd.device.daemon import Daemon
from peerproxyd.signaling.server import build_signaling_app
from peerproxyd.trust.identity import load_or_create
from peerproxyd.trust.sharing import share
from peerproxyd.trust.viewer_auth import parse_link
from peerproxyd.trust.viewers import ViewerStore

logger = logging.getLogger(__name__)

NAME = "demo"
SERVICE = "dashboard"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>peerproxyd demo</title>
<style>body{font:16px system-ui;margin:3em;max-width:40em;color:#222}
code{background:#eee;padding:.1em .3em}</style></head>
<body><h1>Hello from %(device)s</h1>
<p>This page came from a local web app on the device, over a WebRTC data channel.</p>
<p>Device clock: <code id="t">…</code> (fetched through the channel every second)</p>
<script>
async function tick() {
  const r = await fetch("/api/time"); document.getElementById("t").textContent = (await r.json()).time;
}
tick(); setInterval(tick, 1000);
</script></body></html>
"""


def demo_app(device: str) -> web.Application:
    app = web.Application()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE % {"device": device}, content_type="text/html")

    async def now(request: web.Request) -> web.Response:
        return web.json_response({"time": time.strftime("%H:%M:%S")})

    app.router.add_get("/", index)
    app.router.add_get("/api/time", now)
    return app


async def _site(app: web.Application, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, runner.addresses[0][1]


async def run_demo(*, signal_port: int = 8787, listen_port: int = 9000) -> None:
    with tempfile.TemporaryDirectory(prefix="peerproxyd-demo-") as state_dir:
        await _run_demo(Path(state_dir), signal_port, listen_port)


async def _run_demo(state_dir: Path, signal_port: int, listen_port: int) -> None:
    identity = load_or_create(state_dir)
    device = identity.device_id
    signal_runner, signal_port = await _site(build_signaling_app(), signal_port)
    upstream_runner, upstream_port = await _site(demo_app(f"{NAME} ({device})"), 0)
    ice = IceSettings(host_addresses=["127.0.0.1"])
    settings = Settings(
        device=DeviceSettings(state_dir=state_dir, name=NAME),
        signaling=SignalingSettings(url=f"ws://127.0.0.1:{signal_port}/ws"),
        services={SERVICE: ServiceSettings(upstream=f"http://127.0.0.1:{upstream_port}")},
        ice=ice,
    )
    store = ViewerStore(state_dir)
    links = {
        name: share(settings, store, device_id=device, fingerprint=identity.fingerprint_bytes,
                    service=SERVICE, name=name, now=datetime.now(UTC)).link
        for name in ("browser", "native")
    }
    daemon = Daemon(settings, identity=identity, viewers=store)
    client = NativeClient(
        link=parse_link(links["native"]),
        signal_url=settings.signaling.url,
        listen=("127.0.0.1", listen_port),
        ice=ice,
    )
    ready = asyncio.Event()
    tasks = [asyncio.create_task(daemon.run()), asyncio.create_task(client.run(ready))]
    try:
        async with asyncio.timeout(30):
            await ready.wait()
        print(
            f"\npeerproxyd demo is running (Ctrl-C stops it)\n"
            f"  signaling server  http://127.0.0.1:{signal_port}/\n"
            f"  device            {device} ({NAME}): service {SERVICE!r} -> "
            f"http://127.0.0.1:{upstream_port}\n"
            f"  share link (browser):  {links['browser']}\n"
            f"  native client:         {client.url}\n",
            flush=True,
        )
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream_runner.cleanup()
        await signal_runner.cleanup()
