"""Header and target injection, request smuggling, SSRF: a case table through the sans-IO
layers (protocol heads, then the proxy policy of http_headers), and a handful of cases through
a real peer connection to a real upstream that records every byte it receives."""

from __future__ import annotations

import asyncio
import json
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from peerproxyd.errors import StreamResetError
from peerproxyd.protocol import (
    ErrorCode,
    Flag,
    Frame,
    ProxyConnection,
    RequestReceived,
    Role,
    StreamReset,
)
from peerproxyd.protocol.http_headers import (
    BadRequest,
    BodyCounter,
    check_request,
    downstream_response_headers,
    upstream_request_headers,
)
from tests.support.rawpeer import RawPeer
from tests.support.recording_upstream import RecordingUpstream
from tests.support.stack import Stack

H, E, F = Flag.HEADERS, Flag.END_HEADERS, Flag.FINAL
BASE = "http://127.0.0.1:8081/app"
MAX_BODY = 1000


@dataclass(frozen=True)
class Outcome:
    kind: str  # "reset" (protocol layer), "refused" (policy: an HTTP status), "ok"
    status: int = 0
    reason: str = ""
    target: str = ""
    headers: tuple[tuple[str, str], ...] = ()


def outcome(method: str = "GET", target: str = "/", headers: list[list[str]] | None = None
            ) -> Outcome:
    """What the daemon does with this head: the protocol layer first, then the policy."""
    block = json.dumps({"method": method, "target": target, "headers": headers or [],
                        "service": "camera"}).encode()
    conn = ProxyConnection(Role.SERVER)
    (event,) = conn.receive_message(bytes(Frame(1, 0, H | E | F, block)))
    if isinstance(event, StreamReset):
        assert event.code == ErrorCode.PROTOCOL_ERROR
        return Outcome("reset", reason=event.reason)
    assert isinstance(event, RequestReceived)
    try:
        checked = check_request(event.head, max_body=MAX_BODY)
    except BadRequest as exc:
        return Outcome("refused", status=exc.status, reason=str(exc))
    out = upstream_request_headers(event.head.headers, upstream_host="127.0.0.1:8081")
    return Outcome("ok", target=checked.target, headers=tuple(out))


RESET_TARGETS = [
    "http://evil.example/",  # absolute-form
    "//evil.example/x",  # scheme-relative
    "evil.example:443",  # authority-form
    "*",  # asterisk-form
    "",
    "/a b",
    "/a\r\nX-Injected: 1",
    "/a\nGET /admin HTTP/1.1",
    "/a\x00",
    "/a\t",
    "/a\x7f",
    "/a#fragment",
    "/a\ud800",
    "@evil.example/",
]


@pytest.mark.parametrize("target", RESET_TARGETS)
def test_targets_not_in_origin_form_reset_the_stream(target: str) -> None:
    assert outcome(target=target) == Outcome(
        "reset", reason=f"target {target!r} is not in origin-form"
    )


REFUSED_TARGETS = {
    "/../etc/passwd": "dot segment",
    "/a/../../b": "dot segment",
    "/..": "dot segment",
    "/.": "dot segment",
    "/a/./b": "dot segment",
    "/a/..?x=1": "dot segment",
    "/%2e%2e/x": "dot segment",
    "/%2E%2e/x": "dot segment",
    "/.%2e/x": "dot segment",
    "/%2e/x": "dot segment",
    "/a/..%2fb": "dot segment",
    "/a%2f..%2f..%2fb": "dot segment",
    "/%252e%252e/admin": "dot segment",
    "/%25252e%25252e/admin": "dot segment",
    "/..;/admin": "dot segment",
    "/%252525252e%252525252e/admin": "too many levels of percent-encoding",
    "/a/.;x=1/b": "dot segment",
    "/a\\..\\b": "backslash",
    "/\\evil.example": "backslash",
    "/a%5c..%5cb": "backslash",
    "/a%255cb": "backslash",
    "/%zz": "malformed percent-escape",
    "/a%2": "malformed percent-escape",
    "/a%": "malformed percent-escape",
    "/a%00b": "encoded control character",
    "/a%0d%0aX-Injected:%201": "encoded control character",
    "/a%7F": "encoded control character",
}


@pytest.mark.parametrize(("target", "why"), REFUSED_TARGETS.items())
def test_targets_that_could_leave_the_base_path_are_refused(target: str, why: str) -> None:
    result = outcome(target=target)
    assert (result.kind, result.status) == ("refused", 400), result
    assert why in result.reason and repr(target) in result.reason


