"""Node-RED's editor through the browser client, in real headless Chromium: its login form
(adminAuth, a bearer token the editor keeps in localStorage and sends on every admin call),
its ~90 assets loaded in parallel, its WebSocket `/comms` through the shim (debug messages and
other users' deploys, live), and a flow built with the mouse, deployed and seen again after a
reload, on disk and in the admin API.

World (tests/browser/harness.py): one network namespace with `peerproxyd signal`, the daemon
(service `red` -> Node-RED on 127.0.0.1:1880) and Chromium; Node-RED runs in it from
.apps/node-red (tests/apps/setup_node_red.sh) with the settings.js of tests/apps/node_red.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.apps import node_red
from tests.browser.harness import BrowserWorld, unavailable_reason

pytestmark = pytest.mark.netns
SERVICE = "red"
NODES = "#red-ui-workspace-chart .red-ui-flow-node-group"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserWorld]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    missing = node_red.missing()
    if missing:
        pytest.fail(missing)
    log_dir = tmp_path_factory.mktemp("node-red")
    w = BrowserWorld(log_dir, services={SERVICE: node_red.PORT}, test_app=False,
                     service_options={SERVICE: ["read_timeout = 60.0"]})
    try:
        w.up()
        node_red.make_user_dir(log_dir / "user")
        node_red.start(w, log_dir / "user")
        yield w
    finally:
        w.down()


def open_login(world: BrowserWorld) -> Any:
    """A fresh browser context on the share link; the app frame once the login form shows."""
    world.open("/", service=SERVICE, timeout=60)
    app = world.agent.app
    app.wait_for_selector("#node-dialog-login-username", timeout=60_000)
    return app


def log_in(app: Any, password: str = node_red.PASSWORD) -> None:
    app.fill("#node-dialog-login-username", node_red.USER)
    app.fill("#node-dialog-login-password", password)
    app.click("#node-dialog-login-submit")


def wait_editor(app: Any) -> None:
    """Wait for the palette and for the deployed flows drawn on the workspace.

    The palette shows before GET /flows is answered; a node dropped meanwhile would be
    counted together with the earlier tests' nodes drawn a moment later.
    """
    app.wait_for_selector(".red-ui-palette-node[data-palette-type=inject]", timeout=60_000)
    app.wait_for_selector("#red-ui-header-button-deploy", timeout=60_000)
    app.wait_for_function(
        f"""() => RED.nodes.version() && RED.workspaces.active() &&
            RED.nodes.filterNodes({{z: RED.workspaces.active()}}).length ===
            document.querySelectorAll('{NODES}').length""", timeout=60_000)


@pytest.fixture
def editor(world: BrowserWorld) -> Any:
    """The editor, logged in, in a fresh browser context."""
    app = open_login(world)
    log_in(app)
    wait_editor(app)
    return app


def node_ids(app: Any) -> list[str]:
    return app.evaluate(f"Array.from(document.querySelectorAll('{NODES}')).map(g => g.id)")


def node_label(app: Any, node_id: str) -> str:
    return app.text_content(f"[id='{node_id}'] .red-ui-flow-node-label-text")


def drop_node(app: Any, kind: str, x: int, y: int) -> str:
    """Drag `kind` from the palette onto the workspace at (x, y); the new node's id."""
    before = set(node_ids(app))
    app.drag_and_drop(f".red-ui-palette-node[data-palette-type={kind}]", "#red-ui-workspace-chart",
                      target_position={"x": x, "y": y})
    app.wait_for_function(f"n => document.querySelectorAll('{NODES}').length > n", arg=len(before))
    (new,) = set(node_ids(app)) - before
    return new


def rename(app: Any, node_id: str, name: str) -> None:
    """Double-click the node, type its name into the edit tray, Done."""
    app.dblclick(f"[id='{node_id}'] rect.red-ui-flow-node")
    app.wait_for_selector("#node-input-name", timeout=30_000)
    app.fill("#node-input-name", name)
    app.click("#node-dialog-ok")
    app.wait_for_selector("#node-input-name", state="detached", timeout=30_000)


def deploy(app: Any) -> None:
    app.click("#red-ui-header-button-deploy")
    app.wait_for_selector(".red-ui-notification >> text=Successfully deployed", timeout=60_000)


def flows_on_disk(world: BrowserWorld) -> list[dict[str, Any]]:
    return json.loads((world.log_dir / "user" / "flows.json").read_text())


def test_login_form_gives_a_bearer_token_kept_in_local_storage(world: BrowserWorld) -> None:
    app = open_login(world)
    # Nothing of the admin API without a token: the editor asked and got 401.
    assert app.evaluate("async () => (await fetch('/flows')).status") == 401
    log_in(app, "not-the-password")
    app.wait_for_selector("#node-dialog-login-failed", state="visible", timeout=30_000)
    assert app.evaluate("localStorage.getItem('auth-tokens')") is None
    log_in(app)
    wait_editor(app)
    tokens = json.loads(app.evaluate("localStorage.getItem('auth-tokens')"))
    assert tokens["token_type"] == "Bearer" and len(tokens["access_token"]) > 40
    # The token is what opens the admin API (the browser holds no cookie for it).
    status = app.evaluate(
        """async (token) => {
            const plain = await fetch('/settings');
            const bearer = await fetch('/settings', {headers: {authorization: 'Bearer ' + token}});
            return [plain.status, bearer.status, (await bearer.json()).user];
        }""",
        tokens["access_token"],
    )
    assert status == [401, 200, {"username": node_red.USER, "permissions": "*"}]
    assert world.procs["node-red"].popen.poll() is None


