"""mDNS: the aioice fixes (peerproxyd/rtc/patches/aioice_mdns.py), the `.local` rewriting of our
answers (peerproxyd/appliance/mdns.py), and LAN discovery in network namespaces.

Nothing here sends multicast in the root namespace: protocol tests use a fake transport, and
the discovery test runs in namespaces made for it (tests/netns.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aioice
import aioice.ice
import aioice.mdns
import dns.message
import dns.name
import dns.rdata
import dns.rdataset
import dns.rdatatype
import dns.rrset
import pytest

from peerproxyd.appliance import mdns
from peerproxyd.rtc.patches import aioice_mdns
from tests.netns import DEV, Network

NAME = "cc26b2f4-82e0-4299-87ec-9848354f0631.local"

# Captured: headless Chromium 156 (Debian) in a test namespace on 192.168.50.20 offered the
# host candidate NAME; this is its answer to our A query for it (2026-11-23). An A record, then
# an NSEC record (no AAAA) whose "next domain name" is a compression pointer (c046, to the NSEC
# record's own owner name at offset 70): what dnspython refuses.
CHROMIUM_RESPONSE = bytes.fromhex(
    "000084000000000100000001"  # id 0, QR|AA, 0 questions, 1 answer, 0 authority, 1 additional
    "2463633236623266342d383265302d343239392d383765632d393834383335346630363331056c6f63616c00"
    "0001800100000078" "0004c0a83214"  # A, IN|cache-flush, ttl 120, 192.168.50.20
    "2463633236623266342d383265302d343239392d383765632d393834383335346630363331056c6f63616c00"
    "002f800100000078" "0005c046000140"  # NSEC, next name: pointer c046; bitmap {A}
)
CHROMIUM_ADDRESS = "192.168.50.20"
# python-zeroconf's answer (DNSOutgoing with DNSAddress + DNSNsec) for ZEROCONF_NAME: the
# same problem, with the NSEC owner name compressed too. The daemon's LAN peers answer so.
ZEROCONF_NAME = "0d1dcfc4-cc4c-41b1-beff-b24cd5f3e4a1.local"
ZEROCONF_RESPONSE = bytes.fromhex(
    "0000840000000001000000012430643164636663342d636334632d343162312d626566662d623234636435"
    "663365346131056c6f63616c0000018001000000780004c0a8320ac00c002f8001000000780005c00c000140"
)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def is_closing(self) -> bool:
        return False


def pending_query(protocol: aioice.mdns.MDnsProtocol, name: str) -> asyncio.Future[str]:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    protocol.queries[dns.name.from_text(name)] = {future}
    return future


@pytest.mark.parametrize("data", [CHROMIUM_RESPONSE, ZEROCONF_RESPONSE])
def test_why_stock_dnspython_rejects_the_response(data: bytes):
    with pytest.raises(dns.name.DecompressionForbidden):
        dns.message.from_wire(data)


async def test_why_stock_aioice_never_resolves_it():
    protocol = aioice.mdns.MDnsProtocol()
    protocol.connection_made(FakeTransport())
    future = pending_query(protocol, NAME)
    protocol.datagram_received(CHROMIUM_RESPONSE, (CHROMIUM_ADDRESS, 5353))
    assert not future.done()  # aioice's resolve() would now wait for its 1 s timeout


@pytest.mark.parametrize(
    "data, name, address",
    [
        (CHROMIUM_RESPONSE, NAME, CHROMIUM_ADDRESS),
        (ZEROCONF_RESPONSE, ZEROCONF_NAME, "192.168.50.10"),
    ],
)
async def test_section_protocol_resolves_the_response(data: bytes, name: str, address: str):
    protocol = aioice_mdns.SectionMDnsProtocol()
    protocol.connection_made(FakeTransport())
    future = pending_query(protocol, name)
    protocol.datagram_received(data, (address, 5353))
    assert future.result() == address
    assert protocol.queries == {}


def test_parse_sections_reads_only_question_and_answer():
    sections = aioice_mdns.parse_sections(CHROMIUM_RESPONSE)
    assert sections.is_response and sections.questions == ()
    assert sections.addresses == (
        aioice_mdns.Address(dns.name.from_text(NAME), CHROMIUM_ADDRESS),
    )


def test_parse_sections_ipv6_and_other_records_in_answer():
    message = dns.message.make_response(dns.message.make_query(NAME, "AAAA"))
    name = dns.name.from_text(NAME)
    message.answer.append(dns.rrset.from_text(name, 120, "IN", "TXT", '"hi"'))
    message.answer.append(dns.rrset.from_text(name, 120, "IN", "AAAA", "fd00::5"))
    sections = aioice_mdns.parse_sections(message.to_wire())
    assert [a.address for a in sections.addresses] == ["fd00::5"]
    assert [q.rdtype for q in sections.questions] == [28]


def test_every_truncation_is_a_malformed_message_not_a_crash():
    answer_end = len(CHROMIUM_RESPONSE) - 59  # the NSEC record: the last 59 bytes
    for end in range(answer_end):
        with pytest.raises(aioice_mdns.MalformedMessage):
            aioice_mdns.parse_sections(CHROMIUM_RESPONSE[:end])
    # Cutting into the additional section leaves what we read intact: it is never read.
    for end in range(answer_end, len(CHROMIUM_RESPONSE)):
        assert aioice_mdns.parse_sections(CHROMIUM_RESPONSE[:end]).addresses


async def test_garbage_is_ignored():
    protocol = aioice_mdns.SectionMDnsProtocol()
    protocol.connection_made(FakeTransport())
    future = pending_query(protocol, NAME)
    for data in (b"", b"\x00" * 5, b"\xff" * 40, CHROMIUM_RESPONSE[:30]):
        protocol.datagram_received(data, ("192.168.50.10", 5353))
    assert not future.done()


async def test_answers_queries_for_published_names():
    protocol = aioice_mdns.SectionMDnsProtocol()
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.zone.replace_rdataset(  # what publish() does, without joining the group
        dns.name.from_text(NAME),
        dns.rdataset.from_rdata(
            120,
            dns.rdata.GenericRdata(
                aioice.mdns.MDNS_RDCLASS, dns.rdatatype.A, socket.inet_aton("192.168.50.10")
            ),
        ),
    )
    query = dns.message.make_query(NAME, "A")
    query.id = 0
    protocol.datagram_received(query.to_wire(), ("192.168.50.20", 5353))
    protocol.datagram_received(dns.message.make_query("other.local", "A").to_wire(), ("x", 1))
    assert len(transport.sent) == 1
    data, addr = transport.sent[0]
    assert addr == ("224.0.0.251", 5353)
    # And a resolver (ours) reads the answer back.
    reader = aioice_mdns.SectionMDnsProtocol()
    reader.connection_made(FakeTransport())
    future = pending_query(reader, NAME)
    reader.datagram_received(data, ("192.168.50.10", 5353))
    assert future.result() == "192.168.50.10"


class SlowMdns:
    """An mDNS protocol whose answer takes `delay` seconds (or never comes: None)."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay

    async def resolve(self, hostname: str, timeout: float | None = 1.0) -> str | None:
        if self.delay is None:
            await asyncio.sleep(timeout or 0)
            return None
        await asyncio.sleep(self.delay)
        return "192.168.50.10"


