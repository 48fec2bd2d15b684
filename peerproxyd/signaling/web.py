"""The browser client, served by the signaling server on every host name it answers to.

One origin per device and service: `http(s)://<device>--<service>.<domain>/`. On such a host

- `/__peerproxy/<file>` are the client's own files (`webclient/`); the service worker never
  forwards this prefix to the device;
- every other path is the connection-manager page, so a deep link
  `https://<device id>--camera.example.net/settings?tab=2` opens the manager, which then opens
  the app frame at that same path.

On any other host (the bare signaling host) `/` is a small landing page. `/ws` and `/healthz`
are the signaling server's own routes and are registered before these.

The manager page is served with every client file's URL versioned by its content
(`?v=<hash>`, and an import map for the modules' own imports): a versioned URL is cached for
good (`immutable`), so a reload loads the client without a request; the page itself and any
unversioned URL are revalidated. The same files work as a static site on any web server that
serves `manager.html` for every path of the device hosts and adds the headers of
`_headers()` (everything revalidated then); see webclient/README.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from peerproxyd.names import split_origin_label

logger = logging.getLogger(__name__)

DEFAULT_WEBCLIENT_DIR = Path(__file__).resolve().parents[2] / "webclient"
PREFIX = "/__peerproxy/"
"""Reserved path prefix of the client's own files in every device origin."""
MANAGER_PAGE = "manager.html"
LANDING_PAGE = "index.html"
SERVICE_WORKER = "sw.js"

CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
}
# Every file is revalidated (ETag / Last-Modified, answered with 304): a new release reaches
# viewers at once, and an unchanged one costs a round trip, not a download.
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
"""A file asked for by its current version (`?v=`): its content never changes at that URL."""
MANAGER_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-src 'self'; worker-src 'self'; base-uri 'none'; "
    "form-action 'none'; object-src 'none'; frame-ancestors 'none'"
)
WEBCLIENT_DIR = web.AppKey("webclient_dir", Path)
CLIENT = web.AppKey("webclient", "VersionedClient")
_ASSET_URL = re.compile(r'(?P<attr>href|src)="' + re.escape(PREFIX) + r'(?P<name>[^"?#]+)"')
_FIRST_LOAD = re.compile(r"<(link|script)\b")


@dataclass(frozen=True)
class VersionedClient:
    """The manager page with versioned client URLs, and the version of each client file."""

    versions: dict[str, str]
    page: str
    csp: str
    etag: str


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def version_client(root: Path) -> VersionedClient:
    """Read `root` once: a version per client file (its content's hash) and the manager page
    that names them, with an import map so that the modules' own `import "./x.js"` resolve
    to the versioned URLs too (allowed by its hash in the page's CSP)."""
    versions = {
        str(path.relative_to(root)): _digest(path.read_bytes())
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in CONTENT_TYPES and path.suffix != ".html"
        and _client_file(root, str(path.relative_to(root))) is not None
    }
    imports: dict[str, str] = {}  # the page's modules (its preloads name every import)

    def versioned(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in versions:
            return match[0]
        url = f"{PREFIX}{name}?v={versions[name]}"
        if name.endswith(".js"):
            imports[f"{PREFIX}{name}"] = url
        return f'{match["attr"]}="{url}"'

    page = _ASSET_URL.sub(versioned, (root / MANAGER_PAGE).read_text())
    csp = MANAGER_CSP
    first = _FIRST_LOAD.search(page)
    if imports and first:  # before anything loads: later import maps do not apply to it
        import_map = json.dumps({"imports": imports}, separators=(",", ":"))
        at = first.start()
        page = page[:at] + f'<script type="importmap">{import_map}</script>\n  ' + page[at:]
        digest = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode()
        csp = csp.replace("script-src 'self'", f"script-src 'self' 'sha256-{digest}'")
    return VersionedClient(versions, page, csp, f'"{_digest(page.encode())}"')


def device_service(host: str) -> tuple[str, str] | None:
    """(device, service) of a `<device>--<service>.<anything>[:port]` host, else None."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    label = name.split(".", 1)[0].lower()
    return split_origin_label(label)


def _headers(name: str) -> dict[str, str]:
    headers = {
        "Cache-Control": REVALIDATE,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if name == SERVICE_WORKER:
        # The worker lives under the reserved prefix but must control the whole origin.
        headers["Service-Worker-Allowed"] = "/"
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = MANAGER_CSP
    suffix = Path(name).suffix
    if suffix in CONTENT_TYPES:
        headers["Content-Type"] = CONTENT_TYPES[suffix]
    return headers


def _file(root: Path, name: str) -> web.FileResponse:
    return web.FileResponse(root / name, headers=_headers(name))


def _not_found(text: str) -> web.Response:
    return web.Response(
        status=404, text=text + "\n", headers={"Cache-Control": "no-store"}
    )


def _client_file(root: Path, tail: str) -> Path | None:
    """The file of `/__peerproxy/<tail>`, or None: no hidden files, tests or escapes."""
    parts = tail.split("/")
    if not tail or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    if parts[0] == "test":
        return None
    path = (root / tail).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        return None
    return path


async def _client_files(request: web.Request) -> web.StreamResponse:
    root = request.app[WEBCLIENT_DIR]
    tail = request.match_info["tail"]
    path = _client_file(root, tail)
    if path is None:
        return _not_found(f"no such file: {PREFIX}{tail}")
    name = str(path.relative_to(root.resolve()))
    response = _file(root, name)
    version = request.app[CLIENT].versions.get(name)
    if version is not None and request.query.get("v") == version:
        response.headers["Cache-Control"] = IMMUTABLE
    return response


def _manager(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    headers = {**_headers(MANAGER_PAGE), "Content-Security-Policy": client.csp,
               "ETag": client.etag}
    if client.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(text=client.page, headers=headers)


async def _page(request: web.Request) -> web.StreamResponse:
    """The manager for a device+service host, at any path; the landing page elsewhere."""
    root = request.app[WEBCLIENT_DIR]
    if device_service(request.host) is not None:
        if request.method not in ("GET", "HEAD"):
            return web.Response(
                status=405,
                text="This address opens the peerproxyd viewer; the app itself runs inside it.\n",
                headers={"Allow": "GET, HEAD", "Cache-Control": "no-store"},
            )
        return _manager(request)
    if request.path == "/" and request.method in ("GET", "HEAD"):
        return _file(root, LANDING_PAGE)
    return _not_found("not found: open https://<device>--<service>.<this host>/")


def add_webclient_routes(app: web.Application, webclient_dir: Path | str | None = None) -> bool:
    """Add the browser client's routes to the signaling app (after its own). False, with a
    warning, if the directory holds no client."""
    root = Path(webclient_dir) if webclient_dir is not None else DEFAULT_WEBCLIENT_DIR
    if not all((root / name).is_file() for name in (MANAGER_PAGE, LANDING_PAGE, SERVICE_WORKER)):
        logger.warning("no webclient at %s; serving only /ws and /healthz", root)
        return False
    app[WEBCLIENT_DIR] = root
    app[CLIENT] = version_client(root)
    app.router.add_get(PREFIX + "{tail:.*}", _client_files)
    app.router.add_route("*", "/{tail:.*}", _page)
    return True
