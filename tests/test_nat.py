"""NAT traversal on an emulated network (tests/netns.py): a LAN viewer connects host to host,
a viewer behind a cone NAT through STUN (srflx), one behind a symmetric NAT through a TURN relay
(coturn, REST-API credentials). The connection report of both ends proves the path."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import warnings

import pytest

from tests.netns import (
    DEV,
    DEVICE,
    INET,
    LAN_VIEWER,
    PRIVATE_ADDRESS,
    TURN_PORT,
    NetStack,
    Network,
    answer_seen_by_signaling,
    coturn_relayed,
    report_from_log,
    setup_ms,
    unavailable_reason,
)
from tests.support.procs import TEST_BACKEND, share_link
from tests.support.upstream_app import pattern

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
NEW_DEV = "192.168.50.11"

_reason: list[str | None] = []


def require_netns() -> None:
    """Skip (loudly) only where the kernel or privileges truly lack what the tests need."""
    if not _reason:
        _reason.append(unavailable_reason())
    if _reason[0] is not None:
        warnings.warn(f"namespace tests skipped: {_reason[0]}", stacklevel=2)
        pytest.skip(_reason[0])
    if shutil.which("turnserver") is None:
        pytest.fail("coturn is not installed: `make system-deps` installs it (Debian: coturn)")


@pytest.fixture
def stack(tmp_path, request):
    require_netns()
    net = Network(tmp_path, **getattr(request, "param", {})).up()
    try:
        yield NetStack(net).services()
    finally:
        net.down()


async def test_lan_viewer_connects_host_to_host(stack: NetStack, record_property):
    daemon = stack.daemon()
    client, url = stack.client("lanv")

    on_client, on_daemon = report_from_log(client), report_from_log(daemon)
    assert (on_client.type, on_daemon.type) == ("host", "host"), (on_client, on_daemon)
    if TEST_BACKEND == "native":
        # libdatachannel resolves no names: the native transport resolves the device's .local
        # name itself (mdns.py) and adds the address as a trickled candidate.
        assert f"{DEV}:" in on_client.line
    else:  # aioice resolved the .local name and reached the LAN address
        assert f".local ({DEV})" in on_client.line
    assert LAN_VIEWER in on_daemon.line
    result = stack.net.fetch("lanv", url + "/")
    assert (result.status, result.text) == (200, "hello from camera\n")
    big = stack.net.fetch("lanv", url + "/download?size=1000000")
    assert (big.status, big.size) == (200, 1_000_000)
    # The daemon holds a TURN allocation (it is configured), but coturn granted no
    # permission to any peer, so it relayed nothing. (libjuice asks for permissions for
    # every remote candidate up front; the host pair above shows it relayed nothing either.)
    assert stack.coturn is not None
    if TEST_BACKEND != "native":
        assert coturn_relayed(stack.coturn) == []
    record_property("setup_ms", setup_ms(client))


@pytest.mark.parametrize("stack", [{"remote_nat": "cone"}], indirect=True)
async def test_remote_viewer_behind_cone_nat_uses_srflx(stack: NetStack, record_property):
    daemon = stack.daemon()
    client, url = stack.client("rv")

    on_client, on_daemon = report_from_log(client), report_from_log(daemon)
    assert (on_client.type, on_daemon.type) == ("srflx", "srflx"), (on_client, on_daemon)
    assert "[srflx]" in on_client.line and "[srflx]" in on_daemon.line
    result = stack.net.fetch("rv", url + "/download?size=1000000")
    assert (result.status, result.size) == (200, 1_000_000)
    record_property("setup_ms", setup_ms(client))


@pytest.mark.parametrize("transport", [
    "udp",
    pytest.param("tcp", marks=pytest.mark.skipif(
        TEST_BACKEND == "native", reason="the native backend (libjuice) has no TURN over TCP; "
        "\"auto\" keeps aiortc for such servers (test_transport.py)")),
])
@pytest.mark.parametrize("stack", [{"remote_nat": "symmetric"}], indirect=True)
async def test_remote_viewer_behind_symmetric_nat_is_relayed(
    stack: NetStack, transport: str, record_property
):
    daemon = stack.daemon(turn_transport=transport)
    client, url = stack.client("rv")

    on_client, on_daemon = report_from_log(client), report_from_log(daemon)
    assert (on_client.type, on_daemon.type) == ("relay", "relay"), (on_client, on_daemon)
    assert on_daemon.protocol == transport
    result = stack.net.fetch("rv", url + "/download?size=1000000")
    assert (result.status, result.size) == (200, 1_000_000)
    # coturn accepted the minted REST-API credentials and relayed to the viewer.
    assert stack.coturn is not None
    relayed = coturn_relayed(stack.coturn)
    assert relayed and all(f":{stack.device_id()}>" in line for line in relayed), relayed
    record_property("setup_ms", setup_ms(client))


async def test_signaling_server_sees_no_lan_address(stack: NetStack):
    stack.daemon(device="test-pi")
    stack.daemon(device="plain-pi", mdns=False)

    hidden = answer_seen_by_signaling(stack.net, "rv", stack.device_id("test-pi"))
    assert PRIVATE_ADDRESS.search(hidden) is None, hidden
    assert ".local " in hidden
    # The control: without mDNS the same answer carries the LAN address.
    plain = answer_seen_by_signaling(stack.net, "rv", stack.device_id("plain-pi"))
    assert DEV in plain


async def test_lan_host_pair_with_and_without_mdns(stack: NetStack, record_property):
    """Both modes give a host<->host pair on the LAN. The 50 ms setup target is measured side
    by side in bench/nat.py, not asserted here (timed assertions are flaky on a shared box)."""
    stack.daemon(device="test-pi")
    stack.daemon(device="plain-pi", mdns=False)
    times: dict[str, list[int]] = {"test-pi": [], "plain-pi": []}
    for round_ in range(2):
        for device in times:
            client, _ = stack.client("lanv", device=device, port=9100 + round_)
            assert report_from_log(client).type == "host"
            times[device].append(setup_ms(client))
            client.stop()
    record_property("setup_ms_mdns", times["test-pi"])
    record_property("setup_ms_plain", times["plain-pi"])


async def test_port_range_holds_all_ice_traffic_and_refuses_beyond_it(stack: NetStack):
    """Two ports: two concurrent peers; a third is refused with a clear error; every UDP
    socket of the daemon is in the range, except mDNS and its client socket to TURN."""
    daemon = stack.daemon(port_range="50000-50001")
    lan, lan_url = stack.client("lanv")
    remote, remote_url = stack.client("rv")
    assert stack.net.fetch("lanv", lan_url + "/").status == 200
    assert stack.net.fetch("rv", remote_url + "/").status == 200

    sockets = stack.net.udp_sockets("dev", daemon.pid)
    unconnected = {port for _, port, peer in sockets if peer.endswith(":*")}
    assert unconnected == {50000, 50001, 5353}, sockets  # ICE, ICE, mDNS
    connected = {peer for _, _, peer in sockets if not peer.endswith(":*")}
    # aiortc: a client socket per TURN allocation; libjuice talks to TURN from the ICE port.
    turn = set() if TEST_BACKEND == "native" else {f"{INET}:{TURN_PORT}"}
    assert connected == turn, sockets

    third = stack.net.python(
        "lanv", "client-third", "-m", "peerproxyd", "connect",
        share_link(stack.state_dir(DEVICE), "camera", "third"), "--signal", stack.signal_url,
        "--listen", "127.0.0.1:9001",
        "--ice-server", f"stun:{INET}:{TURN_PORT}",
    )
    third.wait_for_log(r"all 2 UDP ports of \[ice\] port_range 50000-50001 are in use")
    # A port comes back when its peer goes: the waiting client gets in.
    remote.stop()
    daemon.wait_for_log(r"connection (closed|failed)", timeout=20)
    third.wait_for_log("is at http", timeout=40)
    assert report_from_log(third).type == "host"


@pytest.mark.parametrize("stack", [{"remote_nat": "symmetric"}], indirect=True)
async def test_forwarded_port_range_reaches_symmetric_nat_without_turn(stack: NetStack):
    """Firewall-friendly mode: the home router forwards the daemon's port range, so even a
    viewer behind a symmetric NAT connects directly, with no TURN server configured."""
    stack.net.forward_udp(range(50000, 50003))
    daemon = stack.daemon(port_range="50000-50002", turn=None)
    client, url = stack.client("rv")
    on_client, on_daemon = report_from_log(client), report_from_log(daemon)
    assert on_client.type == "srflx"
    assert re.search(r"203\.0\.113\.10:5000[0-2] \[srflx\]", on_client.line), on_client
    assert on_daemon.type == "srflx"
    assert stack.net.fetch("rv", url + "/").status == 200


@pytest.mark.timeout(240)
@pytest.mark.skipif(TEST_BACKEND == "native", reason="the native backend cannot restart ICE: "
                    "it renegotiates (test_native_end_to_end.py)")
async def test_daemon_address_change_restarts_ice_and_the_session_survives(stack: NetStack):
    """The device's LAN address changes (DHCP renumbering) in the middle of a long download.
    The daemon notices (netwatch.py), registers again from the new address and asks its viewer
    to restart ICE; the native client offers new credentials on the live peer connection, the
    daemon answers with candidates on its new address (aiortc_ice_restart.py). DTLS and SCTP
    go on: the download in flight and a request started after the change both complete, byte
    for byte, and no new peer connection is made."""
    daemon = stack.daemon(heartbeat_timeout=20.0)  # the default: the outage must not end it
    client, url = stack.client("lanv")
    device = stack.device_id()
    assert stack.net.fetch("lanv", url + "/").status == 200
    before = report_from_log(client)
    assert before.type == "host" and f"({DEV})" in before.line, before

    size, second_size = 24_000_000, 3_000_000
    download = asyncio.create_task(asyncio.to_thread(
        stack.net.fetch, "lanv", f"{url}/download?size={size}&rate=1500000", timeout=120))
    await until_active(stack, 1)

    dev = stack.net.ns["dev"]
    dev.ip("addr", "del", f"{DEV}/24", "dev", "eth0")  # takes the default route with it
    dev.ip("addr", "add", f"{NEW_DEV}/24", "dev", "eth0")
    dev.ip("route", "add", "default", "via", "192.168.50.1")

    daemon.wait_for_log(rf"host addresses changed \(.* -> .*{NEW_DEV}", timeout=30)
    restarted = client.wait_for_log(r"ICE restart with \S+ done in \d+ ms; connected via .*",
                                    timeout=60)
    assert f"({NEW_DEV})" in restarted.group(0), restarted.group(0)
    assert (await upstream_stats(stack))["active"] == 1, (
        "the download ended before the restart: it proves nothing; make it longer")
    second = await asyncio.to_thread(
        stack.net.fetch, "lanv", f"{url}/download?size={second_size}", timeout=120)
    first = await download

    assert (first.status, first.size, first.sha256) == (200, size, sha256_pattern(size))
    assert (second.status, second.size, second.sha256) == (
        200, second_size, sha256_pattern(second_size))
    # One peer connection all along: connected once, restarted, never renegotiated.
    log = client.log()
    assert log.count(f"connected to {device}/camera") == 1, log
    assert "says bye" not in log and "ICE restart with" in log
    daemon_log = daemon.log()
    assert "answered an ICE restart" in daemon_log
    assert "renegotiating" not in daemon_log and daemon_log.count(": answered (") == 1
    assert (await upstream_stats(stack))["aborted"] == 0


async def upstream_stats(stack: NetStack) -> dict[str, int]:
    result = await asyncio.to_thread(stack.net.fetch, "dev", "http://127.0.0.1:8081/stats")
    return json.loads(result.text)


async def until_active(stack: NetStack, count: int) -> None:
    """Wait until `count` downloads run at the upstream (bounded)."""
    for _ in range(200):
        if (await upstream_stats(stack))["active"] >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the download never started at the upstream")


def sha256_pattern(size: int) -> str:
    return hashlib.sha256(pattern(size)).hexdigest()
