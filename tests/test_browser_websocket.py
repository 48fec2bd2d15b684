"""The proxied app's WebSockets in real headless Chromium: the app's page opens
`new WebSocket(...)` to its own origin and it travels over the data channel, through the
daemon, to the test app's /ws/echo (tests/browser/app.py). Same world as tests/test_browser.py
(tests/browser/harness.py): one network namespace with the app, the signaling server, the
daemon and Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.browser.harness import BrowserWorld, unavailable_reason

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserWorld]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    w = BrowserWorld(tmp_path_factory.mktemp("browser-ws"))
    try:
        w.up()
        yield w
    finally:
        w.down()


def ws_log(world: BrowserWorld) -> list[str]:
    return re.findall(r"camera WS (\S+ \d+ \d+B [\d.]+ms(?: code=\d+)?)", world.procs["daemon"].log())


def test_the_apps_own_script_talks_over_a_websocket(world: BrowserWorld) -> None:
    """The page's inline script (under a nonce + 'strict-dynamic' CSP) opens an absolute
    ws:// URL to its origin, as Home Assistant's frontend does."""
    before = world.answered()
    world.open("/chat")
    app = world.agent.app
    app.wait_for_function(
        "() => document.getElementById('log')?.textContent === 'hello from the page|1,2,3'"
    )
    assert app.evaluate("WebSocket.__peerproxy") is True
    # Leaving the page ends its socket; the daemon logs each WebSocket when it ends.
    count = len(ws_log(world))
    app.evaluate("location.href = '/page2'")
    world.procs["daemon"].wait_for_log(r"camera WS /ws/echo 101 \d+B [\d.]+ms code=1006",
                                       count=1 + sum("code=1006" in x for x in ws_log(world)))
    assert len(ws_log(world)) == count + 1
    assert world.answered() - before == 1


def test_apps_that_compare_origin_with_host_accept_their_own_requests(
    world: BrowserWorld,
) -> None:
    """The test app refuses WebSockets and POSTs whose Origin is not its Host, as Jupyter,
    Grafana and code-server do; the upstream gets the Host the viewer used ([services.*]
    host = "viewer"), so the app's own requests pass."""
    world.open("/")
    got = world.agent.app.evaluate(
        """async () => {
            const echo = await fetch('/api/echo', {method: 'POST', body: 'x'});
            const opened = await new Promise((resolve) => {
                const ws = new WebSocket('/ws/echo');
                ws.onopen = () => { ws.close(); resolve(true); };
                ws.onclose = () => resolve(false);
            });
            return {status: echo.status, host: (await echo.json()).headers.host, opened};
        }"""
    )
    assert got == {"status": 200, "host": f"{world.device}--camera.localhost:8787",
                   "opened": True}
    assert "BLOCKED" not in world.procs["app"].log()


def test_echo_of_1000_messages_text_and_binary_in_order(world: BrowserWorld) -> None:
    before = world.answered()
    world.open("/")
    got = world.agent.app.evaluate(
        """async () => {
            const ws = new WebSocket('/ws/echo', ['nope', 'chat']);
            const opened = await new Promise((resolve) => {
                ws.onopen = () => resolve(true); ws.onclose = () => resolve(false); });
            if (!opened) return {opened};
            const sizes = [1, 10, 100, 1000, 16 * 1024, 64 * 1024];
            const sent = [];
            for (let i = 0; i < 1000; i++) {
                const size = sizes[i % sizes.length];
                if (i % 2) {
                    const bytes = new Uint8Array(size).map((_, j) => (i + j) % 251);
                    sent.push(bytes);
                    ws.send(i % 4 === 1 ? bytes : (i % 4 === 3 ? new Blob([bytes]) : bytes.buffer));
                } else {
                    const text = (`${i}:` + 'é✓'.repeat(size)).slice(0, size + 4);
                    sent.push(text);
                    ws.send(text);
                }
            }
            const buffered = ws.bufferedAmount;
            const received = [];
            await new Promise((resolve) => {
                ws.onmessage = (e) => { received.push(e.data); if (received.length === 1000) resolve(); };
            });
            let same = 0, blobs = 0;
            for (let i = 0; i < 1000; i++) {
                let data = received[i];
                if (data instanceof Blob) { blobs += 1; data = new Uint8Array(await data.arrayBuffer()); }
                const want = sent[i];
                if (typeof want === 'string' ? data === want
                    : data.length === want.length && data.every((b, j) => b === want[j])) same += 1;
            }
            ws.binaryType = 'arraybuffer';
            ws.send(new Uint16Array([1, 513]).subarray(1));
            const typed = await new Promise((resolve) => { ws.onmessage = (e) => resolve(e.data); });
            const result = {opened, same, blobs, buffered, after: ws.bufferedAmount,
                            protocol: ws.protocol, extensions: ws.extensions, url: ws.url,
                            typed: Array.from(new Uint8Array(typed)), state: ws.readyState,
                            isWs: ws instanceof WebSocket, tag: String(ws)};
            ws.close();
            return result;
        }"""
    )
    assert got["opened"] and got["same"] == 1000, got
    assert got["blobs"] == 500  # binaryType "blob" by default
    assert got["buffered"] > 1_000_000 and got["after"] == 0
    assert got["protocol"] == "chat" and got["extensions"] == "" and got["state"] == 1
    assert got["url"] == world.origin().replace("http:", "ws:") + "/ws/echo"
    assert got["typed"] == [1, 2]  # only the view's bytes
    assert got["isWs"] and got["tag"] == "[object WebSocket]"
    assert world.answered() - before == 1


