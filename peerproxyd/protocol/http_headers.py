"""HTTP rules for proxying, with no IO: which requests may go upstream, with which headers,
and what comes back.

The packet protocol (protocol/heads.py) already guarantees the syntax of a head: a token
method, an origin-form target without controls, spaces or `#`, token header names, no CR, LF
or NUL in values. This module adds the proxy's policy on top (`check_request`): no
request smuggling (one unambiguous body length), no escaping a service's base path
(`..`, `.`, backslashes, raw or percent-encoded), no control characters at all, and the
headers the upstream gets: hop-by-hop and spoofable forwarding headers removed, ours added.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, unquote

from peerproxyd.protocol.heads import TOKEN, Headers, RequestHead

HOP_BY_HOP = frozenset(
    {
        "connection",
        "expect",  # the body already streams; an interim 100 has no place in the protocol
        "http2-settings",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection, never forwarded (RFC 9110 7.6.1); also every
`Proxy-*` header and every header named in `Connection`."""

FORWARDING = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-original-url",  # path overrides honoured by some frameworks (IIS, Symfony)
        "x-rewrite-url",
    }
)
"""Request headers an upstream may trust for the client's address or the real path: only we
set them (with every `X-Forwarded-*`)."""

WEBSOCKET_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "sec-websocket-accept", "upgrade", "connection"}
)
"""A WebSocket handshake's own headers: each end's WebSocket library (aiohttp) makes them,
so they never cross the tunnel from the other side (docs/protocol.md §12)."""

MAX_PERCENT_DECODING = 4
"""Levels of percent-decoding a path is checked at (`%252e%252e` is `..` twice decoded); a
path still changing after that many is refused."""

_CTL_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 5.5: HTAB is allowed
_DIGITS = re.compile(r"[0-9]{1,18}")
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_CTL = re.compile(r"%(?:[01][0-9A-Fa-f]|7[Ff])")
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x21-\x7e]+")
FORBIDDEN_METHODS = frozenset({"CONNECT", "TRACE"})


class BadRequest(ValueError):
    """The request breaks the proxy's policy: answer `status` with the message, send nothing
    upstream."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _is_hop_by_hop(name: str, named: set[str]) -> bool:
    return name in HOP_BY_HOP or name in named or name.startswith("proxy-")


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Header names listed in Connection: they are hop-by-hop too (RFC 9110 7.6.1)."""
    tokens = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    headers = list(headers)
    named = _connection_tokens(headers)
    return [(n, v) for n, v in headers if not _is_hop_by_hop(n.lower(), named)]


# ----- request policy

@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """What `check_request` learned: the target to send upstream and the body's length."""

    target: str
    """The target with non-ASCII characters percent-encoded (UTF-8)."""
    content_length: int | None
    """The declared Content-Length; None: the body (if any) is delimited by the stream."""


def check_request(head: RequestHead, *, max_body: int = 0) -> CheckedRequest:
    """Apply the proxy policy to a request head; raise BadRequest (400, or 413 for a declared
    body over `max_body` bytes, 0 = no limit) for anything that must not reach an upstream."""
    if head.method in FORBIDDEN_METHODS:
        raise BadRequest(f"method {head.method} is not allowed")
    check_target(head.target)
    for name, value in head.headers:
        if _CTL_IN_VALUE.search(value):
            raise BadRequest(f"header {name!r} has a control character in its value")
    hosts = _values(head.headers, "host")
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if hosts and not _HOST.fullmatch(hosts[0]):
        raise BadRequest(f"invalid Host header {hosts[0]!r}")
    length = _content_length(head.headers)
    codings = _values(head.headers, "transfer-encoding")
    if codings:
        if length is not None:
            raise BadRequest("both Transfer-Encoding and Content-Length")
        tokens = [t.strip().lower() for v in codings for t in v.split(",")]
        if tokens != ["chunked"]:
            raise BadRequest(f"Transfer-Encoding {', '.join(codings)!r} is not supported")
    if length is not None and max_body and length > max_body:
        raise BadRequest(f"request body of {length} bytes exceeds {max_body} bytes", 413)
    return CheckedRequest(target=_NOT_PRINTABLE_ASCII.sub(_quote, head.target),
                          content_length=length)


def _quote(match: re.Match[str]) -> str:
    return quote(match.group(), safe="")


def _values(headers: Headers, name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name]


def _content_length(headers: Headers) -> int | None:
    values = _values(headers, "content-length")
    if not values:
        return None
    if len(values) > 1 or "," in values[0]:
        raise BadRequest("repeated Content-Length")
    value = values[0].strip(" \t")
    if not _DIGITS.fullmatch(value):
        raise BadRequest(f"invalid Content-Length {values[0]!r}")
    return int(value)


def check_target(target: str) -> None:
    """The path of an origin-form target must stay under the service's base path: no `.` or
    `..` segment and no backslash, at any level of percent-decoding (`%2e%2e%2f`, `%252e`,
    `..;/`); no malformed or control-character escape. The query is the app's business."""
    path = target.split("?", 1)[0]
    if _BAD_PERCENT.search(path):
        raise BadRequest(f"target {target!r} has a malformed percent-escape")
    if _ENCODED_CTL.search(path):
        raise BadRequest(f"target {target!r} has an encoded control character in its path")
    for _ in range(MAX_PERCENT_DECODING + 1):
        if "\\" in path:
            raise BadRequest(f"target {target!r} has a backslash in its path")
        for segment in path.split("/"):
            if segment.split(";", 1)[0] in (".", ".."):
                raise BadRequest(f"target {target!r} has a dot segment in its path")
        decoded = unquote(path)
        if decoded == path:
            return
        path = decoded
    raise BadRequest(f"target {target!r} has too many levels of percent-encoding")


