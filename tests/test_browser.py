"""The browser client in real headless Chromium, against a real multi-page app behind a real
daemon and signaling server, all inside a network namespace made for this module.

Design (tests/browser/harness.py): the namespace holds the app, `peerproxyd signal`,
`peerproxyd serve` and Chromium; Chromium is launched and driven by tests/browser/agent.py,
which also runs in the namespace (its DevTools port exists only there) and takes Playwright
calls from this process as JSON lines over a pipe. `world.agent.page` is the top page (the
connection manager), `world.agent.app` the app's frame. Each test opens a fresh browser
context (no service worker, no storage) through the share link of the service's viewer
(http://<world.device>--camera.localhost:8787/#v=1&...). The trust side (links, refusals,
what the app can see) is tests/test_browser_trust.py. Peer connections are counted on the
daemon side ("answered" lines in its log).
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
from collections.abc import Iterator

import pytest

from tests.browser.app import LOGO_RGB
from tests.browser.harness import BrowserWorld, png_pixel, unavailable_reason
from tests.support.upstream_app import pattern

pytestmark = pytest.mark.netns
MB = 1024 * 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserWorld]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    w = BrowserWorld(tmp_path_factory.mktemp("browser"))
    try:
        w.up()
        yield w
    finally:
        w.down()


def test_app_renders_through_the_data_channel(world: BrowserWorld) -> None:
    before = world.answered()
    world.open("/")
    app, page = world.agent.app, world.agent.page
    app.wait_for_function("() => window.appLoaded === true")
    assert app.evaluate("document.title") == "Test app home"
    assert app.text_content("#js-status") == "script ran"
    # CSS (served gzip-compressed by the app: the worker decodes it) applies.
    assert app.evaluate("getComputedStyle(document.querySelector('h1')).color") == "rgb(200, 30, 30)"
    assert app.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(240, 248, 255)"
    # The image loaded, and its pixels are on the screen where the frame puts it.
    logo = app.evaluate(
        """() => { const i = document.getElementById('logo'); const r = i.getBoundingClientRect();
                   return {complete: i.complete, w: i.naturalWidth, x: r.x + r.width / 2,
                           y: r.y + r.height / 2}; }"""
    )
    assert logo["complete"] and logo["w"] == 64
    frame = page.evaluate(
        "(() => { const r = document.getElementById('app').getBoundingClientRect();"
        " return {x: r.x, y: r.y}; })()"
    )
    page.wait_for_function("() => document.getElementById('rtt').textContent.startsWith('RTT')")
    shot = world.screenshot("rendered").read_bytes()
    pixel = png_pixel(shot, int(frame["x"] + logo["x"]), int(frame["y"] + logo["y"]))
    assert all(abs(a - b) <= 2 for a, b in zip(pixel, LOGO_RGB)), pixel
    # The bar: connected, the path in use, the round-trip time.
    assert page.text_content("#status") == "Connected"
    assert page.text_content("#path") == "direct (LAN)"
    assert re.fullmatch(r"RTT \d+(\.\d)? ms", page.text_content("#rtt"))
    assert page.evaluate("document.title") == f"Test app home · {world.device} · camera"
    assert page.text_content("#viewer") == "alice"
    assert world.answered() - before == 1


def test_fetch_and_xhr_with_json(world: BrowserWorld) -> None:
    world.open("/")
    app = world.agent.app
    got = app.evaluate(
        """async () => {
            const r = await fetch('/api/echo?x=1&y=' + encodeURIComponent('é'));
            return {status: r.status, type: r.headers.get('content-type'), body: await r.json()};
        }"""
    )
    assert got["status"] == 200 and got["type"].startswith("application/json")
    assert got["body"]["method"] == "GET"
    assert got["body"]["query"] == {"x": "1", "y": "é"}
    headers = got["body"]["headers"]
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"{world.device}--camera.localhost:8787"
    posted = app.evaluate(
        """async () => {
            const r = await fetch('/api/echo', {method: 'POST',
                headers: {'content-type': 'application/json', 'x-custom': 'yes'},
                body: JSON.stringify({a: 1, text: 'grüße', list: [1, 2, 3]})});
            return await r.json();
        }"""
    )
    assert posted["method"] == "POST"
    assert posted["json"] == {"a": 1, "text": "grüße", "list": [1, 2, 3]}
    assert posted["headers"]["x-custom"] == "yes"
    assert posted["headers"]["origin"] == world.origin()
    xhr = app.evaluate(
        """() => new Promise((resolve) => {
            const x = new XMLHttpRequest();
            x.open('PUT', '/api/echo?via=xhr');
            x.setRequestHeader('content-type', 'application/json');
            x.onload = () => resolve([x.status, JSON.parse(x.responseText)]);
            x.send(JSON.stringify({put: true}));
        })"""
    )
    assert xhr[0] == 200 and xhr[1]["method"] == "PUT" and xhr[1]["json"] == {"put": True}
    head = app.evaluate(
        """async () => { const r = await fetch('/api/echo', {method: 'HEAD'});
                         return [r.status, r.headers.get('content-type'), (await r.text()).length]; }"""
    )
    assert head[0] == 200 and head[1].startswith("application/json") and head[2] == 0
    missing = app.evaluate("async () => { const r = await fetch('/nope'); return [r.status, r.ok]; }")
    assert missing == [404, False]


def test_form_upload_of_10_mb(world: BrowserWorld) -> None:
    # The file is put into the form's <input type=file> in the page (DataTransfer): Playwright's
    # set_input_files would stream it over CDP to a browser it treats as remote (11 s for 10 MB).
    block = random.Random(3).randbytes(64 * 1024)
    data = block * 160
    world.open("/upload")
    app = world.agent.app
    app.wait_for_selector("#upload-form")
    app.evaluate(
        """([b64, count]) => {
            const block = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const file = new File(Array(count).fill(block), 'upload.bin',
                                  {type: 'application/octet-stream'});
            const dt = new DataTransfer();
            dt.items.add(file);
            document.getElementById('file').files = dt.files;
        }""",
        [base64.b64encode(block).decode(), 160],
    )
    app.click("#submit")
    app.wait_for_selector("#sha", timeout=60_000)
    sha = hashlib.sha256(data).hexdigest()
    assert app.text_content("#sha") == sha
    assert app.text_content("#size") == str(len(data))
    assert world.app_state()["upload"] == {
        "sha256": sha, "size": len(data), "note": "ten megabytes", "filename": "upload.bin"
    }


def test_download_of_50_mb_streams_and_hashes_in_the_page(world: BrowserWorld) -> None:
    size = 50 * MB
    world.open("/")
    got = world.agent.app.evaluate(
        """async (size) => {
            const { Sha256 } = await import('/static/sha256.js');
            const started = performance.now();
            const r = await fetch('/download?size=' + size);
            const reader = r.body.getReader();
            const sha = new Sha256();
            let total = 0, first = null, chunks = 0;
            for (;;) {
                const { value, done } = await reader.read();
                if (done) break;
                if (first === null) first = performance.now() - started;
                sha.update(value);
                total += value.length;
                chunks += 1;
            }
            return {sha: sha.hex(), total, first, ms: performance.now() - started, chunks,
                    length: r.headers.get('content-length')};
        }""",
        size,
    )
    assert got["total"] == size
    assert got["sha"] == hashlib.sha256(pattern(size)).hexdigest()
    assert got["length"] == str(size)
    # Streamed: the first bytes arrived long before the last, in many pieces.
    assert got["first"] < got["ms"] / 4, got
    assert got["chunks"] > 100


def test_download_links_save_the_file_not_the_manager_page(world: BrowserWorld) -> None:
    """Chromium fetches `<a download>` past the service worker (the network would answer
    with the manager page): the app shim saves the real file, however the app clicks it,
    and a failed download says so in the bar."""
    world.open("/downloads")
    app = world.agent.app
    for selector in ("#plain", "#named", "#ha", "#detached"):
        app.click(selector)
        world.agent.page.wait_for_function(
            "() => document.body.dataset.download === 'done'", timeout=20_000)
        world.agent.page.evaluate("delete document.body.dataset.download")
    got = {d["name"]: d for d in world.agent.request("downloads")}
    assert set(got) == {"data.bin", "résumé.csv", "ha.bin", "d.bin"}
    for name, size in (("data.bin", 300_000), ("ha.bin", 70_000), ("d.bin", 1000)):
        assert got[name]["failure"] is None
        assert got[name]["sha256"] == hashlib.sha256(pattern(size)).hexdigest(), name
    assert got["résumé.csv"]["size"] == len(b"a,b\n1,2\n")
    app.click("#missing")
    world.agent.page.wait_for_function("() => document.body.dataset.download === 'failed'")
    assert "no-such-file.bin failed: 404" in world.agent.page.inner_text("#bar-detail")
    names = [d["name"] for d in world.agent.request("downloads")]
    assert len(names) == 4, names  # each saved once, nothing for the failure


def test_the_app_sees_no_service_worker_api(world: BrowserWorld) -> None:
    """The origin's service worker is the client's: the app can neither replace nor
    unregister it, and sees a browser without service workers."""
    world.open("/")
    assert world.agent.app.evaluate("'serviceWorker' in navigator") is False
    assert world.agent.page.evaluate("!!navigator.serviceWorker.controller") is True
    world.agent.app.evaluate("location.href = '/page2'")
    world.agent.app.wait_for_selector("#title")
    assert world.agent.app.evaluate("'serviceWorker' in navigator") is False


def test_the_card_leaves_when_a_never_ending_document_shows(world: BrowserWorld) -> None:
    """A document that keeps loading (a live view) never fires `load`: the card leaves at
    the frame's first response instead."""
    world.open("/endless", phase="connected")
    assert world.agent.page.is_hidden("#card")
    assert world.agent.app.inner_text("#title") == "Live"
    assert world.agent.app.evaluate("document.readyState") == "loading"


