"""The built-in STUN responder, TURN REST-API credentials (against coturn), and the two aioice
fixes on the ICE path: the port range and "direct pairs before relayed ones"."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import sys

import aioice
import aioice.ice
import pytest
from aioice import stun
from aioice.ice import CandidatePair

from peerproxyd.rtc.patches import aioice_nomination, aioice_ports, aioice_tuning
from peerproxyd.signaling import stun_server
from peerproxyd.signaling.turn_credentials import ice_servers, mint
from tests.netns import INET, TURN_PORT, TURN_SECRET, NetStack, Network, report_from_log

# ----- STUN responder


def binding_request() -> stun.Message:
    return stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)


def test_binding_response_carries_the_senders_address():
    request = binding_request()
    data = stun_server.binding_response(bytes(request), ("203.0.113.20", 40000))
    assert data is not None and len(data) == 40  # header 20, XOR-MAPPED-ADDRESS 12, FINGERPRINT 8
    response = stun.parse_message(data)  # also checks the FINGERPRINT
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("203.0.113.20", 40000)


def test_binding_response_ipv6():
    data = stun_server.binding_response(bytes(binding_request()), ("2001:db8::7", 5))
    assert stun.parse_message(data).attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8::7", 5)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x00\x00" + b"\x00" * 16,  # no magic cookie (RFC 3489 style)
        bytes(stun.Message(stun.Method.BINDING, stun.Class.INDICATION)),
        bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)),
        bytes(stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)),
        bytes(binding_request())[:-1],
        b"\xff" * 64,
    ],
)
def test_anything_else_gets_no_reply(data: bytes):
    assert stun_server.binding_response(data, ("203.0.113.20", 1)) is None


def test_bad_fingerprint_gets_no_reply():
    request = binding_request()
    request.add_fingerprint()
    data = bytearray(bytes(request))
    data[-1] ^= 0xFF
    assert stun_server.binding_response(bytes(data), ("203.0.113.20", 1)) is None


async def test_aioice_gathers_a_srflx_candidate_from_us():
    transport, responder = await stun_server.start("127.0.0.1", 0)
    port = transport.get_extra_info("sockname")[1]
    aioice_tuning.configure(host_addresses=["127.0.0.1"])
    conn = aioice.Connection(ice_controlling=True, stun_server=("127.0.0.1", port))
    try:
        await conn.gather_candidates()
        [host] = [c for c in conn.local_candidates if c.type == "host"]
        [srflx] = [c for c in conn.local_candidates if c.type == "srflx"]
        assert (srflx.host, srflx.port) == ("127.0.0.1", host.port)
        assert responder.answered == 1
    finally:
        await conn.close()
        transport.close()
        aioice_tuning.configure()


# ----- TURN REST-API credentials


def test_credentials_are_coturns_hmac_sha1():
    cred = mint("s3cret", "test-pi", ttl=600, now=1_700_000_000)
    assert cred.username == "1700000600:test-pi" and cred.expires == 1_700_000_600
    expected = hmac.new(b"s3cret", b"1700000600:test-pi", hashlib.sha1).digest()
    assert base64.b64decode(cred.credential) == expected
    # A fixed vector, so an accidental change of the scheme shows.
    assert cred.credential == base64.b64encode(expected).decode()
    assert mint("s3cret", "", ttl=600, now=1_700_000_000).username == "1700000600"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"secret": "", "name": "x"}, "secret is empty"),
        ({"secret": "s", "name": "a:b"}, "must not contain ':'"),
        ({"secret": "s", "name": "x", "ttl": 0}, "ttl must be positive"),
    ],
)
def test_credential_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mint(**kwargs)


def test_ice_servers_for_a_browser():
    urls = ["stun:signal.example.net:3478", "turn:turn.example.net:3478?transport=udp",
            "turn:turn.example.net:3478?transport=tcp"]
    [stun_entry, turn_entry] = ice_servers(urls, "s3cret", "c-1", ttl=60, now=100)
    assert stun_entry == {"urls": ["stun:signal.example.net:3478"]}
    assert turn_entry["urls"] == urls[1:] and turn_entry["username"] == "160:c-1"
    assert ice_servers(urls, None, "c-1") == [stun_entry]  # no secret: no TURN at all


TURN_PROBE = """
import asyncio, sys
from aioice import turn
async def main(username, password):
    try:
        transport, _ = await asyncio.wait_for(turn.create_turn_endpoint(
            asyncio.DatagramProtocol, server_addr=("{inet}", {port}),
            username=username, password=password), 5)
    except Exception as exc:
        print("refused", type(exc).__name__)
        return
    print("allocated", transport.get_extra_info("sockname")[0])
    transport.close()
