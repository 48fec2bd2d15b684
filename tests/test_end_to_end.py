"""End to end: signaling server, daemon and native clients as real processes, real aiohttp
upstreams, real aiortc peers; every ICE candidate on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest
from multidict import CIMultiDict

from peerproxyd.protocol import ErrorCode, Flag, Frame
from tests.support.procs import Proc, free_port
from tests.support.rawpeer import RawPeer
from tests.support.stack import Stack
from tests.support.upstream_app import pattern

MB = 1024 * 1024


@dataclass
class Net:
    signal_url: str
    device: str
    link: Callable[[str], str]  # a new viewer of a service: its share link
    camera_upstream: str
    camera: str  # native client URL for service "camera"
    ha: str  # native client URL for service "ha"
    daemon: Proc


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):
    stack = Stack(tmp_path_factory.mktemp("e2e"))
    try:
        camera = stack.upstream("camera")
        stack.upstream("ha")
        stack.signal()
        ports = stack.upstream_ports
        stack.extra_config = (
            f'[services.slow]\nupstream = "{camera}"\nread_timeout = 1.0\n'
            f'[services.trusting]\nupstream = "{camera}"\nhost = "upstream"\n'
            "forwarded_for = true\n"
        )
        daemon = stack.daemon({"camera": ports["camera"], "ha": ports["ha"], "down": free_port()})
        _, camera_client = stack.client("camera")
        _, ha_client = stack.client("ha")
        yield Net(
            signal_url=stack.signal_url,
            device=stack.device,
            link=stack.link,
            camera_upstream=camera,
            camera=camera_client,
            ha=ha_client,
            daemon=daemon,
        )
    finally:
        stack.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def test_get_with_query_and_repeated_headers(net: Net, http: aiohttp.ClientSession):
    headers = CIMultiDict([("X-Rep", "1"), ("X-Rep", "2"), ("X-One", "é")])
    async with http.get(f"{net.camera}/echo/a%20b?x=1&x=2&y=z", headers=headers) as r:
        assert r.status == 200
        echo = await r.json()
    assert echo["service"] == "camera"
    assert echo["raw_path"] == "/echo/a%20b?x=1&x=2&y=z"
    assert echo["query"] == [["x", "1"], ["x", "2"], ["y", "z"]]
    got = echo["headers"]
    assert [v for k, v in got if k == "X-Rep"] == ["1", "2"]
    names = {k.lower(): v for k, v in got}
    assert names["host"] == net.camera.removeprefix("http://")  # the viewer's (host = "viewer")
    assert names["x-forwarded-host"] == net.camera.removeprefix("http://")
    assert names["x-forwarded-proto"] == "http"
    assert "x-forwarded-for" not in names and "forwarded" not in names
    assert "user-agent" not in names or names["user-agent"].startswith("Python")


async def test_repeated_response_headers_survive(net: Net, http: aiohttp.ClientSession):
    async with http.get(f"{net.camera}/cookies") as r:
        assert r.headers.getall("Set-Cookie") == [
            "a=1; Path=/",
            "b=2; Path=/; HttpOnly",
            "c=3; Path=/; Max-Age=60",
        ]
        assert r.headers.getall("X-Multi") == ["one", "two"]


async def test_post_20_mb_body(net: Net, http: aiohttp.ClientSession):
    body = os.urandom(20 * MB)
    async with http.post(f"{net.camera}/upload", data=body) as r:
        assert r.status == 200
        result = await r.json()
    assert result == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}


async def test_chunked_request_body(net: Net, http: aiohttp.ClientSession):
    parts = [os.urandom(100_000) for _ in range(5)]

    async def gen():
        for p in parts:
            yield p

    async with http.post(f"{net.camera}/upload", data=gen()) as r:
        result = await r.json()
    assert result["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


@pytest.mark.slow
async def test_200_mb_download_streams_with_bounded_daemon_memory(
    net: Net, http: aiohttp.ClientSession
):
    size = 200 * MB
    before = net.daemon.rss_peak_kib()
    digest = hashlib.sha256()
    received = 0
    async with http.get(f"{net.camera}/download?size={size}") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(size)
        async for chunk in r.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()
    growth_mib = (net.daemon.rss_peak_kib() - before) / 1024
    assert growth_mib < 64, f"daemon peak RSS grew by {growth_mib:.0f} MiB for a 200 MB body"


async def test_chunked_response(net: Net, http: aiohttp.ClientSession):
    async with http.get(f"{net.camera}/download?size=300000&chunked=1") as r:
        assert "Content-Length" not in r.headers
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert await r.read() == pattern(300000)


async def test_head_has_length_and_no_body(net: Net, http: aiohttp.ClientSession):
    async with http.head(f"{net.camera}/download?size=12345") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "12345"
        assert await r.read() == b""


@pytest.mark.parametrize("code", [204, 304])
async def test_no_body_statuses(net: Net, http: aiohttp.ClientSession, code: int):
    async with http.get(f"{net.camera}/status/{code}") as r:
        assert r.status == code
        assert await r.read() == b""
        if code == 304:
            assert r.headers["ETag"] == '"v1"'


async def test_100_concurrent_requests_across_two_services(net: Net, http: aiohttp.ClientSession):
    async def one(base: str, i: int) -> tuple[str, str]:
        async with http.get(f"{base}/echo?i={i}") as r:
            echo = await r.json()
            return echo["service"], echo["query"][0][1]

    jobs = [one(net.camera if i % 2 else net.ha, i) for i in range(100)]
    results = await asyncio.gather(*jobs)
    for i, (service, index) in enumerate(results):
        assert service == ("camera" if i % 2 else "ha")
        assert index == str(i)


async def test_slow_upstream_does_not_block_others(net: Net, http: aiohttp.ClientSession):
    slow = asyncio.create_task(http.get(f"{net.camera}/slow?s=3"))
    await asyncio.sleep(0.2)
    for i in range(20):
        async with http.get(f"{net.camera}/echo?fast={i}") as r:
            assert r.status == 200
    assert not slow.done(), "fast requests should finish while the slow one is pending"
    async with await slow as r:
        assert await r.text() == "slow done"


async def test_client_cancel_mid_download_frees_stream(net: Net, http: aiohttp.ClientSession):
    stats_url = f"{net.camera_upstream}/stats"
    async with http.get(stats_url) as r:
        aborted_before = (await r.json())["aborted"]
    async with http.get(f"{net.camera}/download?size={1000 * MB}") as r:
        await r.content.readexactly(2 * MB)
        r.close()  # the local client goes away mid-download
    async with asyncio.timeout(15):
        while True:
            async with http.get(stats_url) as r:
                stats = await r.json()
            if stats["aborted"] > aborted_before and stats["active"] == 0:
                break
            await asyncio.sleep(0.1)
    net.daemon.wait_for_log(r"camera GET /download\?size=1048576000 499")


async def test_a_client_gone_before_the_response_head_frees_its_stream(net: Net):
    """A local client that gives up on a request the app has not answered yet (a long poll)
    resets its stream at once: the daemon ends it as 499 long before the app would answer."""
    with pytest.raises(TimeoutError):
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(0.5):
                await http.get(f"{net.camera}/slow?s=60")
    net.daemon.wait_for_log(r"camera GET /slow\?s=60 499", timeout=15)


async def test_forwarded_for_sends_the_viewers_ip_address(net: Net):
    """[services.*] forwarded_for = true: X-Forwarded-For and Forwarded carry the viewer's
    address on its ICE pair (loopback here), never its name; host = "upstream"."""
    async with RawPeer(net.signal_url, net.link("trusting")) as peer:
        head, body = await peer.request("trusting", "/echo", headers=(("Host", "x.example"),))
    assert head.status == 200
    names = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert names["x-forwarded-for"] == "127.0.0.1"
    assert names["forwarded"] == 'for=127.0.0.1;proto=https;host="x.example"'
    assert names["host"] == net.camera_upstream.removeprefix("http://")


async def test_a_quiet_response_body_is_not_cut_by_read_timeout(net: Net):
    """read_timeout bounds the wait for the head only: an event stream may be silent."""
    async with RawPeer(net.signal_url, net.link("slow")) as peer:
        head, body = await peer.request("slow", "/quiet?s=2.5")  # read_timeout = 1.0
    assert (head.status, body) == (200, b"ab")


async def test_unknown_service_and_upstream_errors(net: Net):
    async with RawPeer(net.signal_url, net.link("nope")) as peer:  # a service since removed
        head, body = await peer.request("nope", "/")
        assert (head.status, body) == (404, b"unknown service 'nope'\n")
    async with RawPeer(net.signal_url, net.link("down")) as peer:
        head, body = await peer.request("down", "/")
        assert head.status == 502
        assert body.startswith(b"upstream down unreachable")
    async with RawPeer(net.signal_url, net.link("slow")) as peer:
        head, body = await peer.request("slow", "/slow?s=4")
        assert head.status == 504
    async with RawPeer(net.signal_url, net.link("camera")) as peer:
        head, body = await peer.request("camera", "/")
        assert (head.status, body) == (200, b"hello from camera\n")
        head, body = await peer.request("ha", "/")
        assert (head.status, body) == (
            403, f"viewer {peer.share.name} may use service camera only, not ha\n".encode()
        )


async def test_error_reply_stops_a_large_upload(net: Net):
    """The daemon answers 404 without reading the body, then resets the stream (NO_ERROR)
    so the viewer stops sending instead of waiting for window forever."""
    async with RawPeer(net.signal_url, net.link("nope")) as peer:
        head, body = await peer.request("nope", "/", method="POST", body=b"x" * (3 * MB))
        assert head.status == 404
        assert peer.link.conn.open_streams == 0


async def test_malformed_packets_reset_only_that_stream(net: Net, http: aiohttp.ClientSession):
    async with RawPeer(net.signal_url, net.link("camera")) as peer:
        # A valid request on stream 1 first, so the connection has state.
        head, _ = await peer.request("camera", "/")
        assert head.status == 200
        # Stream 2: BODY before any HEADERS.
        peer.send_raw(bytes(Frame(2, 0, Flag(0), b"junk")))
        reset = await peer.wait_for_frame(lambda f: f.stream_id == 2 and f.flags & Flag.RESET)
        assert reset.reset_fields() == (ErrorCode.PROTOCOL_ERROR, "BODY not allowed on stream 2 in state idle")
        # Stream 3: header block that is not JSON.
        peer.send_raw(bytes(Frame(3, 0, Flag.HEADERS | Flag.END_HEADERS | Flag.FINAL, b"{nope")))
        reset = await peer.wait_for_frame(lambda f: f.stream_id == 3 and f.flags & Flag.RESET)
        assert reset.reset_fields()[1].startswith("header block is not UTF-8 JSON")
        # Stream 4: unknown flags.
        peer.send_raw(bytes(Frame(4, 0, Flag(0), b"")) [:10] + b"\x80\x00")
        reset = await peer.wait_for_frame(lambda f: f.stream_id == 4 and f.flags & Flag.RESET)
        assert reset.reset_fields() == (ErrorCode.PROTOCOL_ERROR, "unknown flags 0x8000")
        # Too short to name a stream: dropped, connection unaffected.
        peer.send_raw(b"\x00\x01")
        # Stream 1 reused.
        peer.send_raw(bytes(Frame(1, 0, Flag.HEADERS | Flag.END_HEADERS | Flag.FINAL, b"{}")))
        # The same peer keeps working on a new stream (ids continue after the raw ones).
        peer.link.conn._next_id = 5
        head, body = await peer.request("camera", "/")
        assert (head.status, body) == (200, b"hello from camera\n")
        # ... and so does another peer.
        async with http.get(f"{net.ha}/") as r:
            assert await r.text() == "hello from ha\n"


async def test_headers_over_the_limit_get_431(net: Net, http: aiohttp.ClientSession):
    big = [("X-Big-%d" % i, "v" * 7000) for i in range(12)]  # ~84 KB > 64 KiB limit
    async with http.get(f"{net.camera}/echo", headers=CIMultiDict(big), max_line_size=16384, max_field_size=16384) as r:
        assert r.status == 431
    async with http.get(f"{net.camera}/") as r:
        assert r.status == 200
