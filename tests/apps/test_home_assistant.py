"""A real Home Assistant (2025.4.4, installed by tests/apps/setup_home_assistant.sh) through
the browser client, as a person uses it: share link, HA's own login page, the default
dashboard, a switch, its live updates over HA's WebSocket API, a reload.

One BrowserWorld for the module (tests/browser/harness.py) without the test app: HA runs in
the namespace on 127.0.0.1:8123 as the service "ha", onboarded over its REST API (curl in
the namespace: pytest never enters it) with the owner below. The tests share one browser
page: each logs in only if the page is not on HA's dashboard yet. HA's log is
<log_dir>/ha.log, its config dir <log_dir>/ha-config.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.apps.home_assistant import (
    ENTITY,
    ENTITY_NAME,
    RestClient,
    hass_argv,
    missing_install,
    write_config,
)
from tests.browser.harness import AgentError, BrowserWorld, unavailable_reason

pytestmark = pytest.mark.netns

PORT = 8123
SERVICE = "ha"
OWNER = ("Owner", "owner", "porch-light-9")  # name, username, password
HOLD = 125.0  # seconds the WebSocket must stay up: two of HA's 55 s server pings, and more
TOGGLE = "ha-entity-toggle ha-switch"  # Playwright's CSS reaches into shadow roots
SWITCH = f"""() => {{
    const find = (root) => {{
        for (const el of root.querySelectorAll('*')) {{
            if (el.localName === 'ha-entity-toggle' && el.stateObj?.entity_id === '{ENTITY}')
                return el;
            const inner = el.shadowRoot && find(el.shadowRoot);
            if (inner) return inner;
        }}
        return null;
    }};
    const toggle = find(document);
    const sw = toggle?.shadowRoot?.querySelector('ha-switch');
    return toggle && sw ? {{state: toggle.stateObj.state, checked: sw.checked}} : null;
}}"""
"""The dashboard's switch of ENTITY as the page shows it: {state (HA's, as the frontend got
it over the WebSocket), checked (the switch)}, or null when it is not on the screen."""


@dataclass
class HomeAssistant:
    world: BrowserWorld
    api: RestClient


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    missing = missing_install()
    if missing:
        pytest.fail(missing)
    log_dir = tmp_path_factory.mktemp("home-assistant")
    # Head waits up to 30 s: HA's first answers on 2 busy cores (not its live connections:
    # the daemon never cuts a quiet response body or WebSocket).
    world = BrowserWorld(log_dir, test_app=False, services={SERVICE: PORT},
                         service_options={SERVICE: ["read_timeout = 30.0"]})
    try:
        world.up()
        # HA's HTTP client sessions resolve .local names with zeroconf, which joins a
        # multicast group: without a multicast route, analytics (which onboarding needs)
        # fails to set up with `[Errno 19] No such device`.
        world.ns_run("ip", "link", "set", "lo", "multicast", "on")
        world.ns_run("ip", "route", "add", "224.0.0.0/4", "dev", "lo")
        world.start_cmd("ha", *hass_argv(write_config(log_dir / "ha-config", PORT)))
        api = RestClient(world.ns_run, f"http://127.0.0.1:{PORT}")
        api.wait_ready()
        api.onboard(*OWNER)
        api.wait_state(ENTITY, "off")
        yield HomeAssistant(world, api)
    finally:
        world.down()


def _switch(ha: HomeAssistant) -> dict[str, object] | None:
    try:
        return ha.world.agent.app.evaluate(SWITCH)
    except AgentError:  # no page or no frame yet
        return None


def _wait_switch(ha: HomeAssistant, checked: bool, timeout: float = 20.0) -> None:
    ha.world.agent.app.wait_for_function(
        f"(checked) => ({SWITCH})()?.checked === checked", arg=checked, timeout=timeout * 1000)


def _log_in(ha: HomeAssistant) -> None:
    """Open the share link in a fresh browser context and log in on HA's own page."""
    world = ha.world
    world.open(service=SERVICE, timeout=60)
    app = world.agent.app
    try:
        app.wait_for_selector("input[name=username]", timeout=60_000)
    except AgentError as exc:
        http_log = re.findall(r".*\[homeassistant\.components\.http.*", world.procs["ha"].log())
        raise AssertionError(f"no login page: {exc}\nthe frame shows: "
                             f"{app.evaluate('document.body.innerText')[:500]!r}\n"
                             f"HA's http log: {http_log[-5:]}") from exc
    assert "/auth/authorize?" in app.evaluate("location.href")
    app.fill("input[name=username]", OWNER[1])
    app.fill("input[name=password]", OWNER[2])
    app.press("input[name=password]", "Enter")
    app.wait_for_selector(f"text={ENTITY_NAME}", timeout=60_000)


