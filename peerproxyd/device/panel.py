"""Status panel: a small web page on the device, e.g. Home Assistant's Ingress panel.

`[daemon] panel = "0.0.0.0:8099"` serves it; only the addresses in `[daemon] panel_allow`
may load it (Home Assistant's Ingress proxy is 172.30.32.2). It shows the tunnel state, the
services and the connected viewers, and it is the one place besides the command line where
an owner shares a service: a form mints a share link and shows it with its QR code.
`GET /metrics` is the daemon's Prometheus exposition (device/metrics.py), behind the same
allow list.

Every URL in the page is relative, so it works under Ingress's path prefix; redirects use
the `X-Ingress-Path` header Home Assistant sends. The panel reads the daemon through the
small `PanelSource` protocol (device/daemon.py's `DaemonPanelSource`) and never touches
the data path.
"""

from __future__ import annotations

import html
import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import segno
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from peerproxyd.config import parse_listen

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeerRow:
    peer: str
    viewer: str | None
    path: str
    rtt_ms: float | None
    open_streams: int


class PanelSource(Protocol):
    """What the panel needs from the daemon."""

    def status_text(self) -> str: ...

    def panel_identity(self) -> dict[str, str]:
        """Device id and DTLS fingerprint (and a friendly name, if any)."""
        ...

    def panel_services(self) -> dict[str, str]:
        """Service name -> upstream URL."""
        ...

    def panel_backend(self) -> dict[str, str]:
        """The WebRTC backend (`name`: aiortc or native) and `why` it was chosen."""
        ...

    async def panel_peers(self) -> list[PeerRow]: ...

    def panel_viewers(self) -> list[dict[str, Any]]:
        """The viewer store's entries (name, service, created, expires, state)."""
        ...

    def panel_share(self, service: str, name: str, expires: str) -> str:
        """Mint a viewer; its share link, or ValueError with a message for bad input."""
        ...

    def panel_revoke(self, name: str) -> None:
        """Revoke a viewer; KeyError if there is none of that name."""
        ...


HEAD_TIMEOUT = 10.0
"""Seconds a client has to send a whole request head (from connecting, or from the end of its
previous response) before the connection is closed: a slowloris sender cannot hold it."""
CROSS_SITE = frozenset({"cross-site", "same-site"})
"""`Sec-Fetch-Site` values of a request another site's page made."""
SOURCE = web.AppKey("panel_source", PanelSource)
ALLOW = web.AppKey("panel_allow", tuple)


@asynccontextmanager
async def serve_panel(
    source: PanelSource, listen: str, allow: Sequence[str],
    metrics: CollectorRegistry | None = None,
) -> AsyncIterator[None]:
    """Serve the panel of `source` (the daemon) on `listen` (HOST:PORT) while the block runs."""
    host, port = parse_listen(listen)
    # aiohttp's keep-alive timer also runs while a request head is incomplete.
    runner = web.AppRunner(build_panel_app(source, allow, metrics), access_log=None,
                           keepalive_timeout=HEAD_TIMEOUT)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        for address in runner.addresses:
            logger.info("status panel on http://%s:%s/ (for %s)", address[0], address[1],
                        ", ".join(allow))
        yield
    finally:
        await runner.cleanup()


def build_panel_app(
    source: PanelSource, allow: Sequence[str], metrics: CollectorRegistry | None = None
) -> web.Application:
    """The panel as an aiohttp application; `allow` lists addresses or networks. With
    `metrics`, `GET /metrics` serves that registry (device/metrics.py) as Prometheus text."""
    app = web.Application(middlewares=[_only_allowed])
    app[SOURCE] = source
    app[ALLOW] = tuple(ipaddress.ip_network(a, strict=False) for a in allow)
    app.router.add_get("/", _index)
    app.router.add_get("/status.json", _status)
    app.router.add_post("/share", _share)
    app.router.add_post("/revoke", _revoke)
    if metrics is not None:
        app.router.add_get("/metrics", make_aiohttp_handler(metrics))
    return app


@web.middleware
async def _only_allowed(request: web.Request, handler: Any) -> web.StreamResponse:
    remote = request.remote or ""
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        address = None
    if address is None or not any(address in net for net in request.app[ALLOW]):
        logger.warning("panel: refused a request from %s", remote or "?")
        raise web.HTTPForbidden(text="forbidden\n")
    # A form on another site must not make links or revoke them through the owner's browser
    # (cross-site request forgery): browsers say where a request comes from.
    if request.method == "POST" and request.headers.get("Sec-Fetch-Site") in CROSS_SITE:
        logger.warning("panel: refused a cross-site %s %s", request.method, request.path)
        raise web.HTTPForbidden(text="cross-site requests are not allowed\n")
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


async def _status(request: web.Request) -> web.Response:
    source = request.app[SOURCE]
    peers = await source.panel_peers()
    return web.json_response({
        "status": source.status_text(),
        "identity": source.panel_identity(),
        "services": source.panel_services(),
        "backend": source.panel_backend(),
        "peers": [asdict(p) for p in peers],
        "viewers": source.panel_viewers(),
    })


async def _index(request: web.Request) -> web.Response:
    return await _page(request)


