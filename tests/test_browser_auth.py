"""HTTP Basic auth of the app through the browser client, in real headless Chromium.

A browser asks for Basic credentials only for a 401 from the network, never for a Response its
service worker made; so the client does it (webclient/basicauth.js, signin.js): the manager
shows a sign-in dialog, the worker sends the request again with the credentials, and the tab
keeps them in memory for the protection space. The test app's /basic/ area wants user "ann"
with a non-ASCII password (tests/browser/app.py) and logs each answer as a `BASIC` line.
World: tests/browser/harness.py, as tests/test_browser.py.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator

import pytest

from tests.browser.app import BASIC_PASSWORD, BASIC_REALM, BASIC_USER
from tests.browser.harness import BrowserWorld, unavailable_reason

pytestmark = pytest.mark.netns
DIALOG = "#signin[open]"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserWorld]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    w = BrowserWorld(tmp_path_factory.mktemp("browser-auth"))
    try:
        w.up()
        yield w
    finally:
        w.down()


def basic_log(world: BrowserWorld) -> list[tuple[int, str, str]]:
    """(status, method, target) of each request of the test app's /basic/ area, in order."""
    return [(int(s), m, t) for s, m, t in
            re.findall(r"^BASIC (\d+) (\S+) (\S+)$", world.procs["app"].log(), re.M)]


def dialogs_shown(world: BrowserWorld) -> int:
    return int(world.agent.page.evaluate("document.getElementById('signin').dataset.shown || 0"))


def sign_in(world: BrowserWorld, password: str = BASIC_PASSWORD) -> None:
    page = world.agent.page
    page.wait_for_selector(DIALOG)
    page.fill("[data-signin=user]", BASIC_USER)
    page.fill("[data-signin=password]", password)
    page.press("[data-signin=password]", "Enter")  # Enter signs in, as in a browser's dialog


def test_basic_auth_asks_in_a_dialog_and_retries(world: BrowserWorld) -> None:
    seen = len(basic_log(world))
    world.open("/basic/", document=False)  # the card leaves at the 401; the dialog covers it
    page, app = world.agent.page, world.agent.app
    page.wait_for_selector(DIALOG)
    text = page.inner_text("#signin")
    assert f"camera on {world.device} asks for a username and password" in text
    assert f"Realm: “{BASIC_REALM}”" in text
    assert not page.is_visible("[data-signin=wrong]")
    sign_in(world, "wrong password")
    # Refused: the dialog again, saying so.
    page.wait_for_selector("[data-signin=wrong]", state="visible")
    assert page.is_visible(DIALOG) and dialogs_shown(world) == 2
    sign_in(world)
    app.wait_for_selector("#data >> text=admin data")
    assert app.text_content("#title") == "Admin" and not page.is_visible(DIALOG)
    # The page's script got /basic/data.json with the credentials at once (its protection
    # space is /basic/), as a browser sends them.
    assert basic_log(world)[seen:] == [
        (401, "GET", "/basic/"), (401, "GET", "/basic/"), (200, "GET", "/basic/"),
        (200, "GET", "/basic/data.json")]
    # Later requests under /basic/ carry them too, WebSockets included; others do not.
    got = app.evaluate(
        """async () => {
            const deeper = await fetch('/basic/deeper/x?y=/1');
            const outside = await (await fetch('/api/echo')).json();
            const echoed = await new Promise((resolve) => {
                const ws = new WebSocket(`ws://${location.host}/basic/ws`, 'chat');
                ws.onopen = () => ws.send('hello');
                ws.onmessage = (e) => { resolve(e.data); ws.close(); };
                ws.onerror = () => resolve('error');
            });
            return [deeper.status, (await deeper.json()).path, outside.headers.authorization ?? null, echoed];
        }"""
    )
    assert got == [200, "/basic/deeper/x", None, "hello"]
    assert basic_log(world)[seen + 4:] == [(200, "GET", "/basic/deeper/x?y=/1"), (200, "GET", "/basic/ws")]
    assert dialogs_shown(world) == 2


