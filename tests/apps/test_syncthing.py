"""Syncthing's web GUI (Debian's 1.19.2) through the browser client, in real headless Chromium:
its GUI password (HTTP Basic auth, asked for in the connection manager's sign-in dialog), its
Host check (why the service needs `host = "upstream"`), its CSRF token (a cookie
the GUI's script reads and sends back as X-CSRF-Token), its live view (long polls of
/rest/events, quiet for up to 60 s), and settings and a folder saved in the GUI, seen after a
reload, in the REST API and in config.xml.

World (tests/browser/harness.py): one network namespace with `peerproxyd signal`, the daemon and
Chromium; Syncthing runs in it with a fresh home (tests/apps/syncthing.py: no discovery, relays,
NAT, usage reports or upgrades; GUI and sync protocol on 127.0.0.1). The daemon offers that
GUI twice: `sync` with `host = "upstream"` (what docs/apps.md tells Syncthing users), and
`syncprod` sending the Host a viewer has in production (`<device>--sync.<domain>`): in tests
viewers use `*.localhost` names, which Syncthing's check lets through.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps import syncthing
from tests.browser.harness import BrowserWorld, unavailable_reason

logger = logging.getLogger(__name__)
pytestmark = pytest.mark.netns
SERVICE = "sync"
PROD_HOST_SERVICE = "syncprod"
PROD_HOST = "kq3v7w2m4xj5n6p7r2s3t4u5v6w7x2y3--sync.peer.example.net"


class Syncthing:
    """The running instance: its home, device id and API key (for checks made directly)."""

    def __init__(self, world: BrowserWorld, home: Path) -> None:
        self.world = world
        self.home = home
        info = syncthing.make_home(home)
        self.device_id = info["device_id"]
        self.api_key = info["api_key"]
        self.proc = syncthing.start(world, home)

    def rest(self, path: str, method: str = "GET", body: Any = None) -> Any:
        return syncthing.rest(self.world, self.api_key, path, method, body)

    def set_gui_password(self, user: str, password: str) -> None:
        """As `syncthing cli config gui user set` would; "" turns the GUI's auth off. Syncthing
        restarts its GUI listener to apply it, at times before it has answered the PATCH."""
        want = 401 if user else 200
        deadline = time.monotonic() + 30
        while self._status("/") != want:
            assert time.monotonic() < deadline, f"the GUI never answered {want}"
            try:
                self.rest("/rest/config/gui", "PATCH", {"user": user, "password": password})
            except RuntimeError as exc:  # the listener went away under the request
                logger.info("PATCH /rest/config/gui: %s", exc)
            time.sleep(0.5)

    def _status(self, path: str) -> int:
        """The GUI's status for `path`; 0 while it restarts its listener (not listening)."""
        try:
            return int(self.world.ns_run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                         f"http://127.0.0.1:{syncthing.GUI_PORT}{path}"))
        except RuntimeError:
            return 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserWorld]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    missing = syncthing.missing()
    if missing:
        pytest.fail(missing)
    w = BrowserWorld(
        tmp_path_factory.mktemp("syncthing"), test_app=False,
        services={SERVICE: syncthing.GUI_PORT, PROD_HOST_SERVICE: syncthing.GUI_PORT},
        service_options={SERVICE: ['host = "upstream"'],
                         PROD_HOST_SERVICE: [f'host = "{PROD_HOST}"']},
    )
    try:
        w.up()
        yield w
    finally:
        w.down()


@pytest.fixture(scope="module")
def st(world: BrowserWorld) -> Syncthing:
    """Syncthing, made with a GUI user and password (`syncthing generate --gui-user
    --gui-password`), started in the namespace."""
    return Syncthing(world, world.log_dir / "home")


@pytest.fixture
def gui(world: BrowserWorld, st: Syncthing) -> Any:
    """The GUI without a password (see the first test), open in a fresh browser context."""
    st.set_gui_password("", "")
    world.open("/", service=SERVICE, timeout=60)
    app = world.agent.app
    app.wait_for_selector("text=This Device", timeout=60_000)
    app.wait_for_selector("text=v1.19", timeout=60_000)  # filled in from /rest/system/version
    return app


def access_log(world: BrowserWorld, service: str = SERVICE) -> list[tuple[str, str, int, float]]:
    """(method, target, status, ms) of each request the daemon logged for `service`."""
    return [(m, t, int(s), float(ms)) for m, t, s, ms in re.findall(
        rf"access: {service} (\S+) (\S+) (\d+) \d+B ([\d.]+)ms", world.procs["daemon"].log())]