async def _share(request: web.Request) -> web.Response:
    form = await request.post()
    source = request.app[SOURCE]
    try:
        link = source.panel_share(
            str(form.get("service", "")), str(form.get("name", "")).strip(),
            str(form.get("expires", "7d")).strip() or "7d",
        )
    except ValueError as exc:
        return await _page(request, error=str(exc), status=400)
    logger.info("panel: shared %s with %s", form.get("service"), form.get("name"))
    return await _page(request, shared=link)


async def _revoke(request: web.Request) -> web.Response:
    form = await request.post()
    name = str(form.get("name", ""))
    try:
        request.app[SOURCE].panel_revoke(name)
    except KeyError:
        return await _page(request, error=f"no viewer named {name!r}", status=404)
    logger.info("panel: revoked %s", name)
    raise web.HTTPSeeOther(request.headers.get("X-Ingress-Path", "") + "/")


def _qr_svg(link: str) -> str:
    """The link's QR code as an inline `<svg>` element."""
    return str(segno.make(link, error="l").svg_inline(scale=4, border=2))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


async def _page(
    request: web.Request, *, error: str | None = None, shared: str | None = None,
    status: int = 200,
) -> web.Response:
    source = request.app[SOURCE]
    identity = source.panel_identity()
    services = source.panel_services()
    backend = source.panel_backend()
    peers = await source.panel_peers()
    viewers = source.panel_viewers()
    parts = [f"<h1>peerproxyd <small>{_e(identity.get('name') or '')}</small></h1>",
             f"<p class=status>{_e(source.status_text())}</p>",
             f"<p class=id>device <code>{_e(identity.get('device_id', ''))}</code></p>",
             f"<p class=backend>WebRTC backend <code>{_e(backend.get('name'))}</code> "
             f"({_e(backend.get('why'))})</p>"]
    if error:
        parts.append(f"<p class=error>{_e(error)}</p>")
    if shared:
        parts.append(
            "<section class=shared><h2>Share link</h2>"
            "<p>Send this link to the viewer; it is shown only now. Anyone with it can open "
            "the service until it expires or is revoked.</p>"
            f"<p><a class=link href=\"{_e(shared)}\">{_e(shared)}</a></p>"
            f"<div class=qr>{_qr_svg(shared)}</div></section>"
        )
    options = "".join(f"<option>{_e(n)}</option>" for n in services)
    rows = "".join(f"<tr><td>{_e(n)}</td><td><code>{_e(u)}</code></td></tr>"
                   for n, u in services.items())
    parts.append(f"<h2>Services</h2><table><tr><th>name</th><th>upstream</th></tr>{rows}</table>")
    parts.append(
        "<form class=share method=post action=share><h2>Share a service</h2>"
        f"<label>service <select name=service>{options}</select></label> "
        "<label>viewer <input name=name required pattern=\"[A-Za-z0-9._-]{1,64}\" "
        "placeholder=alice></label> "
        "<label>expires <input name=expires value=7d size=6></label> "
        "<button>Create link</button></form>"
    )
    rows = "".join(
        f"<tr><td>{_e(v.get('name'))}</td><td>{_e(v.get('service'))}</td>"
        f"<td>{_e(v.get('expires') or 'never')}</td><td>{_e(v.get('state'))}</td><td>"
        + (f"<form method=post action=revoke><input type=hidden name=name "
           f"value=\"{_e(v.get('name'))}\"><button>Revoke</button></form>"
           if v.get("state") == "active" else "")
        + "</td></tr>" for v in viewers)
    parts.append("<h2>Viewers</h2><table><tr><th>name</th><th>service</th><th>expires</th>"
                 f"<th>state</th><th></th></tr>{rows or '<tr><td colspan=5>none yet'}</table>")
    rows = "".join(
        f"<tr><td>{_e(p.viewer or '-')}</td><td>{_e(p.path)}</td>"
        f"<td>{_e('-' if p.rtt_ms is None else f'{p.rtt_ms:.1f} ms')}</td>"
        f"<td>{p.open_streams}</td></tr>" for p in peers)
    parts.append("<h2>Connected</h2><table><tr><th>viewer</th><th>path</th><th>rtt</th>"
                 f"<th>streams</th></tr>{rows or '<tr><td colspan=4>nobody'}</table>")
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content=\"width=device-width, initial-scale=1\">"
        f"<title>peerproxyd</title><style>{_CSS}</style></head><body><main>"
        + "".join(parts) + "</main></body></html>"
    )
    return web.Response(text=body, content_type="text/html", status=status)


_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1c2330}
main{max-width:46rem;margin:0 auto;padding:1.2rem}
h1{font-size:1.4rem;margin:.2rem 0}h1 small{color:#667;font-weight:normal}
h2{font-size:1.05rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:6px}
td,th{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e4e7ec}
th{font-weight:600;color:#556}
code{font-size:.9em;word-break:break-all}
.status{background:#fff;border-left:4px solid #3b82f6;padding:.5rem .8rem;border-radius:4px}
.error{background:#fee;border-left:4px solid #d33;padding:.5rem .8rem}
.shared{background:#fff;padding:.6rem 1rem;border-radius:6px;border:1px solid #cde}
.link{word-break:break-all}.qr svg{width:14rem;height:auto}
form{display:inline}form.share{display:block}
input,select,button{font:inherit;padding:.2rem .4rem}
"""
