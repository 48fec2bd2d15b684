"""Requests through the native backend (libdatachannel-py) as real processes: a native daemon
with a native client, and each mixed with aiortc (issue 7). The rest of the suite runs on
the native backend too when libdatachannel-py is installed (`[transport] backend = "auto"`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import urllib.request

import aiohttp
import pytest

from peerproxyd.rtc.sdp_restart import keep_session
from peerproxyd.rtc.transport import native_available
from tests.support.procs import free_port
from tests.support.rawpeer import RawPeer
from tests.support.stack import Stack
from tests.support.upstream_app import pattern

pytestmark = pytest.mark.skipif(
    not native_available(), reason="libdatachannel-py not importable (needs Python >= 3.12 and "
    "the native extra; `make test-native`)")
MB = 1024 * 1024
# (daemon backend, client backend): one client per pairing, each on its own service name
PAIRINGS = {"nn": ("native", "native"), "na": ("native", "aiortc"), "an": ("aiortc", "native")}


@pytest.fixture(scope="module", params=["native daemon", "aiortc daemon"])
def clients(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    daemon_backend = request.param.split()[0]
    stack = Stack(tmp_path_factory.mktemp("native-e2e"))
    stack.backend = daemon_backend
    try:
        camera = stack.upstream("camera")  # every service name below points at it
        stack.signal()
        names = [n for n, (d, _) in PAIRINGS.items() if d == daemon_backend]
        port = stack.upstream_ports["camera"]
        daemon = stack.daemon({n: port for n in names} | {"down": free_port()})
        daemon.wait_for_log(rf"WebRTC backend: {daemon_backend} \(configured\)")
        urls = {}
        for n in names:
            proc, urls[n] = stack.client(n, backend=PAIRINGS[n][1])
            proc.wait_for_log(rf"WebRTC backend: {PAIRINGS[n][1]} \(configured\)")
        yield camera, urls
    finally:
        stack.stop()


async def test_requests_and_bodies_intact_across_backends(clients):
    _, urls = clients
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        for name, url in urls.items():
            async with http.get(f"{url}/echo/a%20b?x=1&x=2") as r:
                assert r.status == 200, name
                echo = await r.json()
            assert echo["raw_path"] == "/echo/a%20b?x=1&x=2"
            assert echo["query"] == [["x", "1"], ["x", "2"]]
            body = os.urandom(20 * MB)
            async with http.post(f"{url}/upload", data=body) as r:
                assert r.status == 200, name
                assert await r.json() == {"sha256": hashlib.sha256(body).hexdigest(),
                                          "size": len(body)}
            size = 50 * MB
            async with http.get(f"{url}/download?size={size}") as r:
                assert r.status == 200, name
                data = await r.read()
            assert len(data) == size and data == pattern(size), name



@pytest.mark.netns
@pytest.mark.timeout(180)
@pytest.mark.parametrize("client_backend", ["native", "aiortc"])
async def test_native_daemon_relayed_through_coturn(tmp_path, client_backend: str):
    """A viewer behind a symmetric NAT reaches a native daemon through coturn (TURN over UDP,
    REST-API credentials): both ends report a relay pair and a body arrives intact."""
    from tests.netns import NetStack, Network, coturn_relayed, report_from_log
    from tests.test_nat import require_netns

    require_netns()
    net = Network(tmp_path, remote_nat="symmetric").up()
    try:
        stack = NetStack(net).services()
        daemon = stack.daemon(backend="native")
        client, url = stack.client("rv", backend=client_backend)
        on_client, on_daemon = report_from_log(client), report_from_log(daemon)
        assert (on_client.type, on_daemon.type) == ("relay", "relay"), (on_client, on_daemon)
        assert on_daemon.line.endswith("backend native"), on_daemon
        result = net.fetch("rv", url + "/download?size=1000000")
        assert (result.status, result.size) == (200, 1_000_000)
        assert stack.coturn is not None and coturn_relayed(stack.coturn)
    finally:
        net.down()


@pytest.fixture
def native_device(tmp_path):
    """A signaling server, an upstream and a daemon on the native backend: (stack, daemon)."""
    stack = Stack(tmp_path)
    stack.backend = "native"
    try:
        stack.upstream("camera")
        stack.signal()
        yield stack, stack.daemon({"camera": stack.upstream_ports["camera"]})
    finally:
        stack.stop()


async def test_a_native_device_answers_an_ice_restart_with_a_bye(native_device):
    """libdatachannel cannot restart ICE: an aiortc viewer's restart offer (docs/network.md)
    must end that session with a `bye` (its DTLS association would never handshake with a
    new connection), and the device goes on serving new connections."""
    stack, daemon = native_device
    async with RawPeer(stack.signal_url, stack.link("camera"), backend="aiortc") as peer:
        offer, restart = await peer.pc.restart_offer()
        await peer.signaling.send(
            "offer", peer.device, {"sdp": keep_session(offer, peer.offer), "type": "offer"})
        for _ in range(200):
            if byes := [m for m in peer.messages if m.type == "bye"]:
                break
            await asyncio.sleep(0.05)
        assert byes and "cannot restart ICE" in byes[0].payload["reason"]
        await restart.cancel()
    daemon.wait_for_log(r"no ICE restart \(the native backend cannot restart ICE")
    async with RawPeer(stack.signal_url, stack.link("camera"), backend="aiortc") as again:
        head, body = await again.request("camera", "/")
        assert (head.status, body) == (200, b"hello from camera\n")


def test_a_native_daemon_exits_cleanly_while_a_vanished_viewer_is_still_closing(native_device):
    """Closing to a viewer that vanished takes libdatachannel ~13 s; a process that exits
    meanwhile used to abort (SIGABRT). The daemon's exit waits briefly, then leaves with its
    own exit status (transport.exit_code)."""
    stack, daemon = native_device
    client, url = stack.client("camera", backend="native")
    with urllib.request.urlopen(f"{url}/", timeout=10) as r:
        assert r.read() == b"hello from camera\n"
    client.popen.kill()  # no goodbye: its peer connection just vanishes
    client.popen.wait(10)
    daemon.popen.send_signal(signal.SIGTERM)
    assert daemon.popen.wait(30) == 0
    assert "exiting with 1 native connection(s) still closing" in daemon.log()