class BodyCounter:
    """Counts request body bytes as they pass: more than the declared Content-Length, fewer
    at the end, or more than the service's limit raise BadRequest before the bytes that break
    the rule are sent anywhere."""

    def __init__(self, content_length: int | None, max_body: int) -> None:
        self.content_length = content_length
        self.max_body = max_body
        self.size = 0
        self.error: BadRequest | None = None
        """The rule broken, once one is (the IO code may only see a wrapped exception)."""

    def add(self, n: int) -> None:
        self.size += n
        if self.content_length is not None and self.size > self.content_length:
            self._fail(BadRequest(f"request body exceeds its Content-Length of "
                                  f"{self.content_length}"))
        if self.max_body and self.size > self.max_body:
            self._fail(BadRequest(f"request body exceeds {self.max_body} bytes", 413))

    def end(self) -> None:
        if self.content_length is not None and self.size < self.content_length:
            self._fail(BadRequest(
                f"request body ended after {self.size} of its {self.content_length} bytes"
            ))

    def _fail(self, error: BadRequest) -> None:
        self.error = error
        raise error


class ServiceHeaders(Protocol):
    """What a service's settings say about the headers its upstream gets (ServiceSettings)."""

    @property
    def upstream_host(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def forwarded_for(self) -> bool: ...


HOST_MODES = ("viewer", "upstream")
"""`[services.*] host`: the Host the viewer used, or the upstream URL's; anything else is a
literal `host[:port]` (valid_host)."""


def valid_host(value: str) -> bool:
    """Whether `value` is a syntactically valid Host header (`name[:port]`, `[v6][:port]`)."""
    return _HOST.fullmatch(value) is not None


def service_request_headers(
    headers: Headers, service: ServiceHeaders, client_address: str | None
) -> list[tuple[str, str]]:
    """upstream_request_headers with a service's settings (`[services.*]`)."""
    return upstream_request_headers(
        headers, upstream_host=service.upstream_host, host=service.host,
        client_address=client_address if service.forwarded_for else None,
    )


def upstream_request_headers(
    headers: Headers,
    *,
    upstream_host: str,
    host: str = "viewer",
    client_address: str | None = None,
) -> list[tuple[str, str]]:
    """Headers for the upstream request: hop-by-hop removed, Host chosen by the service's
    `host` setting, forwarding headers replaced by ours.

    `host`: "viewer" passes on the Host the viewer used (falling back to `upstream_host`
    when there is none), so apps that compare Origin with Host (Jupyter, Grafana,
    code-server) accept their own pages' WebSockets and POSTs, and absolute URLs they build
    point where the viewer is; "upstream" sends `upstream_host`; any other value is sent as
    it is. X-Forwarded-Proto is taken from the viewer only when it is exactly "http" or
    "https" (the native client declares its listener's scheme; browsers' worker their
    page's), else "https"; X-Forwarded-Host is the viewer's Host when valid.
    X-Forwarded-For and Forwarded name `client_address` (an IP address) and are sent only
    with one: Home Assistant refuses every request that has them from a proxy it was not
    told to trust."""
    viewer_host = next((v for n, v in headers if n.lower() == "host"), None)
    if viewer_host is not None and not valid_host(viewer_host):
        viewer_host = None
    if host == "viewer":
        sent_host = viewer_host or upstream_host
    elif host == "upstream":
        sent_host = upstream_host
    else:
        sent_host = host
    declared = next((v for n, v in headers if n.lower() == "x-forwarded-proto"), None)
    proto = declared if declared in ("http", "https") else "https"
    out = [
        (n, v)
        for n, v in strip_hop_by_hop(headers)
        if n.lower() != "host" and not _is_forwarding(n.lower())
    ]
    out.append(("Host", sent_host))
    out.append(("X-Forwarded-Proto", proto))
    if viewer_host:
        out.append(("X-Forwarded-Host", viewer_host))
    if client_address:
        node = f'"[{client_address}]"' if ":" in client_address else client_address
        forwarded = f"for={node};proto={proto}"
        if viewer_host:
            forwarded += f';host="{viewer_host}"'
        out.append(("X-Forwarded-For", client_address))
        out.append(("Forwarded", forwarded))
    return out


def _is_forwarding(name: str) -> bool:
    return name in FORWARDING or name.startswith("x-forwarded-")


# ----- response

def downstream_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers of the upstream's response as sent to the viewer: hop-by-hop removed, and any
    header a viewer would have to reject (a name that is not a token, a control character in
    the value) dropped rather than passed on."""
    return [
        (n, v)
        for n, v in strip_hop_by_hop(headers)
        if TOKEN.fullmatch(n) and not _CTL_IN_VALUE.search(v)
    ]


def has_body(method: str, status: int) -> bool:
    """Whether a response to `method` with `status` carries a body (RFC 9110 6.4.1)."""
    return not (method == "HEAD" or 100 <= status < 200 or status in (204, 304))
