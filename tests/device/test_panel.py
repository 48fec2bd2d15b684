"""The status panel (`[daemon] panel`, Home Assistant's Ingress panel): a real daemon process
serves it; the page shows the device, its services and viewers; a share link made in the panel
lets a real viewer in; revoking it there shuts the viewer out; addresses outside
`panel_allow` get 403."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from peerproxyd.errors import AuthError
from tests.support.procs import free_port
from tests.support.rawpeer import RawPeer
from tests.support.stack import Stack

INGRESS = "/api/hassio_ingress/abc123"


@dataclass
class Panel:
    url: str
    stack: Stack


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Panel]:
    stack = Stack(tmp_path_factory.mktemp("panel"))
    port = free_port()
    stack.extra_config = f'[daemon]\npanel = "127.0.0.1:{port}"\npanel_allow = ["127.0.0.1"]\n'
    try:
        stack.upstream("camera")
        stack.signal()
        stack.daemon({"camera": stack.upstream_ports["camera"]})
        stack.procs["daemon"].wait_for_log("status panel on")
        yield Panel(f"http://127.0.0.1:{port}", stack)
    finally:
        stack.stop()


async def status(http: aiohttp.ClientSession, panel: Panel) -> dict:
    async with http.get(f"{panel.url}/status.json") as r:
        assert r.status == 200
        return await r.json()


async def test_page_shows_device_services_and_state(panel: Panel, http: aiohttp.ClientSession):
    async with http.get(panel.url + "/", headers={"X-Ingress-Path": INGRESS}) as r:
        page = await r.text()
        assert (r.status, r.headers["Cache-Control"]) == (200, "no-store")
    assert panel.stack.device in page
    assert "registered as" in page
    assert "<td>camera</td>" in page
    backend = (await status(http, panel))["backend"]
    assert backend["name"] in ("aiortc", "native") and backend["why"]
    assert f"WebRTC backend <code>{backend['name']}</code>" in page
    assert f"WebRTC backend: {backend['name']} ({backend['why']})" in (
        panel.stack.procs["daemon"].log())
    assert 'action=share' in page and 'action="/' not in page  # relative: works under Ingress


async def test_share_in_the_panel_lets_a_viewer_in_and_revoke_shuts_it_out(
    panel: Panel, http: aiohttp.ClientSession
):
    async with http.post(f"{panel.url}/share",
                         data={"service": "camera", "name": "bob", "expires": "1d"}) as r:
        page = await r.text()
        assert r.status == 200, page
    link = html.unescape(re.search(r'class=link href="([^"]+)"', page)[1])
    assert link.startswith(f"http://{panel.stack.device}--camera.localhost:")
    assert "<svg" in page  # the QR code
    async with RawPeer(panel.stack.signal_url, link) as viewer:
        head, body = await viewer.request("camera", "/")
        assert (head.status, body) == (200, b"hello from camera\n")
        state = await status(http, panel)
        assert [p["viewer"] for p in state["peers"]] == ["bob"]
        assert {v["name"]: v["state"] for v in state["viewers"]}["bob"] == "active"
        async with http.post(f"{panel.url}/revoke", data={"name": "bob"},
                             headers={"X-Ingress-Path": INGRESS},
                             allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, INGRESS + "/")
    state = await status(http, panel)
    assert {v["name"]: v["state"] for v in state["viewers"]}["bob"] == "revoked"
    with pytest.raises(AuthError) as refused:
        async with RawPeer(panel.stack.signal_url, link):
            pass
    assert refused.value.code == "revoked"


@pytest.mark.parametrize(("form", "problem"), [
    ({"service": "nope", "name": "carol"}, "no service &#x27;nope&#x27;"),
    ({"service": "camera", "name": "bad name!"}, "name"),
    ({"service": "camera", "name": "dave", "expires": "soon"}, "expiry must be like 7d"),
])
async def test_bad_share_requests_are_clear_errors(
    panel: Panel, http: aiohttp.ClientSession, form: dict[str, str], problem: str
):
    async with http.post(f"{panel.url}/share", data=form) as r:
        page = await r.text()
        assert r.status == 400
    error = re.search(r"<p class=error>(.*?)</p>", page)
    assert error and problem in error[1], page
    async with http.post(f"{panel.url}/revoke", data={"name": "nobody"}) as r:
        assert r.status == 404


async def test_addresses_outside_the_allow_list_are_refused(panel: Panel):
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        for method, path in (("GET", "/"), ("GET", "/status.json"), ("POST", "/share")):
            async with other.request(method, panel.url + path) as r:
                assert r.status == 403
    assert "panel: refused a request from 127.0.0.3" in panel.stack.procs["daemon"].log()


async def test_cross_site_forms_are_refused(panel: Panel, http: aiohttp.ClientSession):
    """Another site's page cannot make or revoke links through the owner's browser."""
    for path, form in (("/share", {"service": "camera", "name": "mallory"}),
                       ("/revoke", {"name": "bob"})):
        async with http.post(panel.url + path, data=form,
                             headers={"Sec-Fetch-Site": "cross-site"}) as r:
            assert r.status == 403
    state = await status(http, panel)
    assert "mallory" not in {v["name"] for v in state["viewers"]}
