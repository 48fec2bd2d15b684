"""The browser client's side of trust (docs/security.md 1.3, 1.5) in real headless Chromium,
against the real daemon, signaling server and test app in a network namespace
(tests/browser/harness.py): share links, the pinned device fingerprint, the viewer's auth and
every refusal, and what the proxied app can see of the viewer's secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator

import pytest

from tests.browser.harness import SIGNAL_PORT, BrowserWorld, link_fields, unavailable_reason

pytestmark = pytest.mark.netns
RELAY_PORT = 8790


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserWorld]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    w = BrowserWorld(tmp_path_factory.mktemp("browser-trust"))
    try:
        w.up()
        yield w
    finally:
        w.down()


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_the_link_opens_the_app_and_leaves_the_address_bar(world: BrowserWorld) -> None:
    world.open("/page2?from=link")
    app, page = world.agent.app, world.agent.page
    app.wait_for_function("() => document.title === 'Page 2'")
    assert app.text_content("#query") == "from=link"
    assert page.evaluate("location.href") == world.origin() + "/page2?from=link"
    assert page.text_content("#viewer") == "alice"
    assert page.evaluate("window.__peerproxy.viewer") == "alice"
    # Not in the page's history, nor its navigation timing (the page loaded itself again).
    assert page.evaluate("navigation.entries().map(e => e.url)")[-1] == world.origin() + "/page2?from=link"
    assert page.evaluate("performance.getEntriesByType('navigation')[0].name") == (
        world.origin() + "/page2?from=link")
    # A reload of the tab reconnects with the same access (no link in the address bar now).
    page.reload()
    world.wait_phase("connected")
    assert world.agent.app.evaluate("location.pathname + location.search") == "/page2?from=link"
    # A new tab (a fresh context) without the link has nothing.
    world.open("/", url=world.origin() + "/", phase="nolink")


def test_no_link_explains_how_to_get_one(world: BrowserWorld) -> None:
    answered, requests = world.answered(), len(world.app_requests())
    world.open(url=world.origin() + "/settings", phase="nolink")
    page = world.agent.page
    assert page.text_content("#message") == "This address needs a share link."
    help_text = page.text_content("#help")
    assert "peerproxyd share --service camera --name <your name>" in help_text
    assert f"{world.origin()}/#v=1&d={world.device}&s=camera&n=…" in help_text
    assert not page.is_visible("#steps")
    assert page.evaluate("document.getElementById('app')") is None
    world.screenshot("nolink")
    assert world.answered() == answered and len(world.app_requests()) == requests


def test_an_incomplete_link_is_refused_and_removed(world: BrowserWorld) -> None:
    answered = world.answered()
    world.open(url=world.link("/", t=None), phase="badlink")
    page = world.agent.page
    assert page.text_content("#message") == "This share link is incomplete or damaged."
    assert page.text_content("#detail") == "The link says: link lacks t."
    assert page.evaluate("location.href") == world.origin() + "/"
    world.open(url=world.link("/", f=link_fields(world.links["alice"])["f"][:-2]), phase="badlink")
    assert page.text_content("#detail") == "The link says: link f must be base64url of 32 bytes."
    assert world.answered() == answered  # nothing was even offered


def test_a_wrong_token_is_unauthorized(world: BrowserWorld) -> None:
    requests = len(world.app_requests())
    world.open(url=world.link("/", t=b64u(hashlib.sha256(b"guessed").digest())), phase="unauthorized")
    page = world.agent.page
    assert page.text_content("#message") == "The device does not accept this link."
    assert "No viewer “alice” with this key" in page.text_content("#detail")
    # The step that failed is "Access", after the device's identity and the path were fine.
    steps = page.evaluate("[...document.querySelectorAll('#steps li')].map(li => li.className)")
    assert steps == ["done", "done", "done", "failed", ""]
    assert page.evaluate("document.getElementById('app')") is None
    world.screenshot("unauthorized")
    assert len(world.app_requests()) == requests
    # An unknown name is the same refusal (the device does not tell them apart).
    world.open(url=world.link("/", n="mallory"), phase="unauthorized")
    assert "No viewer “mallory” with this key" in page.text_content("#detail")


def test_a_revoked_viewer_is_cut_off_and_told(world: BrowserWorld) -> None:
    world.share("bob")
    world.open("/", viewer="bob")
    app, page = world.agent.app, world.agent.page
    app.wait_for_function("() => window.appLoaded === true")
    world.revoke("bob")
    world.wait_phase("revoked", timeout=15)
    assert page.text_content("#message") == "Access for “bob” was revoked."
    assert "Ask the device's owner for a new link" in page.text_content("#detail")
    assert page.is_visible("#card")
    assert page.evaluate("document.getElementById('app')") is None  # the app is gone
    steps = page.evaluate("[...document.querySelectorAll('#steps li')].map(li => li.className)")
    assert steps == ["done", "done", "done", "failed", ""]
    world.screenshot("revoked")
    # Opening the link again: refused at once, the same words.
    requests = len(world.app_requests())
    world.open("/", viewer="bob", phase="revoked")
    assert page.text_content("#message") == "Access for “bob” was revoked."
    assert len(world.app_requests()) == requests


def test_a_forged_device_fingerprint_is_refused_before_anything_is_sent(world: BrowserWorld) -> None:
    relay = world.start("relay", "-m", "tests.browser.relay", "--port", str(RELAY_PORT),
                        "--upstream", str(SIGNAL_PORT))
    relay.wait_for_log("relay listening")
    requests = len(world.app_requests())
    daemon_log = len(world.procs["daemon"].log())
    world.open(url=world.link("/", port=RELAY_PORT), phase="mismatch")
    page = world.agent.page
    assert page.text_content("#message") == "The device's identity does not match the link."
    assert "tried to intercept" in page.text_content("#detail")
    rewrote = re.search(r"^REWROTE (\S+) -> (\S+)$", relay.log(), re.M)
    assert rewrote, relay.log()
    real, forged = rewrote.groups()
    help_text = page.text_content("#help")
    assert f"The device answered with {forged}" in help_text
    assert f"The link pins {real.upper()}" in help_text
    steps = page.evaluate("[...document.querySelectorAll('#steps li')].map(li => li.className)")
    assert steps == ["done", "failed", "", "", ""]
    world.screenshot("mismatch")
    # No retry, no request for the app, and the device never saw an auth message.
    page.wait_for_timeout(1500)
    assert page.evaluate("window.__peerproxy.attempts") == 1
    assert page.evaluate("window.__peerproxy.phase") == "mismatch"
    assert len(world.app_requests()) == requests
    # (The browser never even set the forged answer: no DTLS, no data channel at the daemon.)
    later = world.procs["daemon"].log()[daemon_log:]
    assert "data channel open" not in later and "authenticated" not in later
    # The same link through the honest server works: the check is the fingerprint, nothing else.
    world.open("/")
    relay.stop()


def test_the_app_cannot_see_the_token(world: BrowserWorld) -> None:
    link = world.links["alice"]
    token = link_fields(link)["t"]
    key = hashlib.sha256(token.encode()).digest()
    secrets_ = {"token": token, "K hex": key.hex(), "K b64u": b64u(key),
                "K b64": base64.b64encode(key).decode()}
    world.open("/peek")
    app = world.agent.app
    app.wait_for_function("() => window.peekDone === true")
    seen = app.evaluate("window.seen")
    text = json.dumps(seen)
    for what, secret in secrets_.items():
        assert secret not in text, f"the app can see the {what}: {text[:2000]}"
    assert "#" not in seen["parentHref"] and seen["parentHash"] == ""
    looked = seen["navigationEntries"] + seen["navigationTiming"] + seen["activation"]
    assert looked and all("#" not in url for url in looked), looked
    # The probe did look where a token could be: it sees the manager's state, this tab's id
    # in sessionStorage and the record IndexedDB keeps (a certificate and the MAC bound to it).
    assert seen["managerState"]["viewer"] == "alice"
    assert list(seen["sessionStorage"]) == ["peerproxyd-tab"]
    tab = seen["sessionStorage"]["peerproxyd-tab"]
    record = seen["indexedDB"]["peerproxyd-viewer"]["credentials"]
    assert record["keys"] == [tab]
    kept = record["values"][0]
    assert sorted(kept) == ["certificate", "device", "mac", "name", "pinned", "service", "viewerFp"]
    assert kept["certificate"]["certificate"][0]["value"].upper() == kept["viewerFp"]
    assert seen["managerHtml"].startswith("<html")


FULL_CARD = """() => new Promise((resolve) => {
  const giveUp = Date.now() + 20000;
  const look = () => {
    if (document.body.dataset.phase === 'full' || Date.now() > giveUp) {
      resolve([document.getElementById('message').textContent,
               document.getElementById('detail').textContent]);
    } else setTimeout(look, 10);
  };
  look();
})"""
"""The card's message and detail, read in the page while its phase is "full"."""