def mdns_candidate() -> aioice.Candidate:
    return aioice.Candidate(
        foundation="1", component=1, transport="udp", priority=2130706431,
        host=NAME, port=40000, type="host",
    )


@pytest.fixture
def slow_mdns(monkeypatch):
    def use(delay: float | None) -> None:
        async def get(subscriber: object) -> SlowMdns:
            return SlowMdns(delay)

        monkeypatch.setattr(aioice.ice, "get_or_create_mdns_protocol", get)

    yield use
    aioice_mdns.install(False)


async def test_why_stock_add_remote_candidate_waits_for_mdns(slow_mdns):
    slow_mdns(None)
    aioice_mdns.install(False)
    conn = aioice.Connection(ice_controlling=True)
    started = time.monotonic()
    await conn.add_remote_candidate(mdns_candidate())
    assert time.monotonic() - started >= 0.9  # aioice's 1 s resolve timeout
    await conn.close()


async def test_unanswered_local_name_does_not_hold_up_setup(slow_mdns):
    slow_mdns(None)
    aioice_mdns.install()
    conn = aioice.Connection(ice_controlling=True)
    started = time.monotonic()
    await conn.add_remote_candidate(mdns_candidate())
    await conn.add_remote_candidate(None)
    assert time.monotonic() - started < 0.1
    # End-of-candidates waits for the name still being resolved.
    assert conn._remote_candidates_expected()
    await asyncio.sleep(1.1)
    assert not conn._remote_candidates_expected()
    assert conn.remote_candidates == []
    await conn.close()