def _versioned(world: BrowserWorld, name: str) -> list[str]:
    """`if-none-match status` of each GET the app answered for /versioned/<name>."""
    return re.findall(rf"^VERSIONED {name} (.*)$", world.procs["app"].log(), re.M)


def _fetch_text(world: BrowserWorld, url: str, init: str = "{}") -> dict[str, object]:
    return world.agent.app.evaluate(
        f"fetch({url!r}, {init}).then(async r => ({{status: r.status, text: await r.text()}}))")


def _wait_stored(world: BrowserWorld, url: str, etag: str) -> None:
    """Until the worker's copy of `url` (Cache Storage, which the manager page shares) has `etag`."""
    world.agent.page.wait_for_function(
        """([url, etag]) => caches.open('peerproxy-http-1').then(c => c.match(url))
               .then(r => !!r && r.headers.get('etag') === etag)""",
        arg=[world.origin() + url, etag], timeout=10_000)


def test_a_reload_revalidates_the_apps_files_in_the_worker(world: BrowserWorld) -> None:
    """A file with a validator is kept by the worker (webclient/http-cache.js): asked again, it
    goes with If-None-Match and the app's 304 is answered from the copy, whole; a new version
    on the app replaces it."""
    world.open("/")
    first = _fetch_text(world, "/versioned/a")
    assert first["status"] == 200 and str(first["text"]).startswith("a version 1\n")
    _wait_stored(world, "/versioned/a", '"a-1"')
    again = _fetch_text(world, "/versioned/a")
    assert again == first
    assert _versioned(world, "a") == ["- 200", '"a-1" 304']
    world.agent.app.evaluate("fetch('/versioned/a', {method: 'POST'}).then(r => r.status)")
    # The POST dropped the copy (RFC 9111 4.4): the next GET is not conditional.
    third = _fetch_text(world, "/versioned/a")
    assert str(third["text"]).startswith("a version 2\n")
    assert _versioned(world, "a")[2:] == ["- 200"]
    # What the app asks as conditional or with no-store is left to it.
    own = _fetch_text(world, "/versioned/a", "{headers: {'If-None-Match': '\"a-2\"'}}")
    assert own["status"] == 304
    _fetch_text(world, "/versioned/a", "{cache: 'no-store'}")
    assert _versioned(world, "a")[3:] == ['"a-2" 304', "- 200"]