def test_a_full_device_says_so_and_lets_the_viewer_in_when_a_place_frees(world: BrowserWorld) -> None:
    world.agent.new_page()  # the last test's page would reconnect and take the one place
    world.extra_limits = ["max_peers = 1"]
    world.stop_daemon()
    world.start_daemon()
    try:
        # A native client takes the one place.
        client = world.start("client", "-m", "peerproxyd", "connect", world.links["alice"],
                             "--signal", f"ws://127.0.0.1:{SIGNAL_PORT}/ws",
                             "--listen", "127.0.0.1:0", "--host-address", "127.0.0.1")
        client.wait_for_log("is at http")
        world.open("/", phase="full")
        page = world.agent.page
        # Read in the page at a moment it is "full": it retries every 0.25-10 s, and each
        # attempt clears the card while it runs.
        shown = page.evaluate(FULL_CARD)
        assert shown == ["The device is serving as many viewers as it can.", "Retrying…"]
        world.screenshot("full")
        client.stop()
        world.wait_phase("connected", timeout=30)
        assert page.evaluate("window.__peerproxy.attempts") >= 2
    finally:
        world.extra_limits = []
        world.stop_daemon()
        world.start_daemon()


def test_the_secret_is_reused_across_reconnects(world: BrowserWorld) -> None:
    world.open("/")
    page = world.agent.page
    fingerprints = []
    for _ in range(2):
        fingerprints.append(page.evaluate(
            "window.__peerproxy.pc.localDescription.sdp.match(/a=fingerprint:sha-256 (\\S+)/)[1]"))
        world.stop_daemon()
        world.wait_phase("lost")
        world.start_daemon()
        world.wait_phase("connected", timeout=30)
    assert page.evaluate("window.__peerproxy.connections") == 3
    assert fingerprints[0] == fingerprints[1]
    last = page.evaluate("window.__peerproxy.pc.localDescription.sdp.match(/a=fingerprint:sha-256 (\\S+)/)[1]")
    assert last == fingerprints[0]


def test_the_landing_page_opens_a_pasted_link(world: BrowserWorld) -> None:
    world.agent.new_page()
    page = world.agent.page
    page.goto(f"http://localhost:{SIGNAL_PORT}/")
    link = world.links["alice"]
    page.fill("input[name=link]", link.replace("&t=", "&x="))
    page.click("button")
    assert page.text_content("#link-error") == "This is not a whole share link: link lacks t."
    page.fill("input[name=link]", link)
    page.click("button")
    world.wait_phase("connected")
    assert page.evaluate("location.href") == world.origin() + "/"