asyncio.run(main(sys.argv[1], sys.argv[2]))
""".format(inet=INET, port=TURN_PORT)


@pytest.fixture
def net(tmp_path):
    from tests.test_nat import require_netns

    require_netns()
    network = Network(tmp_path).up()
    try:
        yield network
    finally:
        network.down()


@pytest.mark.netns
@pytest.mark.timeout(120)
async def test_coturn_takes_fresh_credentials_and_refuses_others(net: Network):
    net.coturn()
    good = mint(TURN_SECRET, "test-pi")
    expired = mint(TURN_SECRET, "test-pi", ttl=60, now=0)
    forged = mint("not-the-secret", "test-pi")

    def probe(cred) -> str:
        return net.ns["dev"].run(sys.executable, "-c", TURN_PROBE, cred.username, cred.credential)

    assert probe(good).split() == ["allocated", INET]
    assert probe(expired).split()[0] == "refused"
    assert probe(forged).split()[0] == "refused"


@pytest.mark.netns
@pytest.mark.timeout(120)
async def test_builtin_stun_is_enough_across_cone_nats(net: Network):
    """No coturn at all: the signaling host's own STUN responder gives both ends their
    server-reflexive candidates and they connect peer to peer."""
    stack = NetStack(net).services(coturn=False)
    stun_proc = net.python("inet", "stun", "-m", "peerproxyd.signaling.stun_server",
                           "--host", INET, "--port", str(TURN_PORT))
    stun_proc.wait_for_log("STUN responder on udp")
    daemon = stack.daemon(turn=None)
    client, url = stack.client("rv")
    assert report_from_log(client).type == "srflx"
    assert report_from_log(daemon).type == "srflx"
    assert net.fetch("rv", url + "/").status == 200


# ----- port range (aioice_ports)


def free_port_pair() -> int:
    """A port p such that p and p+1 are free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise AssertionError("no two consecutive free UDP ports")


@pytest.fixture
def loopback_ice():
    aioice_tuning.configure(host_addresses=["127.0.0.1"])
    yield
    aioice_tuning.configure()
    aioice_ports.configure(None)


async def gathered(conn: aioice.Connection) -> int:
    await conn.gather_candidates()
    [host] = conn.local_candidates
    return host.port


async def test_port_range_one_port_per_connection(loopback_ice):
    low = free_port_pair()
    aioice_ports.configure(range(low, low + 2))
    a, b, c = (aioice.Connection(ice_controlling=True) for _ in range(3))
    try:
        assert await gathered(a) == low
        assert await gathered(b) == low + 1
        with pytest.raises(aioice_ports.PortRangeExhausted, match=rf"all 2 UDP ports of \[ice\] "
                           rf"port_range {low}-{low + 1} are in use"):
            await c.gather_candidates()
        await a.close()  # its port is free again
        d = aioice.Connection(ice_controlling=True)
        assert await gathered(d) == low
        await d.close()
    finally:
        for conn in (a, b, c):
            await conn.close()