def test_close_codes_both_ways_and_failures(world: BrowserWorld) -> None:
    world.open("/")
    closes = len(world.app_state().get("ws_closes", []))
    got = world.agent.app.evaluate(
        """async () => {
            const run = (path, action) => new Promise((resolve) => {
                const ws = new WebSocket(path);
                const events = [];
                ws.onopen = () => { events.push('open'); action(ws); };
                ws.addEventListener('error', () => events.push('error'));
                ws.onclose = (e) => resolve({events, code: e.code, reason: e.reason,
                                             wasClean: e.wasClean, state: ws.readyState});
            });
            const errors = [];
            try { new WebSocket('/x').close(1001); } catch (e) { errors.push(e.name); }
            try { new WebSocket('ftp://x/'); } catch (e) { errors.push(e.name); }
            let other;
            try { other = new WebSocket('ws://elsewhere.localhost:9/'); other.close(); }
            catch (e) { other = e; }
            return {
                byPage: await run('/ws/echo', (ws) => ws.close(4000, 'bye')),
                byServer: await run('/ws/echo', (ws) => ws.send('close 4001 server bye')),
                dropped: await run('/ws/echo', (ws) => ws.send('drop')),
                refused: await run('/ws/missing', () => {}),
                errors,
                otherIsReal: !('_port' in other) && other.constructor.name === 'WebSocket',
            };
        }"""
    )
    assert got["byPage"] == {"events": ["open"], "code": 1000, "reason": "", "wasClean": True,
                             "state": 3}
    assert got["byServer"] == {"events": ["open"], "code": 4001, "reason": "server bye",
                               "wasClean": True, "state": 3}
    assert got["dropped"] == {"events": ["open", "error"], "code": 1006, "reason": "",
                              "wasClean": False, "state": 3}
    assert got["refused"] == {"events": ["error"], "code": 1006, "reason": "", "wasClean": False,
                              "state": 3}
    assert got["errors"] == ["InvalidAccessError", "SyntaxError"]
    assert got["otherIsReal"]
    # The page's close(4000, "bye") reached the app's server as such.
    assert world.app_state()["ws_closes"][closes:][:1] == [[4000, "bye"]]
    log = ws_log(world)
    assert any(line.startswith("/ws/missing 404") for line in log)
    assert any(re.fullmatch(r"/ws/echo 101 \d+B [\d.]+ms code=4001", line) for line in log)


def test_a_navigation_closes_the_pages_websockets(world: BrowserWorld) -> None:
    world.open("/")
    app = world.agent.app
    app.evaluate(
        """() => new Promise((resolve) => { window.kept = new WebSocket('/ws/echo');
                                            window.kept.onopen = resolve; })"""
    )
    closes = len(world.app_state().get("ws_closes", []))
    app.evaluate("location.href = '/page2'")
    app = world.agent.app
    app.wait_for_function("() => document.title === 'Page 2'")
    # The document that held it is gone: the upstream socket is closed as "going away".
    world.procs["app"].wait_for_log(r'"ws_closes": \[.*\[1001, ""\]\]', count=1)
    assert world.app_state()["ws_closes"][closes:] == [[1001, ""]]
    assert world.agent.page.evaluate("window.__peerproxy.connections") == 1