ACCEPTED_TARGETS = {
    "/": "/",
    "/a/b?x=1&y=2": "/a/b?x=1&y=2",
    "/a?next=../../admin": "/a?next=../../admin",  # the query is the app's business
    "/a?q=%2e%2e%2f%00": "/a?q=%2e%2e%2f%00",
    "/a?path=a\\b": "/a?path=a\\b",
    "/a..b/c...": "/a..b/c...",
    "/.well-known/x": "/.well-known/x",
    "/a/.b/..c": "/a/.b/..c",
    "/group%2Fproject": "/group%2Fproject",  # an encoded slash alone cannot climb
    "/a%20b": "/a%20b",
    "/caf\u00e9?q=\u00fc": "/caf%C3%A9?q=%C3%BC",  # non-ASCII goes upstream percent-encoded
    "/a//b": "/a//b",
}


@pytest.mark.parametrize(("target", "sent"), ACCEPTED_TARGETS.items())
def test_harmless_targets_are_forwarded(target: str, sent: str) -> None:
    assert outcome(target=target).target == sent


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([["X-A", "1\r\nX-Injected: 1"]], "header 'X-A' has CR, LF or NUL in its value"),
        ([["X-A", "1\nX-Injected: 1"]], "header 'X-A' has CR, LF or NUL in its value"),
        ([["X-A", "1\r"]], "header 'X-A' has CR, LF or NUL in its value"),
        ([["X-A", "\x00"]], "header 'X-A' has CR, LF or NUL in its value"),
        ([["X-A\r\nX-Injected", "1"]], "invalid header name 'X-A\\r\\nX-Injected'"),
        ([["X-A\n", "1"]], "invalid header name 'X-A\\n'"),
        ([["Host:", "evil"]], "invalid header name 'Host:'"),
        ([["X A", "1"]], "invalid header name 'X A'"),
        ([["", "1"]], "invalid header name ''"),
        ([["X-\x00", "1"]], "invalid header name 'X-\\x00'"),
    ],
)
def test_cr_lf_nul_in_headers_reset_the_stream(headers: list[list[str]], reason: str) -> None:
    assert outcome(headers=headers) == Outcome("reset", reason=reason)


@pytest.mark.parametrize("method", ["GET /admin HTTP/1.1\r\n", "GET\n", "G\x00", "GET /", ""])
def test_bad_methods_reset_the_stream(method: str) -> None:
    assert outcome(method=method) == Outcome("reset", reason=f"invalid method {method!r}")


@pytest.mark.parametrize(
    ("method", "headers", "status", "reason"),
    [
        ("CONNECT", [], 400, "method CONNECT is not allowed"),
        ("TRACE", [], 400, "method TRACE is not allowed"),
        ("GET", [["X-A", "a\x01b"]], 400, "header 'X-A' has a control character in its value"),
        ("GET", [["X-A", "\x1b[31m"]], 400, "header 'X-A' has a control character"),
        ("GET", [["X-A", "a\x0bb"]], 400, "header 'X-A' has a control character"),
        ("GET", [["X-A", "a\x7f"]], 400, "header 'X-A' has a control character"),
        ("POST", [["Content-Length", "5"], ["Content-Length", "5"]], 400,
         "repeated Content-Length"),
        ("POST", [["Content-Length", "5"], ["content-length", "6"]], 400,
         "repeated Content-Length"),
        ("POST", [["Content-Length", "5, 5"]], 400, "repeated Content-Length"),
        ("POST", [["Content-Length", "-1"]], 400, "invalid Content-Length '-1'"),
        ("POST", [["Content-Length", "+5"]], 400, "invalid Content-Length '+5'"),
        ("POST", [["Content-Length", "0x10"]], 400, "invalid Content-Length '0x10'"),
        ("POST", [["Content-Length", "5 5"]], 400, "invalid Content-Length '5 5'"),
        ("POST", [["Content-Length", ""]], 400, "invalid Content-Length ''"),
        ("POST", [["Content-Length", "9" * 19]], 400, "invalid Content-Length"),
        ("POST", [["Transfer-Encoding", "chunked"], ["Content-Length", "5"]], 400,
         "both Transfer-Encoding and Content-Length"),
        ("POST", [["Content-Length", "5"], ["Transfer-Encoding", "chunked"]], 400,
         "both Transfer-Encoding and Content-Length"),
        ("POST", [["Transfer-Encoding", "gzip"]], 400, "Transfer-Encoding 'gzip' is not"),
        ("POST", [["Transfer-Encoding", "gzip, chunked"]], 400, "is not supported"),
        ("POST", [["Transfer-Encoding", "chunked, chunked"]], 400, "is not supported"),
        ("POST", [["Transfer-Encoding", "chunked"], ["Transfer-Encoding", "chunked"]], 400,
         "is not supported"),
        ("POST", [["Transfer-Encoding", "xchunked"]], 400, "is not supported"),
        ("POST", [["Transfer-Encoding", "identity"]], 400, "is not supported"),
        ("GET", [["Host", "a.example"], ["Host", "b.example"]], 400, "more than one Host"),
        ("GET", [["Host", "evil.example/x"]], 400, "invalid Host header 'evil.example/x'"),
        ("GET", [["Host", 'a"b']], 400, "invalid Host header"),
        ("GET", [["Host", "user@evil.example"]], 400, "invalid Host header"),
        ("GET", [["Host", "a b"]], 400, "invalid Host header"),
        ("POST", [["Content-Length", str(MAX_BODY + 1)]], 413,
         f"request body of {MAX_BODY + 1} bytes exceeds {MAX_BODY} bytes"),
    ],
)
def test_policy_refusals(method: str, headers: list[list[str]], status: int, reason: str) -> None:
    result = outcome(method=method, headers=headers)
    assert (result.kind, result.status) == ("refused", status), result
    assert reason in result.reason


