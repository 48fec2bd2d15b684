from peerproxyd.protocol.http_headers import (
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


VIEWER_HEADERS = (
    ("Host", "camera-pi--camera.example.net"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("Forwarded", "for=6.6.6.6"),
    ("Accept", "*/*"),
    ("Cookie", "s=1"),
)
UPSTREAM = "127.0.0.1:8123"


def test_upstream_gets_the_viewers_host_and_no_client_address_by_default():
    """Origin and Host stay consistent for the app (Jupyter, Grafana); no X-Forwarded-For
    or Forwarded (Home Assistant refuses them from a proxy it does not trust), and the
    viewer's own are dropped."""
    out = upstream_request_headers(VIEWER_HEADERS, upstream_host=UPSTREAM)
    assert out == [
        ("Accept", "*/*"),
        ("Cookie", "s=1"),
        ("Host", "camera-pi--camera.example.net"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "camera-pi--camera.example.net"),
    ]


def test_host_modes():
    def host(mode: str, headers=VIEWER_HEADERS) -> str:
        out = upstream_request_headers(headers, upstream_host=UPSTREAM, host=mode)
        return dict(out)["Host"]

    assert host("viewer") == "camera-pi--camera.example.net"
    assert host("upstream") == UPSTREAM
    assert host("ha.internal:8123") == "ha.internal:8123"
    assert host("viewer", (("Accept", "*/*"),)) == UPSTREAM  # the viewer sent none
    assert host("viewer", (("Host", "bad host"),)) == UPSTREAM  # nor a valid one


def test_forwarded_for_names_the_viewers_ip_address():
    out = dict(upstream_request_headers(VIEWER_HEADERS, upstream_host=UPSTREAM,
                                        client_address="192.0.2.7"))
    assert out["X-Forwarded-For"] == "192.0.2.7"
    assert out["Forwarded"] == 'for=192.0.2.7;proto=https;host="camera-pi--camera.example.net"'
    v6 = dict(upstream_request_headers((), upstream_host=UPSTREAM, client_address="2001:db8::1"))
    assert (v6["X-Forwarded-For"], v6["Forwarded"]) == ("2001:db8::1",
                                                        'for="[2001:db8::1]";proto=https')


def test_service_settings_choose_host_and_forwarding():
    from peerproxyd.config import ServiceSettings
    from peerproxyd.protocol.http_headers import service_request_headers

    plain = ServiceSettings(upstream="http://127.0.0.1:8123")
    assert plain.upstream_host == UPSTREAM
    out = dict(service_request_headers(VIEWER_HEADERS, plain, "192.0.2.7"))
    assert "X-Forwarded-For" not in out and out["Host"] == "camera-pi--camera.example.net"
    trusting = ServiceSettings(upstream="http://[::1]:8443/x", host="upstream",
                               forwarded_for=True)
    out = dict(service_request_headers(VIEWER_HEADERS, trusting, "192.0.2.7"))
    assert (out["Host"], out["X-Forwarded-For"]) == ("[::1]:8443", "192.0.2.7")


def test_declared_proto_only_http_or_https():
    http = upstream_request_headers((("X-Forwarded-Proto", "http"),), upstream_host=UPSTREAM)
    assert ("X-Forwarded-Proto", "http") in http
    bogus = upstream_request_headers((("X-Forwarded-Proto", "gopher"),), upstream_host=UPSTREAM)
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