def _dashboard(ha: HomeAssistant) -> None:
    """The page shows HA's dashboard (logged in by an earlier test, or now)."""
    if _switch(ha) is None:
        _log_in(ha)


def test_login_through_the_share_link_shows_the_dashboard(ha: HomeAssistant) -> None:
    _log_in(ha)
    app, page = ha.world.agent.app, ha.world.agent.page
    assert app.evaluate("location.pathname") == "/lovelace/0"
    assert app.evaluate("document.title") == "Overview – Home Assistant"
    assert _switch(ha) == {"state": "off", "checked": False}
    assert page.text_content("#status") == "Connected"
    # The daemon sent no X-Forwarded-For, which HA (no trusted proxies) answers with 400.
    log = ha.world.procs["ha"].log()
    assert "reverse proxy" not in log
    ha.world.screenshot("ha-dashboard")


def test_the_switch_on_the_dashboard_switches_the_entity(ha: HomeAssistant) -> None:
    _dashboard(ha)
    app = ha.world.agent.app
    assert ha.api.state(ENTITY) == "off"
    app.click(TOGGLE)
    ha.api.wait_state(ENTITY, "on")
    _wait_switch(ha, True)
    app.click(TOGGLE)
    ha.api.wait_state(ENTITY, "off")
    _wait_switch(ha, False)


def test_the_websocket_api_stays_connected_and_live(ha: HomeAssistant) -> None:
    _dashboard(ha)
    app, daemon = ha.world.agent.app, ha.world.procs["daemon"]
    # The frontend's connection (home-assistant-js-websocket): count its drops from now on.
    app.evaluate("""async () => {
        const { conn } = await window.hassConnection;
        window.ppDrops = 0;
        conn.addEventListener('disconnected', () => { window.ppDrops += 1; });
    }""")
    closed = len(re.findall(r"ha WS /api/websocket", daemon.log()))  # logged at its end
    time.sleep(HOLD)
    assert app.evaluate("async () => (await window.hassConnection).conn.connected") is True
    assert app.evaluate("window.ppDrops") == 0
    assert len(re.findall(r"ha WS /api/websocket", daemon.log())) == closed
    # State changes made elsewhere still reach the page over that same socket.
    ha.api.set_state(ENTITY, True)
    _wait_switch(ha, True, timeout=10)
    ha.api.set_state(ENTITY, False)
    _wait_switch(ha, False, timeout=10)
    assert app.evaluate("window.ppDrops") == 0


def test_a_reload_keeps_the_login(ha: HomeAssistant) -> None:
    _dashboard(ha)
    world = ha.world
    before = world.answered()
    closed = len(re.findall(r"ha WS /api/websocket 101", world.procs["daemon"].log()))
    world.agent.page.reload()
    world.wait_phase("connected", timeout=60)
    assert world.answered() == before + 1  # a new peer connection, the same HA session
    # The old page's WebSocket went through the daemon, which logs it when it ends.
    world.procs["daemon"].wait_for_log(r"ha WS /api/websocket 101", count=closed + 1)
    world.agent.app.wait_for_selector(f"text={ENTITY_NAME}", timeout=60_000)
    assert world.agent.app.evaluate("location.pathname") != "/auth/authorize"
    assert world.agent.app.query_selector("input[name=username]") is None
    assert _switch(ha) == {"state": "off", "checked": False}


def test_home_assistant_registers_no_service_worker(ha: HomeAssistant) -> None:
    # HA registers /sw-modern.js where `"serviceWorker" in navigator` and the page is https
    # or on "localhost": the client hides that API from the app frame, so on https too HA
    # keeps away from the client's worker, and works without its own.
    _dashboard(ha)
    assert ha.world.agent.app.evaluate("'serviceWorker' in navigator") is False
    workers = ha.world.agent.request("service_workers")
    assert workers and all(url.endswith("/__peerproxy/sw.js") for url in workers), workers