def test_fresh_files_come_from_the_worker_without_a_request(world: BrowserWorld) -> None:
    """Fresh by Cache-Control max-age, a kept file is answered by the worker alone, as the
    browser's own cache would; `no-cache` still revalidates it."""
    world.open("/")
    url = "/versioned/b?max_age=600"
    first = _fetch_text(world, url)
    _wait_stored(world, url, '"b-1"')
    assert _fetch_text(world, url) == first
    assert _versioned(world, "b") == ["- 200"]
    assert _fetch_text(world, url, "{cache: 'no-cache'}") == first
    assert _versioned(world, "b") == ["- 200", '"b-1" 304']


def test_a_reload_loads_the_client_without_a_request(world: BrowserWorld) -> None:
    """The manager page names the client's files by version (signaling/web.py): a reload
    takes every one from the browser's cache, without even a revalidation, and connects."""
    world.open("/")
    world.agent.page.reload()
    world.wait_phase("connected")
    loaded = world.agent.page.evaluate(
        """performance.getEntriesByType('resource')
             .filter((e) => new URL(e.name).pathname.startsWith('/__peerproxy/'))
             .map((e) => [new URL(e.name).pathname + new URL(e.name).search, e.transferSize])""")
    modules = [url for url, _ in loaded if url.split("?")[0].endswith(".js")]
    assert len(modules) >= 10 and all("?v=" in url for url in modules), loaded
    assert [entry for entry in loaded if entry[1] != 0] == []


