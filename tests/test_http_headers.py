from peerproxyd.http_headers import (
    downstream_response_headers,
    has_body,
    strip_hop_by_hop,
    upstream_request_headers,
)


def test_hop_by_hop_and_connection_tokens_are_dropped():
    headers = [
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("X-Secret-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Accept", "text/html"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert strip_hop_by_hop(headers) == [
        ("Accept", "text/html"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_upstream_headers_replace_host_and_forwarding():
    headers = (
        ("Host", "camera-pi--camera.example.net"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"),
        ("Accept", "*/*"),
        ("Cookie", "s=1"),
    )
    out = upstream_request_headers(headers, peer="c-1234")
    assert out == [
        ("Accept", "*/*"),
        ("Cookie", "s=1"),
        ("X-Forwarded-For", "c-1234"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "camera-pi--camera.example.net"),
        ("Forwarded", 'for="c-1234";proto=https;host="camera-pi--camera.example.net"'),
    ]


def test_declared_proto_only_http_or_https():
    http = upstream_request_headers((("X-Forwarded-Proto", "http"),), peer="p")
    assert ("X-Forwarded-Proto", "http") in http
    bogus = upstream_request_headers((("X-Forwarded-Proto", "gopher"),), peer="p")
    assert ("X-Forwarded-Proto", "https") in bogus
    assert not any(v == "gopher" for _, v in bogus)


def test_response_keeps_content_length_and_encoding():
    out = downstream_response_headers(
        [("Content-Length", "5"), ("Content-Encoding", "gzip"), ("Connection", "close")]
    )
    assert out == [("Content-Length", "5"), ("Content-Encoding", "gzip")]


def test_has_body():
    assert has_body("GET", 200)
    assert not has_body("HEAD", 200)
    assert not has_body("GET", 204)
    assert not has_body("GET", 304)
    assert not has_body("GET", 101)
    assert has_body("POST", 404)
