"""signaling/web.py: the signaling server serves the browser client on every host name."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from peerproxyd.signaling.server import build_signaling_app
from peerproxyd.signaling.web import DEFAULT_WEBCLIENT_DIR, PREFIX, device_service

DEVICE = "abcdefghijklmnopqrstuvwxyz234567"
DEVICE_HOST = f"{DEVICE}--camera.localhost:8787"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    return await aiohttp_client(build_signaling_app())


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (f"{DEVICE}--camera.localhost:8787", (DEVICE, "camera")),
        (f"{DEVICE.upper()}--HA.example.net", (DEVICE, "ha")),
        (f"{DEVICE}--b", (DEVICE, "b")),
        ("signal.example.net", None),
        ("test-pi--camera.localhost:8787", None),  # not a device id (derived, 32 characters)
        (f"{DEVICE}--ca--mera.example.net", None),
        (f"{DEVICE}--.example.net", None),
        ("[::1]:8787", None),
        ("127.0.0.1:8787", None),
    ],
)
def test_device_service_from_host(host: str, expected: tuple[str, str] | None) -> None:
    assert device_service(host) == expected


async def test_manager_page_on_every_path_of_a_device_host(client: TestClient[Any, Any]) -> None:
    for path in ("/", "/settings/deep?tab=2", "/index.html", "/favicon.ico"):
        resp = await client.get(path, headers={"Host": DEVICE_HOST})
        assert resp.status == 200, path
        assert resp.content_type == "text/html"
        assert '<script type="module" src="/__peerproxy/manager.js?v=' in await resp.text()
        assert resp.headers["Cache-Control"] == "no-cache"
        csp = resp.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    head = await client.head("/x", headers={"Host": DEVICE_HOST})
    assert head.status == 200
    post = await client.post("/login", headers={"Host": DEVICE_HOST}, data=b"a=1")
    assert post.status == 405 and post.headers["Allow"] == "GET, HEAD"


async def test_landing_page_on_the_bare_host(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/", headers={"Host": "signal.example.net"})
    assert resp.status == 200 and resp.content_type == "text/html"
    text = await resp.text()
    assert "peerproxyd signaling server" in text and "/__peerproxy/landing.js" in text
    assert (await client.get("/settings", headers={"Host": "signal.example.net"})).status == 404
    assert (await client.get("/index.html", headers={"Host": "signal.example.net"})).status == 404


async def test_signaling_routes_win_on_device_hosts(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz", headers={"Host": DEVICE_HOST})
    assert (await resp.json())["status"] == "ok"
    ws = await client.ws_connect("/ws", headers={"Host": DEVICE_HOST})
    hello = await ws.receive_json()
    assert hello["type"] == "hello"
    await ws.close()


async def test_client_files_with_cache_and_worker_headers(client: TestClient[Any, Any]) -> None:
    for host in (DEVICE_HOST, "signal.example.net"):
        sw = await client.get(PREFIX + "sw.js", headers={"Host": host})
        assert sw.status == 200
        assert sw.content_type == "text/javascript"
        assert sw.headers["Service-Worker-Allowed"] == "/"
        assert sw.headers["Cache-Control"] == "no-cache"
        assert sw.headers["X-Content-Type-Options"] == "nosniff"
        etag = sw.headers["ETag"]
        again = await client.get(PREFIX + "sw.js", headers={"Host": host, "If-None-Match": etag})
        assert again.status == 304
    js = await client.get(PREFIX + "protocol.js")
    assert js.content_type == "text/javascript" and "Service-Worker-Allowed" not in js.headers
    assert (await client.get(PREFIX + "style.css")).content_type == "text/css"
    assert (await client.get(PREFIX + "icon.svg")).content_type == "image/svg+xml"


async def test_the_manager_page_names_each_client_file_by_its_version(
    client: TestClient[Any, Any],
) -> None:
    """Every client URL in the page carries its file's content hash, the modules' own imports
    resolve to the same URLs (the import map, allowed by its hash in the CSP), and the page is
    revalidated by its ETag."""
    resp = await client.get("/", headers={"Host": DEVICE_HOST})
    page = await resp.text()
    urls = re.findall(r'(?:href|src)="(/__peerproxy/[^"]+)"', page)
    assert len(urls) >= 10 and all("?v=" in url for url in urls), urls
    for url in urls:
        name, version = url.removeprefix(PREFIX).split("?v=")
        data = (DEFAULT_WEBCLIENT_DIR / name).read_bytes()
        assert version == hashlib.sha256(data).hexdigest()[:16], url
    import_map = re.search(r'<script type="importmap">(.*?)</script>', page)
    assert import_map is not None
    assert page.index("importmap") < page.index('<script type="module"')
    imports = json.loads(import_map[1])["imports"]
    modules = [url for url in urls if url.split("?")[0].endswith(".js")]
    assert sorted(imports.values()) == sorted(modules)
    assert all(imports[url.split("?")[0]] == url for url in modules)
    digest = base64.b64encode(hashlib.sha256(import_map[1].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in resp.headers["Content-Security-Policy"]
    again = await client.get("/x", headers={"Host": DEVICE_HOST,
                                            "If-None-Match": resp.headers["ETag"]})
    assert again.status == 304 and again.headers["Cache-Control"] == "no-cache"


async def test_a_file_asked_for_by_its_version_is_cached_for_good(
    client: TestClient[Any, Any],
) -> None:
    page = await (await client.get("/", headers={"Host": DEVICE_HOST})).text()
    url = re.search(r'src="(/__peerproxy/manager.js\?v=\w+)"', page)
    assert url is not None
    current = await client.get(url[1], headers={"Host": DEVICE_HOST})
    assert current.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert await current.read() == (DEFAULT_WEBCLIENT_DIR / "manager.js").read_bytes()
    # Unversioned, or an older page's version: the current file, revalidated.
    for stale in (PREFIX + "manager.js", PREFIX + "manager.js?v=0123456789abcdef"):
        resp = await client.get(stale, headers={"Host": DEVICE_HOST})
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-cache", stale


@pytest.mark.parametrize(
    "path",
    ["missing.js", "test/protocol.test.js", ".hidden", "..%2fpyproject.toml", "", "a//b"],
)
async def test_client_files_refuse_the_rest(client: TestClient[Any, Any], path: str) -> None:
    resp = await client.get(PREFIX + path, headers={"Host": DEVICE_HOST})
    assert resp.status == 404
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["../pyproject.toml", "%2e%2e/pyproject.toml", "../../etc/passwd"])
async def test_no_escape_from_the_client_dir(client: TestClient[Any, Any], path: str) -> None:
    resp = await client.get(PREFIX + path, headers={"Host": DEVICE_HOST})
    text = await resp.text()
    assert "[build-system]" not in text and "root:" not in text


async def test_missing_webclient_serves_only_signaling(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(build_signaling_app(webclient_dir=tmp_path / "nope"))
    assert (await client.get("/", headers={"Host": DEVICE_HOST})).status == 404
    assert (await client.get("/healthz")).status == 200


async def test_custom_webclient_dir(aiohttp_client: Any, tmp_path: Path) -> None:
    for name in ("manager.html", "index.html", "sw.js"):
        (tmp_path / name).write_text(f"custom {name}")
    client = await aiohttp_client(build_signaling_app(webclient_dir=tmp_path))
    assert await (await client.get("/a", headers={"Host": DEVICE_HOST})).text() == "custom manager.html"
    assert await (await client.get("/")).text() == "custom index.html"
    assert await (await client.get(PREFIX + "sw.js")).text() == "custom sw.js"