def test_event_source_reconnects_with_last_event_id(world: BrowserWorld) -> None:
    """Chromium's reconnection request reaches the worker without its Last-Event-ID: the
    worker adds the id of the stream it passed on (webclient/event-stream.js)."""
    world.open("/")
    app = world.agent.app
    app.evaluate("""() => { window.got = []; window.es = new EventSource('/events');
                            es.onmessage = (e) => got.push(e.lastEventId); }""")
    app.wait_for_function("() => window.es.readyState === EventSource.CLOSED")
    assert app.evaluate("window.got") == ["1", "2", "3", "4", "5", "6"]
    seen = re.findall(r"^EVENTS last-event-id=(\S+)$", world.procs["app"].log(), re.M)
    assert seen[-3:] == ["-", "3", "6"], seen


def test_event_source_retries_through_outages(world: BrowserWorld) -> None:
    """An EventSource retries after a broken stream and after an outage (the daemon's 504),
    as it does without the worker, instead of closing for good."""
    world.open("/")
    app = world.agent.app
    app.evaluate("""() => { window.got = []; window.states = [];
                            window.es = new EventSource('/events/flaky?key=' + Math.random());
                            es.onmessage = (e) => got.push(e.lastEventId);
                            es.onerror = () => states.push(es.readyState); }""")
    app.wait_for_function("() => window.es.readyState === EventSource.CLOSED", timeout=60_000)
    assert app.evaluate("window.got") == ["1", "2", "3", "4"]
    assert app.evaluate("window.states")[:-1] == [0, 0, 0]  # retrying until the 204
    seen = re.findall(r"^FLAKY (\d) last-event-id=(\S+)$", world.procs["app"].log(), re.M)
    assert seen[-4:] == [("1", "-"), ("2", "2"), ("3", "2"), ("4", "4")], seen


def test_navigation_history_and_redirect_share_one_peer_connection(world: BrowserWorld) -> None:
    before = world.answered()
    world.open("/")
    app, page = world.agent.app, world.agent.page
    app.wait_for_function("() => window.appLoaded === true")
    app.click("#to-page2")
    app.wait_for_function("() => document.title === 'Page 2'")
    page.evaluate("history.back()")
    app.wait_for_function("() => document.title === 'Test app home' && window.appLoaded === true")
    page.evaluate("history.forward()")
    app.wait_for_function("() => document.title === 'Page 2'")
    # A form POST answered with 303 See Other: the frame follows it to a GET.
    app.fill("#word", "peer")
    app.click("#send")
    app.wait_for_selector("#done")
    assert app.text_content("#done") == "Done: peer"
    assert app.evaluate("location.pathname + location.search") == "/done?word=peer"
    # A script-driven location change.
    app.evaluate("location.href = '/page2?via=location'")
    app.wait_for_function("() => document.getElementById('query')?.textContent === 'via=location'")
    assert world.answered() - before == 1
    assert page.evaluate("window.__peerproxy.connections") == 1
    assert page.evaluate("location.pathname") == "/"  # the manager stayed put


def test_a_restarted_service_worker_finds_the_connection_again(world: BrowserWorld) -> None:
    """Browsers stop idle workers (Chromium after ~30 s); the next request must still work."""
    world.open("/")
    app = world.agent.app
    app.wait_for_function("() => window.appLoaded === true")
    world.agent.request(
        "cdp", commands=[["ServiceWorker.enable", {}], ["ServiceWorker.stopAllWorkers", {}]]
    )
    app.click("#to-page2")
    app.wait_for_function("() => document.title === 'Page 2'")
    got = app.evaluate("async () => (await fetch('/api/echo?after=restart')).json()")
    assert got["query"] == {"after": "restart"}
    # The new worker asked the page for a port; the peer connection stayed the same.
    assert world.agent.page.evaluate("window.__peerproxy.portsOffered") == 2
    assert world.agent.page.evaluate("window.__peerproxy.connections") == 1


def test_deep_link_opens_the_app_at_that_path(world: BrowserWorld) -> None:
    world.open("/page2?from=link")
    app = world.agent.app
    app.wait_for_function("() => document.title === 'Page 2'")
    assert app.text_content("#query") == "from=link"
    assert app.evaluate("location.pathname + location.search") == "/page2?from=link"


