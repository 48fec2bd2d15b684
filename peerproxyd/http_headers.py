"""Header rules for proxying, with no IO: what goes upstream, what comes back."""

from __future__ import annotations

from collections.abc import Iterable

from peerproxyd.protocol.heads import Headers

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
FORWARDING = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"})


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Header names listed in Connection: they are hop-by-hop too (RFC 9110 7.6.1)."""
    tokens = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    headers = list(headers)
    drop = HOP_BY_HOP | _connection_tokens(headers)
    return [(n, v) for n, v in headers if n.lower() not in drop]


def upstream_request_headers(headers: Headers, *, peer: str) -> list[tuple[str, str]]:
    """Headers for the upstream request: hop-by-hop and Host removed (the client library sets
    the upstream's Host), forwarding headers replaced by ours.

    X-Forwarded-Proto is taken from the viewer's side only when it is exactly "http" or
    "https" (the native client declares its listener's scheme); otherwise "https"."""
    host = next((v for n, v in headers if n.lower() == "host"), None)
    declared = next((v for n, v in headers if n.lower() == "x-forwarded-proto"), None)
    proto = declared if declared in ("http", "https") else "https"
    out = [
        (n, v)
        for n, v in strip_hop_by_hop(headers)
        if n.lower() != "host" and n.lower() not in FORWARDING
    ]
    forwarded = f'for="{peer}";proto={proto}'
    out.append(("X-Forwarded-For", peer))
    out.append(("X-Forwarded-Proto", proto))
    if host:
        out.append(("X-Forwarded-Host", host))
        forwarded += f';host="{host}"'
    out.append(("Forwarded", forwarded))
    return out


def downstream_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers of the upstream's response as sent to the viewer."""
    return strip_hop_by_hop(headers)


def has_body(method: str, status: int) -> bool:
    """Whether a response to `method` with `status` carries a body (RFC 9110 6.4.1)."""
    return not (method == "HEAD" or 100 <= status < 200 or status in (204, 304))