async def test_answered_local_name_joins_later(slow_mdns):
    slow_mdns(0.2)
    aioice_mdns.install()
    conn = aioice.Connection(ice_controlling=True)
    await conn.add_remote_candidate(mdns_candidate())
    await conn.add_remote_candidate(None)
    assert conn.remote_candidates == []
    await asyncio.sleep(0.3)
    [candidate] = conn.remote_candidates
    assert (candidate.host, candidate._network_host) == (NAME, "192.168.50.10")
    await conn.close()


# ----- our answers: .local host candidates

ANSWER = (
    "v=0\r\n"
    "o=- 3920000000 3920000000 IN IP4 0.0.0.0\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
    "m=application 41000 DTLS/SCTP 5000\r\n"
    "c=IN IP4 192.168.50.10\r\n"
    "a=mid:0\r\n"
    "a=candidate:a1 1 udp 2130706431 192.168.50.10 41000 typ host\r\n"
    "a=candidate:a2 1 udp 2130706431 127.0.0.1 41001 typ host\r\n"
    "a=candidate:b1 1 udp 1694498815 203.0.113.10 41000 typ srflx"
    " raddr 192.168.50.10 rport 41000\r\n"
    "a=candidate:c1 1 udp 16777215 203.0.113.1 49170 typ relay raddr 203.0.113.10 rport 5000\r\n"
    "a=end-of-candidates\r\n"
)


class FakePublisher:
    def __init__(self, fail: bool = False) -> None:
        self.published: list[tuple[str, str]] = []
        self.fail = fail

    async def publish(self, hostname: str, addr: str) -> None:
        if self.fail:
            raise OSError(19, "No such device")
        self.published.append((hostname, addr))


@pytest.fixture
def publisher(monkeypatch):
    fake = FakePublisher()
    subscribers: set[object] = set()

    async def get(subscriber: object) -> FakePublisher:
        subscribers.add(subscriber)
        return fake

    async def unref(subscriber: object) -> None:
        subscribers.discard(subscriber)

    monkeypatch.setattr(aioice.ice, "get_or_create_mdns_protocol", get)
    monkeypatch.setattr(aioice.ice, "unref_mdns_protocol", unref)
    fake.subscribers = subscribers  # type: ignore[attr-defined]
    return fake


async def test_answer_hides_lan_addresses(publisher):
    owner = object()
    sdp = await mdns.hide_host_addresses(ANSWER, subscriber=owner)
    [(name, address)] = publisher.published
    assert address == "192.168.50.10" and aioice.mdns.is_mdns_hostname(name)
    assert "192.168.50.10" not in sdp
    assert f"a=candidate:a1 1 udp 2130706431 {name} 41000 typ host\r\n" in sdp
    assert "a=candidate:a2 1 udp 2130706431 127.0.0.1 41001 typ host\r\n" in sdp  # loopback
    assert "typ srflx raddr 0.0.0.0 rport 0\r\n" in sdp
    assert "typ relay raddr 203.0.113.10 rport 5000\r\n" in sdp  # public: kept
    assert "c=IN IP4 0.0.0.0\r\n" in sdp and "m=application 9 DTLS/SCTP 5000\r\n" in sdp
    assert owner in publisher.subscribers
    await mdns.release(subscriber=owner)
    assert owner not in publisher.subscribers


async def test_one_name_per_address_while_the_responder_lives(publisher):
    first = await mdns.hide_host_addresses(ANSWER, subscriber=1)
    second = await mdns.hide_host_addresses(ANSWER, subscriber=2)
    assert first == second and len(publisher.published) == 1


async def test_loopback_only_answer_is_untouched(publisher):
    sdp = ANSWER.replace("192.168.50.10", "127.0.0.1")
    assert await mdns.hide_host_addresses(sdp, subscriber=1) == sdp
    assert publisher.published == []