def test_device_offline_is_reported(world: BrowserWorld) -> None:
    ghost = "g" * 32  # a device id nobody registered
    world.open("/", device=ghost, phase="offline")
    page = world.agent.page
    assert page.text_content("#status") == f"{ghost} is offline."
    assert page.text_content("#detail") == "Waiting for it to come online…"
    assert page.evaluate("document.getElementById('app')") is None
    world.screenshot("offline")


def test_unknown_service_is_reported(world: BrowserWorld) -> None:
    # With share links an unknown service is a link the device does not grant: alice's key
    # under another service name.
    requests = len(world.app_requests())
    world.open("/", service="nope", viewer="alice", phase="unauthorized")
    page = world.agent.page
    assert page.text_content("#message") == "This link does not open “nope”."
    assert "“alice” may use camera, not nope" in page.text_content("#detail")
    assert page.evaluate("document.getElementById('app')") is None
    assert len(world.app_requests()) == requests


def test_cookie_login_protected_page_and_logout(world: BrowserWorld) -> None:
    logins = world.app_state().get("logins", 0)
    world.open("/login")
    app, page = world.agent.app, world.agent.page
    app.wait_for_selector("#login-form")
    app.fill("#user", "alice")
    app.fill("#password", "wonderland")
    app.click("#login")
    app.wait_for_selector("#welcome")
    assert app.text_content("#welcome") == "Welcome alice"
    assert world.app_state()["logins"] == logins + 1
    # The app's scripts see the non-HttpOnly cookies of their path, never the session.
    assert app.text_content("#cookies") == "theme=dark"
    assert app.evaluate("document.cookie") == "theme=dark"
    who = app.evaluate("async () => (await fetch('/api/whoami')).json()")
    assert who["user"] == "alice"
    sent = dict(part.split("=", 1) for part in who["cookie"].split("; "))
    assert sent["theme"] == "dark" and sent["scoped"] == "api-only" and len(sent["session"]) == 32
    # A cookie the app's script sets travels with its next request.
    app.evaluate("document.cookie = 'jsset=42; path=/'")
    who = app.evaluate("async () => (await fetch('/api/whoami')).json()")
    assert "jsset=42" in who["cookie"].split("; ")
    # The browser's own store holds only what scripts may see.
    names = {c["name"] for c in world.agent.call("context", "cookies")}
    assert {"theme", "jsset"} <= names and "session" not in names
    # A reload is a new visit (a new peer connection): the HttpOnly session is still there.
    page.reload()
    world.wait_phase("connected")
    app = world.agent.app
    app.evaluate("location.href = '/private'")
    app.wait_for_selector("#welcome")
    assert app.text_content("#welcome") == "Welcome alice"
    app.click("#logout")
    app.wait_for_selector("#login-form")
    who = app.evaluate("async () => (await fetch('/api/whoami')).json()")
    assert who["user"] is None and "session=" not in who["cookie"]
    app.evaluate("window.previousPage = true; location.href = '/private'")
    # Redirected to the login page again (a new document, not the one we left): logged out.
    app.wait_for_function("() => !window.previousPage && document.getElementById('login-form')")
    assert "theme=dark" in app.evaluate("document.cookie")
    # Another service of the same device is another origin: none of these cookies there.
    page.goto(world.link("/", service="admin"))
    world.wait_phase("connected")
    app = world.agent.app
    assert app.evaluate("document.cookie") == ""
    assert app.evaluate("async () => (await fetch('/api/whoami')).json()") == {"user": None, "cookie": ""}


def test_daemon_restart_reconnects_and_next_navigation_works(world: BrowserWorld) -> None:
    world.open("/")
    app, page = world.agent.app, world.agent.page
    app.click("#to-page2")
    app.wait_for_function("() => document.title === 'Page 2'")
    world.stop_daemon()
    world.wait_phase("lost")
    assert page.text_content("#status") == "Connection lost — reconnecting…"
    page.wait_for_function(
        "d => document.getElementById('detail').textContent === d + ' is offline.'",
        arg=world.device)
    world.screenshot("lost")
    world.start_daemon()
    world.wait_phase("connected", timeout=30)
    assert page.text_content("#status") == "Reconnected"
    app.click("#home")
    app.wait_for_function("() => document.title === 'Test app home' && window.appLoaded === true")
    assert page.evaluate("window.__peerproxy.connections") == 2