def test_hop_by_hop_and_spoofable_headers_never_reach_the_upstream() -> None:
    result = outcome(
        method="POST",
        headers=[
            ["Host", "camera-pi--camera.example.net"],
            ["Connection", "keep-alive, X-Secret, Upgrade"],
            ["X-Secret", "1"],
            ["Keep-Alive", "timeout=5"],
            ["TE", "trailers"],
            ["Trailer", "X-T"],
            ["Upgrade", "websocket"],
            ["Transfer-Encoding", " Chunked "],
            ["Expect", "100-continue"],
            ["Proxy-Authorization", "Basic eA=="],
            ["Proxy-Whatever", "1"],
            ["Proxy-Connection", "keep-alive"],
            ["X-Forwarded-For", "127.0.0.1"],
            ["X-Forwarded-Host", "admin.internal"],
            ["X-Forwarded-Prefix", "/admin"],
            ["X-Forwarded-Port", "80"],
            ["Forwarded", "for=127.0.0.1"],
            ["X-Real-IP", "127.0.0.1"],
            ["True-Client-IP", "127.0.0.1"],
            ["X-Original-URL", "/admin"],
            ["X-Rewrite-URL", "/admin"],
            ["X-Tab", "a\tb"],
            ["Cookie", "s=1"],
        ],
    )
    assert result.kind == "ok"
    assert result.headers == (
        ("X-Tab", "a\tb"),
        ("Cookie", "s=1"),
        ("Host", "camera-pi--camera.example.net"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "camera-pi--camera.example.net"),
    )


def test_response_headers_a_viewer_must_not_get_are_dropped() -> None:
    out = downstream_response_headers(
        [("Connection", "X-Hop"), ("X-Hop", "1"), ("Proxy-Authenticate", "Basic"),
         ("X-Ctl", "a\x01b"), ("Bad Name", "1"), ("X-Latin", "caf\xe9"), ("X-Ok", "a\tb")]
    )
    assert out == [("X-Latin", "caf\xe9"), ("X-Ok", "a\tb")]


@pytest.mark.parametrize(
    ("length", "chunks", "status", "reason"),
    [
        (5, [5], 0, ""),
        (5, [3, 3], 400, "request body exceeds its Content-Length of 5"),
        (5, [6], 400, "request body exceeds its Content-Length of 5"),
        (5, [2, 2], 400, "request body ended after 4 of its 5 bytes"),
        (None, [600, 400], 0, ""),
        (None, [600, 401], 413, f"request body exceeds {MAX_BODY} bytes"),
        (0, [1], 400, "request body exceeds its Content-Length of 0"),
    ],
)
def test_body_counter(length: int | None, chunks: list[int], status: int, reason: str) -> None:
    counter = BodyCounter(length, MAX_BODY)
    try:
        for n in chunks:
            counter.add(n)
        counter.end()
    except BadRequest as exc:
        assert (exc.status, str(exc)) == (status, reason)
        assert counter.error is exc
    else:
        assert status == 0 and counter.error is None