async def test_without_multicast_host_candidates_are_dropped_not_revealed(publisher):
    publisher.fail = True
    sdp = await mdns.hide_host_addresses(ANSWER, subscriber=1)
    assert "192.168.50.10" not in sdp and "typ host\r\n" in sdp  # only the loopback one
    assert "typ srflx raddr 0.0.0.0 rport 0" in sdp


async def test_aiortc_reads_our_local_candidates(publisher):
    """The rewritten SDP still parses as aiortc parses a browser's."""
    from aiortc.sdp import SessionDescription

    sdp = await mdns.hide_host_addresses(ANSWER, subscriber=1)
    [media] = SessionDescription.parse(sdp).media
    hosts = [c.ip for c in media.ice_candidates if c.type == "host"]
    assert aioice.mdns.is_mdns_hostname(hosts[0]) and hosts[1] == "127.0.0.1"


# ----- LAN discovery, in namespaces


GARAGE, SHED = "g" * 32, "s" * 32


def test_format_devices():
    devices = [
        mdns.Device(id=GARAGE, version="0.1.0", services=("camera", "ha"),
                    addresses=("192.168.1.20",), port=0, name="Garage Pi"),
        mdns.Device(id=SHED, version="0.1.0", services=(), addresses=(), port=0),
    ]
    assert mdns.format_devices(devices) == (
        f"{GARAGE}\t0.1.0\tcamera,ha\t192.168.1.20\tGarage Pi\n{SHED}\t0.1.0\t-\t-\t-"
    )
    assert mdns.format_devices([]) == "no peerproxyd device answered on this LAN"

ADVERTISE = """
import asyncio, sys
from peerproxyd.appliance import mdns
async def main():
    async with mdns.advertise("tttttttttttttttttttttttttttttttt", "9.9.9", ["camera", "ha"], name="Test Pi"):
        print("advertising", flush=True)
        await asyncio.sleep(60)
asyncio.run(main())
"""
DISCOVER = """
import asyncio, json, dataclasses
from peerproxyd.appliance import mdns
print(json.dumps([dataclasses.asdict(d) for d in asyncio.run(mdns.discover(2.0))]))
"""


@pytest.mark.netns
@pytest.mark.timeout(120)
async def test_lan_discovery(tmp_path):
    from tests.test_nat import require_netns

    require_netns()
    net = Network(tmp_path).up()
    try:
        advertiser = net.python("dev", "advertise", "-c", ADVERTISE)
        advertiser.wait_for_log("advertising")
        found = json.loads(net.ns["lanv"].run(sys.executable, "-c", DISCOVER))
        assert found == [{
            "id": "t" * 32, "version": "9.9.9", "services": ["camera", "ha"],
            "addresses": [DEV], "port": 0, "name": "Test Pi",
        }]
        # Not across the NAT: the remote viewer sees nothing.
        assert json.loads(net.ns["rv"].run(sys.executable, "-c", DISCOVER)) == []
    finally:
        net.down()


# ----- real Chromium on the emulated LAN

CHROMIUM_PEER = r"""
import asyncio, json, sys
from playwright.async_api import async_playwright

OFFER = '''async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  window.pc = pc;
  window.opened = new Promise(r => { pc.createDataChannel("peerproxy").onopen = r; });
  const gathered = new Promise(r => { pc.onicegatheringstatechange = () => {
    if (pc.iceGatheringState === "complete") r(); }; });
  await pc.setLocalDescription(await pc.createOffer());
  await gathered;
  return pc.localDescription.sdp;
}'''
PAIR = '''async (answer) => {
  await pc.setRemoteDescription({type: "answer", sdp: answer});
  await opened;
  const stats = await pc.getStats();
  let pair;
  stats.forEach(s => { if (s.type === "transport") pair = stats.get(s.selectedCandidatePairId); });
  const remote = stats.get(pair.remoteCandidateId);
  return {type: remote.candidateType, address: remote.address};
}'''

async def main():
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = await browser.new_page()
        await page.goto("data:text/html,<p>peer</p>")
        print(json.dumps({"offer": await page.evaluate(OFFER)}), flush=True)
        answer = json.loads(sys.stdin.readline())["answer"]
        print(json.dumps({"remote": await page.evaluate(PAIR, answer)}), flush=True)
        sys.stdin.readline()
        await browser.close()
asyncio.run(main())
"""