async def test_port_range_sockets_carry_ice(loopback_ice):
    """Two connections gathered in the range complete ICE with each other."""
    low = free_port_pair()
    aioice_ports.configure(range(low, low + 2))
    a = aioice.Connection(ice_controlling=True)
    b = aioice.Connection(ice_controlling=False)
    try:
        await asyncio.gather(a.gather_candidates(), b.gather_candidates())
        for x, y in ((a, b), (b, a)):
            for candidate in y.local_candidates:
                await x.add_remote_candidate(candidate)
            await x.add_remote_candidate(None)
            x.remote_username, x.remote_password = y.local_username, y.local_password
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
        await a.send(b"ping")
        assert await asyncio.wait_for(b.recv(), 5) == b"ping"
        assert {a.local_candidates[0].port, b.local_candidates[0].port} == {low, low + 1}
    finally:
        await a.close()
        await b.close()


def test_parse_port_range():
    assert aioice_ports.parse_port_range("50000-50010") == range(50000, 50011)
    assert aioice_ports.parse_port_range("50000") == range(50000, 50001)


def test_what_the_port_range_replaces_is_still_there():
    """Fails when aioice renames what aioice_ports and aioice_nomination build on."""
    assert aioice_ports._ORIGINAL.__name__ == "get_component_candidates"
    assert callable(aioice.ice.server_reflexive_candidate)
    assert aioice_nomination._ORIGINAL_CHECK_START.__name__ == "check_start"
    assert {s.name for s in CandidatePair.State} >= {"FROZEN", "WAITING", "IN_PROGRESS"}


# ----- direct pairs before relayed ones (aioice_nomination)


class FakeProtocol:
    def __init__(self, kind: str) -> None:
        self.local_candidate = aioice.Candidate("f" + kind, 1, "udp", 1, "192.0.2.1", 1, kind)


def pair(local: str, remote: str) -> CandidatePair:
    remote_candidate = aioice.Candidate("r" + remote, 1, "udp", 1, "198.51.100.1", 2, remote)
    return CandidatePair(FakeProtocol(local), remote_candidate)  # type: ignore[arg-type]


@pytest.fixture
def checks(monkeypatch):
    started: list[CandidatePair] = []

    async def original(self, p):
        started.append(p)

    monkeypatch.setattr(aioice_nomination, "_ORIGINAL_CHECK_START", original)
    return started


async def test_why_stock_aioice_checks_a_relayed_pair_at_once():
    """Stock aioice (controlling, aggressive nomination) sends the relayed pair's check while
    the direct pair's is still under way: whichever answers first is the pair for good."""
    conn = aioice.Connection(ice_controlling=True)
    conn.remote_username, conn.remote_password = "remote", "secret"
    direct, relayed = pair("host", "srflx"), pair("host", "relay")
    direct.state = CandidatePair.State.IN_PROGRESS
    conn._check_list = [direct, relayed]
    requested: list[object] = []

    async def request(*args: object, **kwargs: object) -> None:
        requested.append(args)
        await asyncio.Event().wait()  # no answer: the check stays in progress

    relayed.protocol.request = request  # type: ignore[method-assign]
    task = asyncio.create_task(aioice_nomination._ORIGINAL_CHECK_START(conn, relayed))
    try:
        for _ in range(100):  # bounded: 1 s
            if requested:
                break
            await asyncio.sleep(0.01)
        assert requested, "stock aioice held the relayed check: aioice_nomination may be moot"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_relayed_check_waits_for_direct_pairs(checks):
    conn = aioice.Connection(ice_controlling=True)
    direct, relayed = pair("host", "srflx"), pair("host", "relay")
    direct.state = CandidatePair.State.IN_PROGRESS
    conn._check_list = [direct, relayed]
    task = asyncio.create_task(aioice_nomination.check_start(conn, relayed))
    await asyncio.sleep(0.1)
    assert checks == [] and relayed.state == CandidatePair.State.IN_PROGRESS
    direct.state = CandidatePair.State.FAILED
    await asyncio.wait_for(task, 1)
    assert checks == [relayed]