def test_the_editor_loads_its_assets_in_parallel(editor: Any) -> None:
    """About 90 requests (scripts of 1-4 MB, CSS, fonts, locale files, 40 palette icons),
    many of them in flight at once on one data channel; all answered 2xx and used."""
    loads = editor.evaluate(
        """() => performance.getEntriesByType('resource').map(e => ({
            name: e.name, start: e.startTime, end: e.responseEnd, status: e.responseStatus,
            size: e.encodedBodySize}))"""
    )
    assert len(loads) >= 60, [x["name"] for x in loads]
    # The one 401: the editor's first /settings, before the login form.
    failed = [x for x in loads if not (200 <= x["status"] < 300 or x["status"] == 304)
              and not (x["status"] == 401 and "/settings?" in x["name"])]
    assert not failed, failed
    assert sum(x["size"] for x in loads) > 5_000_000
    starts = sorted(x["start"] for x in loads)
    peak = max(sum(1 for y in loads if y["start"] <= t < y["end"]) for t in starts)
    assert peak >= 8, peak
    icons = [x for x in loads if "/icons/node-red/" in x["name"]]
    assert len(icons) >= 20
    assert all(x["size"] > 100 for x in icons), icons
    fonts = editor.evaluate("document.fonts.check('14px FontAwesome')")
    assert fonts is True


def test_a_node_added_in_the_editor_is_deployed_and_kept_across_a_reload(
    editor: Any, world: BrowserWorld
) -> None:
    name = f"tunnel tick {time.monotonic_ns() % 100000}"
    node = drop_node(editor, "inject", 200, 100)
    rename(editor, node, name)
    assert node_label(editor, node) == name
    deploy(editor)
    on_disk = {n["id"]: n for n in flows_on_disk(world)}
    assert on_disk[node]["type"] == "inject" and on_disk[node]["name"] == name
    token = node_red.admin_token(world)
    api = {n["id"]: n for n in node_red.admin_get(world, token, "/flows")["flows"]}
    assert api[node]["name"] == name
    # A reload: the manager reconnects, the token in localStorage skips the login form.
    world.agent.page.reload()
    world.wait_phase("connected", timeout=60)
    app = world.agent.app
    app.wait_for_selector(f"[id='{node}']", timeout=60_000)
    assert node_label(app, node) == name
    assert not app.is_visible("#node-dialog-login-username")
    # Changed again after the reload and deployed: the file follows.
    rename(app, node, name + " v2")
    deploy(app)
    assert {n["id"]: n for n in flows_on_disk(world)}[node]["name"] == name + " v2"


def test_comms_websocket_brings_debug_messages_and_other_deploys_live(
    editor: Any, world: BrowserWorld
) -> None:
    app = editor
    assert app.evaluate("WebSocket.__peerproxy") is True
    inject = drop_node(app, "inject", 200, 220)
    debug = drop_node(app, "debug", 440, 220)
    rename(app, debug, "tunnel debug")
    app.drag_and_drop(f"[id='{inject}'] .red-ui-flow-port-output .red-ui-flow-port",
                      f"[id='{debug}'] .red-ui-flow-port-input .red-ui-flow-port")
    deploy(app)
    wires = {n["id"]: n for n in flows_on_disk(world)}[inject]["wires"]
    assert wires == [[debug]]
    # The inject button is a POST; the debug message comes back over /comms.
    app.click("#red-ui-tab-debug-link-button")
    app.click(f"[id='{inject}'] .red-ui-flow-node-button-button")
    message = app.wait_for_selector(".red-ui-debug-msg >> text=tunnel debug", timeout=30_000)
    text = app.evaluate("() => document.querySelector('.red-ui-debug-msg').innerText")
    assert "msg.payload : number" in text, text
    payload = int(re.search(r"\b(\d{13})\b", text).group(1))
    assert abs(payload / 1000 - time.time()) < 600, text
    assert message is not None
    # Someone else deploys (the admin API, as node-red-admin or a second editor would):
    # this editor is told at once, over the same WebSocket.
    token = node_red.admin_token(world)
    current = node_red.admin_get(world, token, "/flows")
    for n in current["flows"]:
        if n["id"] == debug:
            n["name"] = "renamed elsewhere"
    body = json.dumps({"flows": current["flows"], "rev": current["rev"]})
    world.ns_run("curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {token}",
                 "-H", "Node-RED-API-Version: v2", "-H", "Content-Type: application/json",
                 "--data-binary", body, f"http://127.0.0.1:{node_red.PORT}/flows")
    app.wait_for_selector("text=The flows on the server have been updated.", timeout=30_000)
    # Leaving the page ends the socket; the daemon logs it as a WebSocket of this service.
    daemon = world.procs["daemon"]
    count = len(re.findall(rf"{SERVICE} WS /comms 101", daemon.log()))
    world.agent.page.reload()
    daemon.wait_for_log(rf"{SERVICE} WS /comms 101 \d+B", count=count + 1, timeout=30)