AIORTC_PEER = r"""
import asyncio, json, sys, time
from aiortc import RTCPeerConnection, RTCSessionDescription
from peerproxyd.rtc.patches import aioice_mdns
from peerproxyd.appliance import mdns
from peerproxyd.config import IceSettings
from peerproxyd.rtc.aiortc_setup import configure_ice, connection_report, new_peer_connection

async def main(fixed):
    configure_ice(IceSettings())
    aioice_mdns.install(fixed)
    pc = new_peer_connection(IceSettings())
    connected = asyncio.Event()
    pc.on("connectionstatechange", lambda: pc.connectionState == "connected" and connected.set())
    offer = json.loads(await asyncio.to_thread(sys.stdin.readline))["offer"]
    started = time.monotonic()
    await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    answer = await mdns.hide_host_addresses(pc.localDescription.sdp, subscriber=pc)
    print(json.dumps({"answer": answer}), flush=True)
    await asyncio.wait_for(connected.wait(), 20)
    report = await connection_report(pc)
    print(json.dumps({"connected_ms": (time.monotonic() - started) * 1000,
                      "report": report.as_dict()}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await pc.close()
    await mdns.release(subscriber=pc)
asyncio.run(main(sys.argv[1] == "fixed"))
"""


def chromium_unavailable() -> str | None:
    import importlib.util
    import shutil

    if shutil.which("chromium") is None:
        return "chromium is not installed (Debian: chromium; make system-deps)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (requirements-dev.lock)"
    return None


def chromium_meets_aiortc(net: Network, fixed: bool, device_script: str | None = None
                          ) -> tuple[dict, dict]:
    """Chromium (LAN viewer) offers to an aiortc answerer (device; or `device_script`, which
    speaks the same lines): both use `.local` host candidates. Returns what the device
    measured and what Chromium selected."""

    def start(role: str, script: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            net.ns[role].cmd(sys.executable, "-c", script, *args), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "HOME": str(net.log_dir)},
            cwd=Path(__file__).resolve().parents[2],
        )

    chromium = start("lanv", CHROMIUM_PEER)
    device = start("dev", device_script or AIORTC_PEER, "fixed" if fixed else "stock")
    try:
        assert chromium.stdin and chromium.stdout and device.stdin and device.stdout
        device.stdin.write(chromium.stdout.readline())
        device.stdin.flush()
        chromium.stdin.write(device.stdout.readline())
        chromium.stdin.flush()
        measured = json.loads(device.stdout.readline())
        selected = json.loads(chromium.stdout.readline())["remote"]
        return measured, selected
    finally:
        for proc in (chromium, device):
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.mark.netns
@pytest.mark.timeout(180)
async def test_chromium_and_aiortc_resolve_each_others_local_names(tmp_path):
    """Chromium's `.local` candidate resolves at once with our fix (stock aioice: a 1 s
    timeout), and Chromium resolves ours through aioice's responder: it selects our LAN
    address as a host candidate, not a peer-reflexive one learnt from our checks."""
    from tests.test_nat import require_netns

    require_netns()
    if reason := chromium_unavailable():
        pytest.skip(reason)
    net = Network(tmp_path).up()
    try:
        measured, selected = chromium_meets_aiortc(net, fixed=True)
        assert measured["report"]["type"] == "host"
        assert ".local (192.168.50.20)" in measured["report"]["remote"]
        assert measured["report"]["remote_mdns"] is True  # the metrics' path "mdns"
        # Chromium keeps a resolved mDNS address out of its stats ("" here); a pair it had
        # only learnt from our checks would show as "prflx" with the address.
        assert selected["type"] == "host" and selected["address"] in ("", DEV), selected
        stock, _ = chromium_meets_aiortc(net, fixed=False)
    finally:
        net.down()
    assert measured["connected_ms"] < 500, measured
    assert stock["connected_ms"] > 900, stock  # why aioice_mdns exists
    print(f"Chromium -> aiortc ICE: {measured['connected_ms']:.0f} ms with the fix, "
          f"{stock['connected_ms']:.0f} ms with stock aioice")