def test_gui_password_is_asked_for_in_the_sign_in_dialog(world: BrowserWorld, st: Syncthing) -> None:
    """Syncthing 1.19 guards its GUI with HTTP Basic auth. A browser asks for Basic
    credentials only for responses from the network, never for the app frame's (the service
    worker makes them); the connection manager's sign-in dialog does (webclient/signin.js),
    and the worker sends the request again with them. Once a request carries the credentials,
    Syncthing's session cookie (kept by the worker's cookie jar) opens the GUI for the rest
    of the session, also after a reload, which forgets the tab's credentials."""
    st.set_gui_password(syncthing.USER, syncthing.PASSWORD)
    seen = len(access_log(world))
    world.open("/", service=SERVICE, timeout=60, document=False)  # the dialog holds the 401
    page = world.agent.page
    page.wait_for_selector("#signin[open]", timeout=60_000)
    text = page.inner_text("#signin")
    assert f"{SERVICE} on {world.device} asks for a username and password" in text
    assert "Realm: “Authorization Required”" in text

    def sign_in(password: str) -> None:
        page.wait_for_selector("#signin[open]", timeout=60_000)
        page.fill("[data-signin=user]", syncthing.USER)
        page.fill("[data-signin=password]", password)
        page.click("#signin button.primary")

    sign_in("not-the-password")
    page.wait_for_selector("[data-signin=wrong]", state="visible", timeout=60_000)
    sign_in(syncthing.PASSWORD)
    app = world.agent.app
    app.wait_for_selector("text=This Device", timeout=60_000)
    app.wait_for_selector("text=v1.19", timeout=60_000)  # REST calls got through
    assert [a[:3] for a in access_log(world)[seen:] if a[1] == "/"][:3] == [
        ("GET", "/", 401), ("GET", "/", 401), ("GET", "/", 200)]
    assert page.evaluate("document.getElementById('signin').dataset.shown") == "2"
    assert re.search(r"\bsessionid-\w+=", app.evaluate("document.cookie"))
    assert not page.is_visible("#signin")
    world.agent.page.reload()
    world.wait_phase("connected", timeout=60)
    world.agent.app.wait_for_selector("text=This Device", timeout=60_000)
    assert world.agent.page.evaluate("document.getElementById('signin').dataset.shown") is None


def test_host_check_refuses_the_viewers_host_name(world: BrowserWorld, st: Syncthing) -> None:
    """A GUI on 127.0.0.1 refuses any Host that is not loopback or `localhost` (DNS
    rebinding guard): under `host = "viewer"` every production viewer would get 403.
    `host = "upstream"` (service `sync`, the rest of this module) sends 127.0.0.1:8384."""
    st.set_gui_password("", "")
    world.open("/", service=PROD_HOST_SERVICE, timeout=60)
    app = world.agent.app
    app.wait_for_function("() => document.body?.innerText.includes('Host check error')",
                          timeout=60_000)
    assert ("GET", "/", 403) in [a[:3] for a in access_log(world, PROD_HOST_SERVICE)]


def test_csrf_token_cookie_goes_back_as_a_header(gui: Any, world: BrowserWorld) -> None:
    """The cookie `CSRF-Token-<short id>` (set by the response to `/`, read by the GUI's script
    through document.cookie) is what every REST call must echo in `X-CSRF-Token-<short id>`."""
    cookie = gui.evaluate("document.cookie")
    match = re.search(r"CSRF-Token-(\w+)=(\w+)", cookie)
    assert match, cookie
    got = gui.evaluate(
        """async ([id, token]) => {
            const bare = await fetch('/rest/system/status');
            const withToken = await fetch('/rest/system/status',
                                          {headers: {['X-CSRF-Token-' + id]: token}});
            return [bare.status, (await bare.text()).trim(), withToken.status,
                    (await withToken.json()).myID];
        }""",
        [match.group(1), match.group(2)],
    )
    assert got[:2] == [403, "CSRF Error"]
    assert got[2] == 200 and got[3].startswith(match.group(1))