def test_basic_auth_cancel_gives_the_app_the_401(world: BrowserWorld) -> None:
    world.open("/basic/", document=False)
    page, app = world.agent.page, world.agent.app
    page.wait_for_selector(DIALOG)
    page.click("[data-signin=cancel]")
    app.wait_for_selector("#denied >> text=Not Authorized")
    assert not page.is_visible(DIALOG)
    # A fetch of the app: the same (Escape cancels too); the 401 comes with its challenge.
    app.evaluate(
        """() => { window.got = fetch('/basic/data.json').then(async (r) =>
                   [r.status, r.headers.get('www-authenticate'), await r.text()]); }"""
    )
    page.wait_for_selector(DIALOG)
    page.press("[data-signin=user]", "Escape")
    status, challenge, body = app.evaluate("window.got")
    assert status == 401 and challenge == f'Basic realm="{BASIC_REALM}", charset="UTF-8"'
    assert "Not Authorized" in body
    assert dialogs_shown(world) == 2
    # A WebSocket without credentials is refused (browsers do not ask for those).
    assert app.evaluate(
        """() => new Promise((resolve) => {
            const ws = new WebSocket(`ws://${location.host}/basic/ws`, 'chat');
            ws.onopen = () => resolve('open'); ws.onclose = (e) => resolve(e.code);
        })"""
    ) == 1006


def test_basic_auth_resends_a_body_and_parallel_401s_share_one_dialog(world: BrowserWorld) -> None:
    """The worker keeps a request body as a Blob, so a POST refused with 401 goes again, whole;
    every request that met the 401 while the dialog was open waits for the same dialog."""
    size = 1_500_000  # more than the 1 MiB of body credit the page gives at once
    expected = hashlib.sha256(bytes(i * 7 % 251 for i in range(size))).hexdigest()
    world.open("/")
    page, app = world.agent.page, world.agent.app
    app.wait_for_function("() => window.appLoaded === true")
    seen = len(basic_log(world))
    app.evaluate(
        """(size) => {
            const body = new Uint8Array(size);
            for (let i = 0; i < size; i++) body[i] = i * 7 % 251;
            window.posted = fetch('/basic/echo', {method: 'POST', body})
                .then(async (r) => [r.status, await r.json()]);
            window.gets = Promise.all(['/basic/a', '/basic/b', '/basic/c'].map(
                (p) => fetch(p).then((r) => r.status)));
        }""",
        size,
    )
    page.wait_for_selector(DIALOG)
    deadline = time.monotonic() + 60
    while len([a for a in basic_log(world)[seen:] if a[0] == 401]) < 4:
        assert time.monotonic() < deadline, basic_log(world)[seen:]
        time.sleep(0.2)
    sign_in(world)
    assert app.evaluate("window.posted") == [200, {"sha256": expected, "size": size}]
    assert app.evaluate("window.gets") == [200, 200, 200]
    assert dialogs_shown(world) == 1
    log = basic_log(world)[seen:]
    assert sorted(log) == sorted([(401, "POST", "/basic/echo"), (200, "POST", "/basic/echo")] + [
        (status, "GET", f"/basic/{p}") for p in "abc" for status in (401, 200)]), log


def test_basic_auth_leaves_other_schemes_and_the_apps_own_authorization_alone(
    world: BrowserWorld,
) -> None:
    world.open("/")
    page, app = world.agent.page, world.agent.app
    got = app.evaluate(
        """async () => {
            const digest = await fetch('/digest');
            const own = await fetch('/basic/data.json', {headers: {authorization: 'Basic eDp5'}});
            const omit = await fetch('/basic/data.json', {credentials: 'omit'});
            return [digest.status, digest.headers.get('www-authenticate'), await digest.text(),
                    own.status, omit.status];
        }"""
    )
    assert got == [401, 'Digest realm="d", nonce="abc", qop="auth"', "digest only", 401, 401]
    assert not page.is_visible(DIALOG) and dialogs_shown(world) == 0