async def test_relayed_check_waits_no_longer_than_the_grace(checks, monkeypatch):
    monkeypatch.setattr(aioice_nomination, "RELAY_GRACE", 0.2)
    conn = aioice.Connection(ice_controlling=True)
    direct, relayed = pair("host", "srflx"), pair("relay", "srflx")
    direct.state = CandidatePair.State.IN_PROGRESS  # a symmetric NAT: never succeeds
    conn._check_list = [direct, relayed]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await aioice_nomination.check_start(conn, relayed)
    assert checks == [relayed] and 0.15 < loop.time() - started < 0.5


async def test_direct_and_controlled_checks_are_not_held(checks):
    controlled = aioice.Connection(ice_controlling=False)
    relayed = pair("relay", "host")
    direct = pair("host", "host")
    controlled._check_list = [pair("host", "srflx"), relayed]
    await asyncio.wait_for(aioice_nomination.check_start(controlled, relayed), 0.1)
    controlling = aioice.Connection(ice_controlling=True)
    controlling._check_list = [direct]
    await asyncio.wait_for(aioice_nomination.check_start(controlling, direct), 0.1)
    assert checks == [relayed, direct]


async def test_cleanup_ctx_runs_with_the_app_and_survives_a_taken_port():
    from aiohttp import web

    app = web.Application()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        app.cleanup_ctx.append(stun_server.cleanup_ctx("127.0.0.1", port))
        runner = web.AppRunner(app)
        await runner.setup()  # logs a warning, does not fail
        await runner.cleanup()
    finally:
        taken.close()
    app = web.Application()
    app.cleanup_ctx.append(stun_server.cleanup_ctx("127.0.0.1", port))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            await loop.sock_connect(client, ("127.0.0.1", port))
            await loop.sock_sendall(client, bytes(binding_request()))
            data = await asyncio.wait_for(loop.sock_recv(client, 100), 2)
        assert stun.parse_message(data).attributes["XOR-MAPPED-ADDRESS"][0] == "127.0.0.1"
    finally:
        await runner.cleanup()


# ----- the connection report (peerproxyd/rtc/report.py, aiortc_setup.py)


def candidate(kind: str, host: str) -> aioice.Candidate:
    return aioice.Candidate("f", 1, "udp", 1, host, 1, kind)


@pytest.mark.parametrize(
    "local, remote, expected",
    [
        (("host", "192.168.1.2"), ("host", "192.168.1.3"), "host"),
        (("host", "192.168.1.2"), ("host", "x.local"), "host"),
        (("host", "192.168.1.2"), ("srflx", "198.51.100.7"), "srflx"),
        (("host", "192.168.1.2"), ("prflx", "198.51.100.7"), "srflx"),
        (("host", "192.168.1.2"), ("prflx", "192.168.1.9"), "host"),  # a LAN peer found early
        (("relay", "198.51.100.1"), ("prflx", "198.51.100.7"), "relay"),
        (("host", "10.0.0.2"), ("relay", "198.51.100.1"), "relay"),
    ],
)
def test_pair_type(local, remote, expected):
    from peerproxyd.rtc.report import pair_type

    assert pair_type(candidate(*local), candidate(*remote)) == expected


async def test_connection_report_of_a_real_pair(loopback_ice):
    """aiortc on loopback: the report finds aioice's selected pair and measures an RTT (this
    fails if aiortc or aioice move what rtc.connection_report reads)."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from peerproxyd.rtc.aiortc_setup import connection_report

    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        assert await connection_report(a) is None  # nothing selected yet
        channel = a.createDataChannel("peerproxy")
        opened = asyncio.Event()
        channel.on("open", opened.set)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(opened.wait(), 10)
        report = await connection_report(a)
        assert report is not None
        assert (report.type, report.protocol, report.local_type, report.remote_type) == (
            "host", "udp", "host", "host")
        assert report.rtt_ms is not None and 0 < report.rtt_ms < 1000
        assert str(report).startswith("host (udp) 127.0.0.1:")
        assert report.as_dict()["type"] == "host"
    finally:
        await a.close()
        await b.close()