def test_settings_saved_in_the_gui_are_kept_across_a_reload(
    gui: Any, world: BrowserWorld, st: Syncthing
) -> None:
    name = f"garden-pi-{time.monotonic_ns() % 10000}"
    gui.click("text=Actions")
    gui.click("[ng-click='showSettings()']")
    gui.wait_for_selector("#settings", state="visible", timeout=30_000)
    gui.fill("#DeviceName", name)
    gui.click("#settings [ng-click='saveSettings()']")
    gui.wait_for_selector("#settings", state="hidden", timeout=30_000)
    # The GUI's PUT carried the CSRF token (else 403) and Syncthing took it.
    assert ("PUT", "/rest/config", 200) in [a[:3] for a in access_log(world)]
    devices = {d["deviceID"]: d for d in st.rest("/rest/config/devices")}
    assert devices[st.device_id]["name"] == name
    on_disk = syncthing.config_xml(st.home).find(f"device[@id='{st.device_id}']")
    assert on_disk is not None and on_disk.get("name") == name
    world.agent.page.reload()
    world.wait_phase("connected", timeout=60)
    app = world.agent.app
    app.wait_for_selector("text=This Device", timeout=60_000)
    app.wait_for_selector(f".panel-title >> text={name}", timeout=30_000)


def test_a_folder_added_in_the_gui_exists_and_its_files_show_up_live(
    gui: Any, world: BrowserWorld, st: Syncthing
) -> None:
    path = world.log_dir / "photos"
    seen = len(access_log(world))
    gui.click("[ng-click='addFolder()']")
    gui.wait_for_selector("#editFolder", state="visible", timeout=30_000)
    gui.fill("#folderLabel", "Photos")
    gui.fill("#folderPath", str(path))
    folder_id = gui.input_value("#folderID")
    gui.click("#editFolder [ng-click='saveFolder()']")
    gui.wait_for_selector("#editFolder", state="hidden", timeout=30_000)
    gui.wait_for_selector("#folders >> text=Photos", timeout=30_000)
    folders = {f["id"]: f for f in st.rest("/rest/config/folders")}
    assert folders[folder_id]["label"] == "Photos" and folders[folder_id]["path"] == str(path)
    deadline = time.monotonic() + 30
    while not (path / ".stfolder").exists():  # Syncthing marks the folder when it starts it
        assert time.monotonic() < deadline, "Syncthing did not start the folder"
        time.sleep(0.2)
    # A file lands in the folder and a rescan runs (outside the GUI): the GUI, waiting in a
    # long poll of /rest/events, shows it without a reload.
    (path / "cat.jpg").write_bytes(b"\xff\xd8" + bytes(123_454))
    st.rest(f"/rest/db/scan?folder={folder_id}", "POST")
    local_state = re.compile(r"Local State\s+1\s+0\s+~121 KiB")
    deadline = time.monotonic() + 30
    while not local_state.search(text := gui.evaluate("document.getElementById('folders').innerText")):
        assert time.monotonic() < deadline, text
        if "Local State" not in text:  # folded (the list is redrawn as the folder starts)
            gui.click("#folders >> text=Photos")
        time.sleep(1)
    # Renamed by someone else (the REST API): shown live too.
    st.rest(f"/rest/config/folders/{folder_id}", "PATCH", {"label": "Holiday photos"})
    gui.wait_for_selector("#folders >> text=Holiday photos", timeout=30_000)
    events = [a for a in access_log(world)[seen:] if a[1].startswith("/rest/events?since=")]
    assert events and all(a[2] == 200 for a in events), events


def test_a_quiet_gui_stays_connected_through_a_60_s_long_poll(
    gui: Any, world: BrowserWorld
) -> None:
    """Syncthing answers /rest/events after 60 s when nothing happens; it sends its head at
    once and the body at the end. The daemon lets that quiet body wait (before read_timeout
    bounded only the head, it cut the poll at 60 s and the GUI showed "Connection Error")."""
    started = time.monotonic()
    count = len([a for a in access_log(world) if a[1].startswith("/rest/events?since=")])
    deadline = started + 90
    while True:
        events = [a for a in access_log(world) if a[1].startswith("/rest/events?since=")]
        long_polls = [a for a in events[count:] if a[3] >= 55_000]
        if long_polls:
            break
        assert time.monotonic() < deadline, events[count:]
        time.sleep(1)
    assert all(a[2] == 200 for a in events[count:]), events[count:]
    assert gui.evaluate("getComputedStyle(document.getElementById('networkError')).display") == "none"
