"""Headless Chromium as the remote viewer on the emulated NAT network (tests/netns.py): behind
a cone NAT it reaches the daemon peer to peer through STUN (srflx), behind a symmetric NAT
through coturn (relay). The native-client side of the same paths is tests/test_nat.py.

The browser runs in the remote viewer's namespace (`rv`), driven by tests/browser/agent.py.
It opens the share link at `http://<device>--camera.localhost:8787/`: a `*.localhost` origin
stays a secure context (service worker), and `--host-resolver-rules` points it at the
signaling server on the internet segment. The signaling server hands the browser coturn as
STUN and TURN server, with TURN REST-API credentials minted from coturn's secret.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser.harness import Agent
from tests.browser.harness import unavailable_reason as browser_unavailable
from tests.netns import (
    DEV,
    DEVICE,
    INET,
    REMOTE_WAN,
    SIGNAL_PORT,
    TURN_PORT,
    TURN_SECRET,
    REPORT_RE,
    NetStack,
    Network,
    Report,
    coturn_relayed,
    report_from_log,
)
from tests.support.procs import TEST_BACKEND, Proc, share_link
from tests.support.upstream_app import pattern
from tests.test_nat import NEW_DEV, require_netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]
APP_PORT = 8081  # where NetStack.daemon() points service "camera"
PHASE_TIMEOUT = 40.0
FOLLOW_TIMEOUT = 15.0
"""Seconds the daemon gets to follow Chromium from a relayed to the direct pair."""
VIEWER = "rv-browser"


def signal_config(path: Path) -> Path:
    """The signaling server's config: coturn as STUN and TURN (UDP) for every browser."""
    path.write_text(
        "[server]\n"
        f'host = "{INET}"\nport = {SIGNAL_PORT}\n'
        "[ice]\n"
        f'urls = ["stun:{INET}:{TURN_PORT}", "turn:{INET}:{TURN_PORT}?transport=udp"]\n'
        f'turn_secret = "{TURN_SECRET}"\n'
    )
    return path


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NetStack]:
    require_netns()
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    net = Network(tmp_path, **getattr(request, "param", {})).up()
    try:
        stack = NetStack(net)
        stack.coturn = net.coturn()
        net.python("dev", "app", "-m", "tests.browser.app", "--port", str(APP_PORT))
        config = signal_config(tmp_path / "signal.toml")
        net.python("inet", "signal", "-m", "peerproxyd", "signal", "--config", str(config),
                   "--stun-port", "0")  # coturn owns 3478 here
        net.wait_port("dev", APP_PORT)
        net.wait_port("inet", SIGNAL_PORT)
        yield stack
    finally:
        net.down()


@pytest.fixture
def browser(stack: NetStack) -> Iterator[Agent]:
    """Chromium in the remote viewer's namespace; `*.localhost` resolves to the server."""
    agent = Agent(stack.net.ns["rv"].name, stack.net.log_dir,
                  chromium_flags=[f"--host-resolver-rules=MAP *.localhost {INET}"])
    try:
        yield agent
    finally:
        agent.quit()


def open_share_link(stack: NetStack, agent: Agent, viewer: str) -> None:
    """Open a new viewer's share link of service camera; wait until the page is connected."""
    fragment = urlsplit(share_link(stack.state_dir(DEVICE), "camera", viewer)).fragment
    url = f"http://{stack.device_id()}--camera.localhost:{SIGNAL_PORT}/#{fragment}"
    agent.new_page()
    agent.page.goto(url)
    agent.page.wait_for_function(
        "p => document.body.dataset.phase === p", arg="connected", timeout=PHASE_TIMEOUT * 1000
    )


def app_works(agent: Agent) -> None:
    """The app's page rendered in its frame, and a 1 MB download arrived intact."""
    agent.app.wait_for_function("() => window.appLoaded === true")
    assert agent.app.evaluate("document.title") == "Test app home"
    got = agent.app.evaluate(
        """async () => {
            const r = await fetch('/download?size=1000000');
            const body = new Uint8Array(await r.arrayBuffer());
            const digest = await crypto.subtle.digest('SHA-256', body);
            const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0'));
            return {status: r.status, size: body.length, sha256: hex.join('')};
        }"""
    )
    expected = hashlib.sha256(pattern(1_000_000)).hexdigest()
    assert got == {"status": 200, "size": 1_000_000, "sha256": expected}, got


def browser_turn_lines(coturn: Proc, daemon: Proc, packet: str) -> list[str]:
    """coturn's log lines of successful `packet`s (ALLOCATE, CHANNEL_BIND...) by the browser
    viewer: its TURN username is `<expiry>:<hello id>`, minted by the signaling server, and
    the daemon's log names the hello id of the peer session."""
    match = re.search(rf"PeerSession\((\S+) {VIEWER}\): connected via", daemon.log())
    assert match, daemon.log()[-2000:]
    return [
        line for line in coturn.log().splitlines()
        if f":{match[1]}>" in line and f"{packet} processed, success" in line
    ]