# Any target both layers accept stays on the upstream's host and under its base path.
targets = st.lists(
    st.sampled_from(list("/.%\\?;#a2eEfF5c") + ["%2e", "%2f", "%2E", "%5c", "%25", "..", "\u00e9"]),
    max_size=24,
).map(lambda parts: "/" + "".join(parts))


@settings(max_examples=1500, deadline=None)
@given(targets)
def test_accepted_targets_never_leave_the_base_path(target: str) -> None:
    result = outcome(target=target)
    if result.kind != "ok":
        return
    url = URL(BASE + result.target, encoded=True)
    assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", 8081)
    path = url.raw_path
    for _ in range(4):
        path = unquote(path).replace("\\", "/")
    assert posixpath.normpath(path).startswith("/app"), (target, url)
    assert url.raw_path.startswith("/app/")


# ----- through a real peer connection to a real upstream


@dataclass
class Net:
    signal_url: str
    upstream: RecordingUpstream
    link: Callable[[str], str]  # a new viewer of a service: its share link


class Viewer:
    """One viewer per service (a share link names one): `request(service, ...)` goes through
    that service's RawPeer, opened on first use."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.peers: dict[str, RawPeer] = {}

    async def __aenter__(self) -> Viewer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for peer in self.peers.values():
            await peer.__aexit__(None, None, None)

    async def request(self, service: str, *args: Any, **kwargs: Any) -> Any:
        if service not in self.peers:
            peer = RawPeer(self.net.signal_url, self.net.link(service))
            self.peers[service] = await peer.__aenter__()
        return await self.peers[service].request(service, *args, **kwargs)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    upstream = RecordingUpstream()
    port = upstream.start()
    stack = Stack(tmp_path_factory.mktemp("injection"))
    try:
        stack.signal()
        stack.extra_config = (
            f'[services.based]\nupstream = "http://127.0.0.1:{port}/app"\n'
            "[services.small]\n"
            f'upstream = "http://127.0.0.1:{port}"\nmax_request_body = 65536\n'
        )
        stack.daemon({"camera": port})
        yield Net(stack.signal_url, upstream, stack.link)
    finally:
        stack.stop()
        upstream.stop()


async def test_injections_through_a_real_peer_never_reach_the_upstream(net: Net) -> None:
    async with Viewer(net) as peer:
        # Protocol layer: the stream is reset, nothing goes upstream.
        for target in ("/x\r\nGET /smuggled-target HTTP/1.1", "//evil.example/smuggled-target"):
            with pytest.raises(StreamResetError) as info:
                await peer.request("camera", target)
            assert info.value.code == ErrorCode.PROTOCOL_ERROR
        with pytest.raises(StreamResetError):
            await peer.request("camera", "/", headers=(("X-A", "1\r\nX-Smuggled-Header: 1"),))
        # Policy: a clear 400 made by the daemon.
        for target in ("/../smuggled-target", "/%2e%2e/smuggled-target",
                       "/%252e%252e%252fsmuggled-target", "/..;/smuggled-target",
                       "/\\smuggled-target", "/x%0d%0aX-Smuggled-Header:%201"):
            head, body = await peer.request("based", target)
            assert head.status == 400 and head.get("X-Peerproxy-Error") == "1", target
            assert body.startswith(f"target {target!r} has ".encode()), body
        head, body = await peer.request(
            "camera", "/", headers=(("X-A", "1\x0bX-Smuggled-Header: 1"),))
        assert head.status == 400
        head, body = await peer.request("camera", "/", method="CONNECT")
        assert (head.status, body) == (400, b"method CONNECT is not allowed\n")
        # The same peer is still served, on the base path, with the upstream's Host.
        head, body = await peer.request("based", "/ok/caf\u00e9?q=../x")
        assert (head.status, body) == (200, b"ok")
    last = net.upstream.heads()[-1].decode("latin-1").split("\r\n")
    assert last[0] == "GET /app/ok/caf%C3%A9?q=../x HTTP/1.1"
    port = net.upstream._server.server_address[1]  # type: ignore[union-attr]
    assert [line for line in last if line.lower().startswith("host:")] == [
        f"Host: 127.0.0.1:{port}"
    ]
    seen = net.upstream.received()
    assert b"smuggled" not in seen.lower() and b"Smuggled" not in seen


async def test_smuggling_attempts_through_a_real_peer(net: Net) -> None:
    async with Viewer(net) as peer:
        smuggled = b"GET /smuggled-request HTTP/1.1\r\nHost: x\r\n\r\n"
        # Body longer than its Content-Length: the extra bytes would be a second request on a
        # kept-alive upstream connection. The daemon refuses before writing any of it.
        head, body = await peer.request(
            "camera", "/cl", method="POST", body=b"hello" + smuggled,
            headers=(("Content-Length", "5"),),
        )
        assert (head.status, body) == (400, b"request body exceeds its Content-Length of 5\n")
        # Conflicting framing headers are refused before anything is sent upstream.
        for headers in (
            (("Content-Length", "5"), ("Transfer-Encoding", "chunked")),
            (("Content-Length", "5"), ("Content-Length", str(5 + len(smuggled)))),
            (("Transfer-Encoding", "chunked, identity"),),
        ):
            head, _ = await peer.request(
                "camera", "/framing-smuggled-request", method="POST", body=b"hello" + smuggled,
                headers=headers,
            )
            assert head.status == 400, headers
        # A body with no declared length goes upstream chunked, framed by the daemon: the
        # upstream reads it as one request whatever it contains.
        head, body = await peer.request("camera", "/chunked", method="POST",
                                        body=b"hello\r\n0\r\n\r\n" + smuggled)
        assert (head.status, body) == (200, b"ok")
        # Hop-by-hop response headers and a control character never reach the viewer.
        head, body = await peer.request("camera", "/bad-response-headers")
        assert head.status == 200 and body == b"ok"
        names = [n.lower() for n, _ in head.headers]
        assert "x-fine" in names
        assert not {"connection", "x-hop", "keep-alive", "proxy-authenticate", "x-ctl"} & set(
            names)
    heads = [h.decode("latin-1").split("\r\n")[0] for h in net.upstream.heads()]
    assert not any("smuggled-request" in h for h in heads), heads
    assert not any(h.startswith("POST /framing") for h in heads), heads
    chunked = next(h for h in net.upstream.heads() if h.startswith(b"POST /chunked"))
    assert b"transfer-encoding: chunked" in chunked.lower()


async def test_request_body_limit_per_service(net: Net) -> None:
    async with Viewer(net) as peer:
        before = len(net.upstream.heads())
        # Declared over the limit: 413 before anything is read or sent upstream.
        head, body = await peer.request(
            "small", "/declared", method="POST", body=b"x" * 70_000,
            headers=(("Content-Length", "70000"),),
        )
        assert (head.status, body) == (413, b"request body of 70000 bytes exceeds 65536 bytes\n")
        assert peer.peers["small"].link.conn.open_streams == 0  # the stream was reset (NO_ERROR) too
        assert len(net.upstream.heads()) == before
        # Streamed over the limit without a length: cut off, upstream connection dropped.
        head, body = await peer.request("small", "/streamed", method="POST",
                                        body=b"y" * 200_000)
        assert (head.status, body) == (413, b"request body exceeds 65536 bytes\n")
        # At the limit, and on a service with the default limit, bodies pass.
        head, body = await peer.request("small", "/at-limit", method="POST",
                                        body=b"z" * 65536)
        assert (head.status, body) == (200, b"ok")
        head, body = await peer.request("camera", "/big", method="POST", body=b"w" * 200_000)
        assert (head.status, body) == (200, b"ok")
    heads = [h.split(b"\r\n")[0] for h in net.upstream.heads()]
    assert not any(h.startswith(b"POST /streamed") for h in heads) or _streamed_cut(net)


def _streamed_cut(net: Net) -> bool:
    """If the streamed request's head did reach the upstream, its body was cut short: the
    upstream never received a complete (chunked-terminated) body over the limit."""
    data = net.upstream.received()
    start = data.find(b"POST /streamed")
    end = data.find(b"POST /at-limit")
    part = data[start:end if end > start else None]
    return part.count(b"y") <= 65536 and not part.rstrip(b"\r\n").endswith(b"0")


async def test_other_streams_and_peers_unaffected(net: Net) -> None:
    """Refusals interleaved with good requests on one peer, and a second peer meanwhile."""
    async with Viewer(net) as a, Viewer(net) as b:
        results = await asyncio.gather(
            a.request("based", "/../x"),
            a.request("camera", "/fine-a"),
            a.request("small", "/p", method="POST", body=b"q" * 100_000),
            b.request("camera", "/fine-b"),
            return_exceptions=True,
        )
        statuses = [r[0].status for r in results]  # type: ignore[index]
        assert statuses == [400, 200, 413, 200]