NATIVE_PEER = r"""
import asyncio, json, sys, time
from peerproxyd.appliance import mdns
from peerproxyd.config import IceSettings
from peerproxyd.rtc.transport import new_transport

async def main():
    pc = new_transport(IceSettings(), backend="native")
    connected = asyncio.Event()
    pc.on_state(lambda state: state == "connected" and connected.set())
    pc.on_channel(lambda channel: None)
    offer = json.loads(await asyncio.to_thread(sys.stdin.readline))["offer"]
    started = time.monotonic()
    answer = await mdns.hide_host_addresses(await pc.answer(offer), subscriber=pc)
    print(json.dumps({"answer": answer}), flush=True)
    await asyncio.wait_for(connected.wait(), 20)
    report = await pc.report()
    print(json.dumps({"connected_ms": (time.monotonic() - started) * 1000,
                      "report": report.as_dict(), "offer": offer}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await pc.close()
    await mdns.release(subscriber=pc)
asyncio.run(main())
"""


@pytest.mark.netns
@pytest.mark.timeout(180)
async def test_chromium_with_local_names_reaches_a_native_device(tmp_path):
    """Chromium on the LAN offers only `<uuid>.local` host candidates; the native backend
    does not resolve them, yet Chromium's checks reach it (the pair is found peer-reflexive
    on its side), and Chromium resolves our published name: the channel opens."""
    from peerproxyd.rtc.transport import native_available
    from tests.test_nat import require_netns

    if not native_available():
        pytest.skip("libdatachannel-py not importable (`make test-native`)")
    require_netns()
    if reason := chromium_unavailable():
        pytest.skip(reason)
    net = Network(tmp_path).up()
    try:
        measured, selected = chromium_meets_aiortc(net, fixed=True, device_script=NATIVE_PEER)
    finally:
        net.down()
    assert ".local" in measured["offer"] and "typ host" in measured["offer"]
    assert measured["report"]["backend"] == "native"
    assert measured["report"]["type"] == "host", measured  # a LAN pair, no NAT in between
    assert selected["type"] in ("host", "prflx"), selected


# ----- resolving `.local` candidates for the native backend (libdatachannel resolves none)

NAMED_SDP = (
    "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:dc\r\n"
    "a=candidate:1 1 udp 2122260223 4f7c2f0e-8d1a-4c2b-9a55-0123456789ab.local 51234 typ host\r\n"
    "a=candidate:2 1 udp 1686052607 203.0.113.9 51234 typ srflx raddr 0.0.0.0 rport 0\r\n"
    "a=candidate:3 1 udp 2122260223 127.0.0.1 51235 typ host\r\n"
)


def test_named_candidates_finds_local_names_with_their_mid():
    named = mdns.named_candidates(NAMED_SDP)
    name = "4f7c2f0e-8d1a-4c2b-9a55-0123456789ab.local"
    assert named == [("dc", f"candidate:1 1 udp 2122260223 {name} 51234 typ host", name)]
    assert mdns.with_address(named[0][1], "10.200.0.1") == (
        "candidate:1 1 udp 2122260223 10.200.0.1 51234 typ host")
    assert mdns.named_candidates("a=candidate:3 1 udp 1 127.0.0.1 5 typ host\r\n") == []


async def test_resolve_name_answers_a_published_name_and_none_for_an_unknown_one():
    """A name published on aioice's shared responder (as the daemon's are) resolves through
    the same shared protocol; an unknown name gives None after the timeout."""
    if not os.path.exists("/proc/self/ns/net") or os.geteuid() != 0:
        pytest.skip("needs root for a namespace")
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", RESOLVE_IN_NAMESPACE],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"known": "10.9.8.7", "unknown": None}


RESOLVE_IN_NAMESPACE = """
import asyncio, json, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "link", "set", "lo", "multicast", "on"], check=True)
subprocess.run(["ip", "route", "add", "224.0.0.0/4", "dev", "lo"], check=True)
import aioice.ice, aioice.mdns
from peerproxyd.appliance import mdns
from peerproxyd.rtc.patches import aioice_mdns
aioice_mdns.install()
async def main():
    owner, asker = object(), object()
    protocol = await aioice.ice.get_or_create_mdns_protocol(owner)
    name = aioice.mdns.create_mdns_hostname()
    await protocol.publish(name, "10.9.8.7")
    known = await mdns.resolve_name(name, asker)
    unknown = await mdns.resolve_name(aioice.mdns.create_mdns_hostname(), asker, timeout=0.3)
    await mdns.release(asker)
    await mdns.release(owner)
    print(json.dumps({"known": known, "unknown": unknown}))
asyncio.run(main())
"""