def direct_report(daemon: Proc) -> Report:
    """The daemon's selected pair, once it is not relayed (at most FOLLOW_TIMEOUT seconds).

    Chromium (controlling ICE) may start on a relayed pair, when the cone NAT dropped its first
    direct check, and nominate the direct pair about a second later; the daemon follows it
    (rtc/patches/aioice_follow.py) and logs `now connected via`."""
    report = report_from_log(daemon)
    deadline = time.monotonic() + FOLLOW_TIMEOUT
    while report.type == "relay" and time.monotonic() < deadline:  # bounded: 15 s
        time.sleep(0.1)
        *_, last = REPORT_RE.finditer(daemon.log())
        report = Report(last["type"], last["protocol"], last.group(0))
    return report


def path_text(agent: Agent, expected: str | None = None) -> str:
    """The page's path line, once not empty (and `expected`, if given: it is read every
    second)."""
    if expected is not None:
        agent.page.wait_for_function("p => document.getElementById('path').textContent === p",
                                     arg=expected, timeout=FOLLOW_TIMEOUT * 1000)
    agent.page.wait_for_function("() => document.getElementById('path').textContent !== ''")
    return str(agent.page.text_content("#path"))


@pytest.mark.parametrize("stack", [{"remote_nat": "cone"}], indirect=True)
def test_browser_behind_cone_nat_connects_through_nat(stack: NetStack, browser: Agent) -> None:
    daemon = stack.daemon()
    open_share_link(stack, browser, VIEWER)

    report = direct_report(daemon)
    # The daemon reached the browser at the remote router's mapping that STUN learnt, and no
    # relay carries the session (Chromium does ask coturn for permissions for its relay
    # candidate, so coturn's log is no proof here; the selected pair is).
    assert report.type == "srflx" and f"{REMOTE_WAN}:" in report.line, report
    assert "[relay]" not in report.line, report
    assert path_text(browser, "direct, through NAT") == "direct, through NAT"
    app_works(browser)
    # The browser was handed coturn with working credentials (it allocated), yet no relay won.
    assert stack.coturn is not None and browser_turn_lines(stack.coturn, daemon, "ALLOCATE")


@pytest.mark.parametrize("stack", [{"remote_nat": "symmetric"}], indirect=True)
def test_browser_behind_symmetric_nat_is_relayed(stack: NetStack, browser: Agent) -> None:
    daemon = stack.daemon()
    open_share_link(stack, browser, VIEWER)

    report = report_from_log(daemon)
    assert report.type == "relay", report
    assert path_text(browser) == "relayed (TURN)"
    app_works(browser)
    # coturn accepted the credentials the signaling server minted for this browser and
    # relayed for it: a permission or channel for its peer, the daemon.
    assert stack.coturn is not None
    relayed = coturn_relayed(stack.coturn)
    assert browser_turn_lines(stack.coturn, daemon, "ALLOCATE"), stack.coturn.log()[-2000:]
    assert any(line in relayed for line in browser_turn_lines(
        stack.coturn, daemon, "CREATE_PERMISSION") + browser_turn_lines(
        stack.coturn, daemon, "CHANNEL_BIND")), relayed


@pytest.mark.skipif(TEST_BACKEND == "native", reason="the native backend cannot restart ICE: "
                    "it renegotiates (test_native_end_to_end.py)")
@pytest.mark.parametrize("stack", [{"remote_nat": "cone"}], indirect=True)
def test_browser_survives_the_device_address_change_by_ice_restart(
    stack: NetStack, browser: Agent
) -> None:
    """The device is renumbered while Chromium views it: the daemon asks for an ICE restart,
    the page restarts ICE on its live peer connection (pc.restartIce()), and the session goes
    on: no new peer connection, the app works, the new pair uses the device's new address
    (through the home router's NAT, as before)."""
    daemon = stack.daemon()
    open_share_link(stack, browser, VIEWER)
    app_works(browser)

    dev = stack.net.ns["dev"]
    dev.ip("addr", "del", f"{DEV}/24", "dev", "eth0")  # takes the default route with it
    dev.ip("addr", "add", f"{NEW_DEV}/24", "dev", "eth0")
    dev.ip("route", "add", "default", "via", "192.168.50.1")

    daemon.wait_for_log(r"answered an ICE restart", timeout=60)
    done = daemon.wait_for_log(r"ICE restart done: .* via CandidatePair\(\('([\d.]+)'", timeout=60)
    assert done[1] == NEW_DEV, done.group(0)
    browser.page.wait_for_function("() => window.__peerproxy.iceRestarts >= 1",
                                   timeout=PHASE_TIMEOUT * 1000)
    app_works(browser)
    assert browser.page.evaluate("window.__peerproxy.connections") == 1
    assert "renegotiating" not in daemon.log()
