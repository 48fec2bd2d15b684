"""ProxyConnection, sans-IO: a client and a server joined by a fake link, no event loop."""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerproxyd.errors import LocalProtocolError
from peerproxyd.names import SERVICE_NAME
from peerproxyd.protocol import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    DataReceived,
    ErrorCode,
    Event,
    Flag,
    Frame,
    HeartbeatAcked,
    Limits,
    MessageDropped,
    ProxyConnection,
    RequestHead,
    RequestReceived,
    ResponseHead,
    ResponseReceived,
    Role,
    StreamReset,
    WindowUpdated,
    parse_frame,
    split_message,
)
from peerproxyd.protocol.connection import RECENTLY_CLOSED

H, F, E = Flag.HEADERS, Flag.FINAL, Flag.END_HEADERS
EVENT_TYPES = (
    RequestReceived,
    ResponseReceived,
    DataReceived,
    StreamReset,
    WindowUpdated,
    HeartbeatAcked,
    MessageDropped,
)
VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "protocol.json").read_text(encoding="utf-8")
)

GET = RequestHead(method="GET", target="/index.html", headers=(("accept", "*/*"),), service="web")
POST = RequestHead(
    method="POST", target="/upload", headers=(("content-type", "application/octet-stream"),),
    service="files",
)
OK = ResponseHead(status=200, headers=(("content-type", "text/plain"),))


class Pair:
    """Two connections over a lossless in-order link (h11's ConnectionPair)."""

    def __init__(self, limits: Limits | None = None, *, server_limits: Limits | None = None):
        self.client = ProxyConnection(Role.CLIENT, limits)
        self.server = ProxyConnection(Role.SERVER, server_limits or limits)

    def to_server(self) -> list[Event]:
        return deliver(self.server, self.client.data_to_send())

    def to_client(self) -> list[Event]:
        return deliver(self.client, self.server.data_to_send())


def deliver(conn: ProxyConnection, messages: list[bytes]) -> list[Event]:
    return [event for message in messages for event in conn.receive_message(message)]


def msg(stream_id: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    return bytes(Frame(stream_id, seq, Flag(flags), payload))


def shape(messages: list[bytes]) -> list[tuple[int, int, int, int]]:
    """(stream id, seq, flags, payload length) of each message."""
    frames = [parse_frame(m) for m in messages]
    return [(f.stream_id, f.seq, int(f.flags), len(f.payload)) for f in frames]


def our_reset(stream_id: int, code: int, reason: str) -> tuple[StreamReset, bytes]:
    """The event of a reset we decided on, and the RESET message that must go with it."""
    event = StreamReset(stream_id=stream_id, code=code, reason=reason, remote=False)
    return event, bytes(Frame.reset(stream_id, code, reason))


def header_block(conn: ProxyConnection, stream_id: int, block: bytes, *, final: bool = True
                 ) -> list[list[Event]]:
    """Feed a raw header block in HEADERS messages; the events of each message."""
    chunks = [block[i : i + MAX_PAYLOAD] for i in range(0, len(block), MAX_PAYLOAD)] or [b""]
    out = []
    for seq, chunk in enumerate(chunks):
        last = seq == len(chunks) - 1
        flags = H | (E | (F if final else 0) if last else 0)
        out.append(conn.receive_message(msg(stream_id, seq, flags, chunk)))
    return out


# ----- requests and responses


def test_get_without_body() -> None:
    p = Pair()
    assert p.client.open_stream(GET, end_stream=True) == 1
    sent = p.client.data_to_send()
    assert shape(sent) == [(1, 0, H | E | F, len(GET.encode()))]
    assert deliver(p.server, sent) == [RequestReceived(stream_id=1, head=GET, end_stream=True)]
    assert p.server.data_to_send() == []
    p.server.send_response(1, OK, end_stream=True)
    assert p.to_client() == [ResponseReceived(stream_id=1, head=OK, end_stream=True)]
    assert (p.client.open_streams, p.server.open_streams) == (0, 0)
    assert p.client.open_stream(GET, end_stream=True) == 2


def test_post_with_multi_message_body() -> None:
    p = Pair()
    body = bytes(range(256)) * 200  # 51200 bytes: 3 full messages and 2084 bytes
    sid = p.client.open_stream(POST)
    p.client.send_body(sid, body, end_stream=True)
    sent = p.client.data_to_send()
    assert [s[1:] for s in shape(sent)] == [
        (0, H | E, len(POST.encode())),
        (1, 0, MAX_PAYLOAD),
        (2, 0, MAX_PAYLOAD),
        (3, 0, MAX_PAYLOAD),
        (4, F, 2084),
    ]
    events = deliver(p.server, sent)
    assert events[0] == RequestReceived(stream_id=1, head=POST, end_stream=False)
    assert [type(e) for e in events[1:]] == [DataReceived] * 4
    assert [e.end_stream for e in events[1:]] == [False, False, False, True]  # type: ignore
    assert b"".join(e.data for e in events[1:]) == body  # type: ignore

    p.server.send_response(sid, OK)
    p.server.send_body(sid, b"created ")
    p.server.send_body(sid, b"")
    p.server.send_body(sid, b"ok")
    p.server.end_stream(sid)
    assert p.to_client() == [
        ResponseReceived(stream_id=1, head=OK, end_stream=False),
        DataReceived(stream_id=1, data=b"created ", end_stream=False),
        DataReceived(stream_id=1, data=b"", end_stream=False),
        DataReceived(stream_id=1, data=b"ok", end_stream=False),
        DataReceived(stream_id=1, data=b"", end_stream=True),
    ]
    assert (p.client.open_streams, p.server.open_streams) == (0, 0)


def test_multi_message_header_block_is_reassembled() -> None:
    p = Pair()
    head = RequestHead(
        method="GET",
        target="/",
        headers=tuple((f"x-long-{i}", chr(0x41 + i) * 10000) for i in range(4)),
        service="web",
    )
    assert 2 * MAX_PAYLOAD < len(head.encode()) < 3 * MAX_PAYLOAD
    p.client.open_stream(head, end_stream=True)
    sent = p.client.data_to_send()
    assert [(s[1], s[2]) for s in shape(sent)] == [(0, H), (1, H), (2, H | E | F)]
    assert [p.server.receive_message(m) for m in sent] == [
        [],
        [],
        [RequestReceived(stream_id=1, head=head, end_stream=True)],
    ]
    response = ResponseHead(status=200, headers=(("x-big", "z" * 20000),))
    p.server.send_response(1, response, end_stream=True)
    wire = p.server.data_to_send()
    assert [(s[1], s[2]) for s in shape(wire)] == [(0, H), (1, H | E | F)]
    assert deliver(p.client, wire) == [
        ResponseReceived(stream_id=1, head=response, end_stream=True)
    ]


def test_repeated_headers_survive_in_order() -> None:
    p = Pair()
    p.client.open_stream(GET, end_stream=True)
    p.to_server()
    response = ResponseHead(
        status=302,
        headers=(
            ("Set-Cookie", "a=1; Path=/"),
            ("location", "/login"),
            ("set-cookie", "b=2"),
            ("Set-Cookie", "c=3; HttpOnly"),
        ),
    )
    p.server.send_response(1, response, end_stream=True)
    [event] = p.to_client()
    assert isinstance(event, ResponseReceived)
    assert event.head.headers == response.headers
    assert event.head.get("SET-COOKIE") == "a=1; Path=/"


# ----- limits


def test_header_block_over_limit_resets_with_headers_too_large() -> None:
    p = Pair()
    head = RequestHead(method="GET", target="/", headers=(("x-huge", "h" * 70000),), service="web")
    p.client.open_stream(head, end_stream=True)
    sent = p.client.data_to_send()
    assert len(sent) == 5  # 4 * 16372 = 65488 fits in 65536; the 5th message overflows
    reason = "header block on stream 1 exceeds 65536 bytes"
    event, rst = our_reset(1, ErrorCode.HEADERS_TOO_LARGE, reason)
    assert [p.server.receive_message(m) for m in sent] == [[], [], [], [], [event]]
    wire = p.server.data_to_send()
    assert wire == [rst]
    assert parse_frame(wire[0]).reset_fields() == (6, reason)
    assert deliver(p.client, wire) == [
        StreamReset(stream_id=1, code=ErrorCode.HEADERS_TOO_LARGE, reason=reason, remote=True)
    ]
    assert not p.client.is_open(1) and not p.server.is_open(1)


@pytest.mark.parametrize("slack, accepted", [(0, True), (-1, False)])
def test_header_limit_boundary(slack: int, accepted: bool) -> None:
    size = len(GET.encode())
    server = ProxyConnection(Role.SERVER, Limits(max_header_bytes=size + slack))
    events = header_block(server, 1, GET.encode())[-1]
    if accepted:
        assert events == [RequestReceived(stream_id=1, head=GET, end_stream=True)]
    else:
        reason = f"header block on stream 1 exceeds {size - 1} bytes"
        assert events == [our_reset(1, ErrorCode.HEADERS_TOO_LARGE, reason)[0]]


def test_too_many_streams_refused_others_still_work() -> None:
    p = Pair(server_limits=Limits(max_streams=2))
    ids = [p.client.open_stream(POST) for _ in range(3)]
    assert ids == [1, 2, 3]
    reason = "too many concurrent streams (limit 2)"
    event, rst = our_reset(3, ErrorCode.REFUSED_STREAM, reason)
    assert p.to_server() == [
        RequestReceived(stream_id=1, head=POST, end_stream=False),
        RequestReceived(stream_id=2, head=POST, end_stream=False),
        event,
    ]
    assert p.server.open_streams == 2
    wire = p.server.data_to_send()
    assert wire == [rst]
    assert deliver(p.client, wire) == [
        StreamReset(stream_id=3, code=ErrorCode.REFUSED_STREAM, reason=reason, remote=True)
    ]
    with pytest.raises(LocalProtocolError, match="stream 3 is not open"):
        p.client.send_body(3, b"x")
    # A late message of the refused stream is dropped without a second RESET.
    assert p.server.receive_message(msg(3, 1, 0, b"late")) == []

    for sid in (1, 2):
        p.client.send_body(sid, f"body {sid}".encode(), end_stream=True)
    assert p.to_server() == [
        DataReceived(stream_id=1, data=b"body 1", end_stream=True),
        DataReceived(stream_id=2, data=b"body 2", end_stream=True),
    ]
    p.server.send_response(1, OK, end_stream=True)
    assert p.to_client() == [ResponseReceived(stream_id=1, head=OK, end_stream=True)]
    assert p.server.open_streams == 1
    assert p.client.open_stream(GET, end_stream=True) == 4  # a slot is free again
    assert p.to_server() == [RequestReceived(stream_id=4, head=GET, end_stream=True)]


# ----- stream ids


def test_stream_id_reuse_resets_that_stream() -> None:
    server = ProxyConnection(Role.SERVER)
    get = GET.encode()
    assert server.receive_message(msg(5, 0, H | E | F, get)) == [
        RequestReceived(stream_id=5, head=GET, end_stream=True)
    ]
    event, rst = our_reset(3, ErrorCode.PROTOCOL_ERROR, "stream id 3 reused")
    assert server.receive_message(msg(3, 0, H | E | F, get)) == [event]
    assert server.data_to_send() == [rst]
    # Stream 5 is untouched and a higher id still opens.
    server.send_response(5, OK, end_stream=True)
    assert shape(server.data_to_send()) == [(5, 0, H | E | F, len(OK.encode()))]
    assert server.receive_message(msg(7, 0, H | E | F, get)) == [
        RequestReceived(stream_id=7, head=GET, end_stream=True)
    ]


def test_late_messages_for_closed_stream_are_dropped_silently() -> None:
    p = Pair()
    p.client.open_stream(GET, end_stream=True)
    p.to_server()
    p.server.send_response(1, OK, end_stream=True)
    p.to_client()
    assert p.server.open_streams == 0
    assert p.server.receive_message(msg(1, 1, 0, b"late")) == []
    assert p.server.receive_message(msg(1, 0, H | E | F, GET.encode())) == []
    assert p.client.receive_message(msg(1, 1, 0, b"late")) == []
    assert p.server.data_to_send() == [] and p.client.data_to_send() == []


def test_late_malformed_message_for_closed_stream_is_dropped() -> None:
    p = Pair()
    p.client.open_stream(GET, end_stream=True)
    p.to_server()
    p.server.send_response(1, OK, end_stream=True)
    p.to_client()
    bad = msg(1, 1, Flag.ACK)
    reason = "ACK is only valid with HEARTBEAT"
    assert p.server.receive_message(bad) == [MessageDropped(reason=reason)]
    assert p.client.receive_message(bad) == [MessageDropped(reason=reason)]
    assert p.server.data_to_send() == [] and p.client.data_to_send() == []


def test_closed_stream_ids_are_remembered_for_a_bounded_time() -> None:
    server = ProxyConnection(Role.SERVER)
    get = GET.encode()
    for sid in range(1, RECENTLY_CLOSED + 2):
        server.receive_message(msg(sid, 0, H | E | F, get))
        server.send_response(sid, OK, end_stream=True)
    server.data_to_send()
    assert server.receive_message(msg(2, 1, 0, b"late")) == []  # still remembered
    event, rst = our_reset(1, ErrorCode.PROTOCOL_ERROR, "stream id 1 reused")
    assert server.receive_message(msg(1, 1, 0, b"late")) == [event]  # forgotten: reuse
    assert server.data_to_send() == [rst]


def test_client_drops_messages_for_streams_it_never_opened() -> None:
    client = ProxyConnection(Role.CLIENT)
    assert client.receive_message(msg(1, 0, H | E, OK.encode())) == [
        MessageDropped(reason="stream 1 was never opened")
    ]
    assert client.data_to_send() == []


# ----- sequence numbers: errors reset one stream while another completes


@pytest.mark.parametrize(
    "final_first, bad, reason",
    [
        (False, msg(1, 1, 0, b"a"), "duplicate sequence number 1 on stream 1"),
        (
            False,
            msg(1, 66, 0, b"x"),
            "sequence number 66 on stream 1 is beyond the reorder window"
            " (next expected 2, window 64)",
        ),
        (True, msg(1, 3, 0, b"x"), "sequence number 3 on stream 1 follows FINAL"),
        (False, msg(1, 1, H | E, POST.encode()), "duplicate sequence number 1 on stream 1"),
    ],
    ids=["duplicate", "beyond-window", "after-final", "duplicate-headers"],
)
def test_sequence_error_resets_only_that_stream(final_first: bool, bad: bytes, reason: str) -> None:
    p = Pair()
    for sid in (1, 2):
        p.client.open_stream(POST)
        p.client.send_body(sid, b"a")
    if final_first:
        p.client.end_stream(1)
    p.to_server()
    event, rst = our_reset(1, ErrorCode.PROTOCOL_ERROR, reason)
    assert p.server.receive_message(bad) == [event]
    assert not p.server.is_open(1) and p.server.is_open(2)
    wire = p.server.data_to_send()
    assert wire == [rst]
    assert deliver(p.client, wire) == [
        StreamReset(stream_id=1, code=ErrorCode.PROTOCOL_ERROR, reason=reason, remote=True)
    ]
    assert not p.client.is_open(1)

    p.client.send_body(2, b"rest", end_stream=True)
    assert p.to_server() == [DataReceived(stream_id=2, data=b"rest", end_stream=True)]
    p.server.send_response(2, OK)
    p.server.send_body(2, b"done", end_stream=True)
    assert p.to_client() == [
        ResponseReceived(stream_id=2, head=OK, end_stream=False),
        DataReceived(stream_id=2, data=b"done", end_stream=True),
    ]
    assert (p.client.open_streams, p.server.open_streams) == (0, 0)


def test_duplicate_of_a_waiting_message_resets() -> None:
    server = ProxyConnection(Role.SERVER)
    server.receive_message(msg(1, 0, H | E, POST.encode()))
    assert server.receive_message(msg(1, 3, 0, b"early")) == []  # waits for seq 1 and 2
    event, rst = our_reset(1, ErrorCode.PROTOCOL_ERROR, "duplicate sequence number 3 on stream 1")
    assert server.receive_message(msg(1, 3, 0, b"early")) == [event]
    assert server.data_to_send() == [rst]


def test_out_of_order_messages_are_delivered_in_order() -> None:
    server = ProxyConnection(Role.SERVER)
    parts = [msg(1, 0, H | E, POST.encode())] + [
        msg(1, seq, F if seq == 63 else 0, bytes([seq])) for seq in range(1, 64)
    ]
    events: list[Event] = []
    for message in reversed(parts):  # seq 63 (FINAL) first: 63 ahead of next expected 0
        events += server.receive_message(message)
    assert events[0] == RequestReceived(stream_id=1, head=POST, end_stream=False)
    assert [(e.data, e.end_stream) for e in events[1:]] == [  # type: ignore[union-attr]
        (bytes([seq]), seq == 63) for seq in range(1, 64)
    ]


# ----- flow control


def test_sender_cannot_exceed_window() -> None:
    p = Pair()
    sid = p.client.open_stream(POST)
    with pytest.raises(LocalProtocolError) as info:
        p.client.send_body(sid, bytes(INITIAL_WINDOW + 1))
    assert str(info.value) == "1048577 bytes exceed stream 1's window of 1048576"
    assert p.client.send_window(sid) == INITIAL_WINDOW
    assert len(p.client.data_to_send()) == 1  # only the head went out
    p.client.send_body(sid, bytes(INITIAL_WINDOW))
    assert p.client.send_window(sid) == 0
    with pytest.raises(LocalProtocolError) as info:
        p.client.send_body(sid, b"x")
    assert str(info.value) == "1 bytes exceed stream 1's window of 0"
    p.client.end_stream(sid)  # an empty FINAL needs no window


def test_window_granted_after_consumed() -> None:
    p = Pair()
    sid = p.client.open_stream(POST)
    p.client.send_body(sid, bytes(INITIAL_WINDOW))
    events = p.to_server()
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == INITIAL_WINDOW
    quarter = INITIAL_WINDOW // 4
    p.server.consumed(sid, quarter - 1)
    assert p.server.data_to_send() == []
    p.server.consumed(sid, 1)
    wire = p.server.data_to_send()
    assert wire == [bytes(Frame.window(sid, quarter))]
    assert deliver(p.client, wire) == [WindowUpdated(stream_id=sid, increment=quarter)]
    assert p.client.send_window(sid) == quarter
    p.client.send_body(sid, bytes(quarter), end_stream=True)
    events = p.to_server()
    assert all(isinstance(e, DataReceived) for e in events)
    last = DataReceived(stream_id=sid, data=bytes(quarter % MAX_PAYLOAD), end_stream=True)
    assert events[-1] == last
    p.server.consumed(sid, INITIAL_WINDOW)  # the peer has finished: no more WINDOW messages
    assert p.server.data_to_send() == []


def test_receiver_resets_peer_that_overruns_window() -> None:
    p = Pair()
    sid = p.client.open_stream(POST)
    p.client.send_body(sid, bytes(INITIAL_WINDOW))
    sent = p.client.data_to_send()
    next_seq = len(sent)  # head + 65 body messages: seq 0..65
    deliver(p.server, sent)
    reason = "stream 1 sent 1 bytes with a window of 0"
    event, rst = our_reset(1, ErrorCode.FLOW_CONTROL_ERROR, reason)
    assert p.server.receive_message(msg(1, next_seq, 0, b"x")) == [event]
    assert p.server.data_to_send() == [rst]


def test_window_overflow_resets() -> None:
    p = Pair()
    sid = p.client.open_stream(POST)
    p.to_server()
    reason = "WINDOW overflows stream 1's send window"
    event, rst = our_reset(sid, ErrorCode.FLOW_CONTROL_ERROR, reason)
    assert p.client.receive_message(bytes(Frame.window(sid, 2**31 - INITIAL_WINDOW))) == [event]
    assert p.client.data_to_send() == [rst]


# ----- reset, heartbeat, garbage


def test_reset_from_peer_and_late_messages_ignored() -> None:
    p = Pair()
    sid = p.client.open_stream(POST)
    p.client.send_body(sid, b"part")
    p.to_server()
    p.client.reset_stream(sid, ErrorCode.CANCEL, "user aborted")
    assert not p.client.is_open(sid)
    assert p.to_server() == [
        StreamReset(stream_id=sid, code=ErrorCode.CANCEL, reason="user aborted", remote=True)
    ]
    assert p.server.data_to_send() == []  # no RESET back
    assert p.server.receive_message(msg(sid, 2, F, b"late")) == []
    assert p.server.receive_message(bytes(Frame.window(sid, 100))) == []
    assert p.server.receive_message(bytes(Frame.reset(sid, ErrorCode.CANCEL))) == []
    assert p.server.data_to_send() == []
    with pytest.raises(LocalProtocolError, match="stream 1 is not open"):
        p.server.send_response(sid, OK)
    p.client.reset_stream(sid)  # already gone: no-op
    assert p.client.data_to_send() == []


def test_heartbeat_answered_with_ack() -> None:
    p = Pair()
    assert p.client.heartbeat() == 1
    assert p.client.heartbeat() == 2
    assert p.to_server() == []
    wire = p.server.data_to_send()
    assert wire == [msg(0, 1, Flag.HEARTBEAT | Flag.ACK), msg(0, 2, Flag.HEARTBEAT | Flag.ACK)]
    assert deliver(p.client, wire) == [HeartbeatAcked(seq=1), HeartbeatAcked(seq=2)]
    assert p.client.data_to_send() == []  # an ACK is not answered


def test_short_message_dropped_connection_still_works() -> None:
    p = Pair()
    for conn in (p.server, p.client):
        assert conn.receive_message(b"\x00" * 11) == [
            MessageDropped(reason="message length 11 is less than the 12-byte header")
        ]
    assert p.server.data_to_send() == [] and p.client.data_to_send() == []
    p.client.open_stream(GET, end_stream=True)
    assert p.to_server() == [RequestReceived(stream_id=1, head=GET, end_stream=True)]


REQUEST_BLOCK = {"method": "GET", "target": "/", "headers": [["accept", "*/*"]], "service": "web"}


def block(**changes: Any) -> bytes:
    obj = {**REQUEST_BLOCK, **changes}
    for key in [k for k, v in obj.items() if v is None]:
        del obj[key]
    return json.dumps(obj).encode()


BIG_INT = b'{"method":"GET","target":"/","headers":[],"service":"web","x":' + b"1" * 5000 + b"}"


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"not json", "header block is not UTF-8 JSON: Expecting value: line 1 column 1 (char 0)"),
        (
            b"\xff{}",
            "header block is not UTF-8 JSON: 'utf-8' codec can't decode byte 0xff in position 0:"
            " invalid start byte",
        ),
        (b"", "header block is not UTF-8 JSON: Expecting value: line 1 column 1 (char 0)"),
        (b'["GET", "/"]', "header block must be a JSON object"),
        (b'{"method": "GET"}', "header block lacks headers, service, target"),
        (block(service=None), "header block lacks service"),
        (block(method="GE T"), "invalid method 'GE T'"),
        (block(method=""), "invalid method ''"),
        (block(method=5), "invalid method 5"),
        (block(target="http://x/"), "target 'http://x/' is not in origin-form"),
        (block(target="//evil"), "target '//evil' is not in origin-form"),
        (block(target="*"), "target '*' is not in origin-form"),
        (block(target="/a b"), "target '/a b' is not in origin-form"),
        (block(target="/a#frag"), "target '/a#frag' is not in origin-form"),
        (block(target="/a\r\nX: y"), "target '/a\\r\\nX: y' is not in origin-form"),
        (block(target="/\udc00"), "target '/\\udc00' is not in origin-form"),
        (block(target=["/"]), "target ['/'] is not in origin-form"),
        (block(headers=[["x", "a\r\nInjected: 1"]]), "header 'x' has CR, LF or NUL in its value"),
        (block(headers=[["x", "a\nb"]]), "header 'x' has CR, LF or NUL in its value"),
        (block(headers=[["x", "a\x00"]]), "header 'x' has CR, LF or NUL in its value"),
        (block(headers=[["x", "\ud800"]]), "header 'x' has a lone surrogate in its value"),
        (block(headers=[["bad name", "v"]]), "invalid header name 'bad name'"),
        (block(headers=[["x:", "v"]]), "invalid header name 'x:'"),
        (block(headers={"x": "v"}), "headers must be a list of [name, value] pairs"),
        (block(headers=[["x"]]), "headers must be a list of [name, value] pairs"),
        (block(headers=[["x", 1]]), "headers must be a list of [name, value] pairs"),
        (block(service="Web_1"), "invalid service name 'Web_1'"),
        (block(service=""), "invalid service name ''"),
        (block(service="-web"), "invalid service name '-web'"),
        (block(service="a" * 30), f"invalid service name {'a' * 30!r}"),
        (block(service="my--app"), "invalid service name 'my--app'"),
        (b"[" * 60000, "header block is nested too deeply"),
        (
            BIG_INT,
            "header block is not UTF-8 JSON: Exceeds the limit (4300 digits) for integer string"
            " conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase the"
            " limit",
        ),
    ],
)
def test_malformed_request_head_resets(payload: bytes, reason: str) -> None:
    server = ProxyConnection(Role.SERVER)
    event, rst = our_reset(1, ErrorCode.PROTOCOL_ERROR, reason)
    events = header_block(server, 1, payload)
    assert events[-1] == [event] and all(e == [] for e in events[:-1])
    assert server.data_to_send() == [rst]
    assert server.receive_message(msg(2, 0, H | E | F, GET.encode())) == [
        RequestReceived(stream_id=2, head=GET, end_stream=True)
    ]


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b'{"status": "200", "headers": []}', "invalid status '200'"),
        (b'{"status": 99, "headers": []}', "invalid status 99"),
        (b'{"status": 600, "headers": []}', "invalid status 600"),
        (b'{"status": true, "headers": []}', "invalid status True"),
        (b'{"status": 200}', "header block lacks headers"),
        (
            b'{"status": 200, "headers": [["a", "b\\r"]]}',
            "header 'a' has CR, LF or NUL in its value",
        ),
    ],
)
def test_malformed_response_head_resets(payload: bytes, reason: str) -> None:
    p = Pair()
    sid = p.client.open_stream(GET, end_stream=True)
    p.to_server()
    event, rst = our_reset(sid, ErrorCode.PROTOCOL_ERROR, reason)
    assert p.client.receive_message(msg(sid, 0, H | E, payload)) == [event]
    assert p.client.data_to_send() == [rst]


def test_valid_heads_at_the_edges_are_accepted() -> None:
    server = ProxyConnection(Role.SERVER)
    edge = block(method="M-SEARCH", target="/a/b?c=d&e=%20/f", service="a" * 29,
                 headers=[["X-!#$%&'*+.^_`|~", "tab\tand ünïcode"], ["empty", ""]])
    [event] = header_block(server, 1, edge)[-1]
    assert isinstance(event, RequestReceived)
    assert event.head == RequestHead(
        method="M-SEARCH",
        target="/a/b?c=d&e=%20/f",
        headers=(("X-!#$%&'*+.^_`|~", "tab\tand ünïcode"), ("empty", "")),
        service="a" * 29,
    )


# ----- docs/protocol.md


def spaced(message: bytes) -> str:
    m = message
    return f"{m[:4].hex()} {m[4:6].hex()} {m[6:10].hex()} {m[10:12].hex()} {m[12:].hex()}".strip()


def test_worked_example_in_docs() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text("utf-8")
    section = text.split("## 10. Worked example", 1)[1]
    documented = section.split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    p = Pair()
    head = RequestHead(method="GET", target="/", headers=(("accept", "*/*"),), service="web")
    lines: list[str] = []
    events: list[Event] = []

    def move(label: str, src: ProxyConnection, dst: ProxyConnection) -> None:
        for message in src.data_to_send():
            lines.append(f"{label} {spaced(message)}")
            events.extend(dst.receive_message(message))

    p.client.open_stream(head, end_stream=True)
    move("C>S", p.client, p.server)
    p.server.send_response(1, ResponseHead(status=200, headers=(("content-type", "text/plain"),)))
    p.server.send_body(1, b"hi", end_stream=True)
    move("S>C", p.server, p.client)
    p.client.heartbeat()
    move("C>S", p.client, p.server)
    move("S>C", p.server, p.client)
    p.client.open_stream(head)
    p.client.reset_stream(2, ErrorCode.CANCEL, "bye")
    move("C>S", p.client, p.server)
    move("S>C", p.server, p.client)
    assert lines == documented
    assert [type(e).__name__ for e in events] == [
        "RequestReceived", "ResponseReceived", "DataReceived", "HeartbeatAcked",
        "RequestReceived", "StreamReset",
    ]
    assert events[-1] == StreamReset(stream_id=2, code=5, reason="bye", remote=True)
    assert f"`{spaced(bytes(Frame.window(1, 262144)))}`" in section


# ----- the golden vectors, through a connection


def event_from_json(d: dict[str, Any]) -> Event:
    kind = d["event"]
    if kind == "RequestReceived":
        h = d["head"]
        head = RequestHead(method=h["method"], target=h["target"], service=h["service"],
                           headers=tuple((n, v) for n, v in h["headers"]),
                           websocket=h.get("websocket", False))
        return RequestReceived(stream_id=d["stream_id"], head=head, end_stream=d["end_stream"])
    if kind == "ResponseReceived":
        h = d["head"]
        response = ResponseHead(status=h["status"], headers=tuple((n, v) for n, v in h["headers"]))
        return ResponseReceived(stream_id=d["stream_id"], head=response, end_stream=d["end_stream"])
    if kind == "DataReceived":
        return DataReceived(stream_id=d["stream_id"], data=bytes.fromhex(d["data_hex"]),
                            end_stream=d["end_stream"])
    if kind == "StreamReset":
        return StreamReset(stream_id=d["stream_id"], code=d["code"], reason=d["reason"],
                           remote=d["remote"])
    if kind == "WindowUpdated":
        return WindowUpdated(stream_id=d["stream_id"], increment=d["increment"])
    if kind == "HeartbeatAcked":
        return HeartbeatAcked(seq=d["seq"])
    assert kind == "MessageDropped"
    return MessageDropped(reason=d["reason"])


GROUPS: dict[str, list[dict[str, Any]]] = {}
for _vector in VECTORS:
    if "group" in _vector:
        GROUPS.setdefault(_vector["group"], []).append(_vector)


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_vector_group(name: str) -> None:
    vectors = sorted(GROUPS[name], key=lambda v: v["index"])
    conn = ProxyConnection(Role(vectors[0]["role"]), packed=vectors[0].get("packed", False))
    if conn.role is Role.CLIENT:  # a client accepts messages only for streams it opened
        for _ in range(max(v.get("stream_id", 0) for v in vectors)):
            conn.open_stream(RequestHead(method="GET", target="/", service="web"))
        conn.data_to_send()
    for v in vectors:
        events = conn.receive_message(bytes.fromhex(v["hex"]))
        assert events == [event_from_json(e) for e in v["expect"]], v["name"]
        assert [m.hex() for m in conn.data_to_send()] == v["replies"], v["name"]


STANDALONE_INVALID = [
    v for v in VECTORS if not v.get("valid", True) and "group" not in v and not v.get("packed")
]


@pytest.mark.parametrize("vector", STANDALONE_INVALID, ids=[v["name"] for v in STANDALONE_INVALID])
def test_invalid_vector_resets_its_stream_or_is_dropped(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    stream_id = struct.unpack_from("!I", data)[0] if len(data) >= HEADER_SIZE else 0
    server = ProxyConnection(Role.SERVER)
    if stream_id:
        event, rst = our_reset(stream_id, ErrorCode.PROTOCOL_ERROR, vector["error"])
        assert server.receive_message(data) == [event]
        assert server.data_to_send() == [rst]
    else:
        assert server.receive_message(data) == [MessageDropped(reason=vector["error"])]
        assert server.data_to_send() == []
    client = ProxyConnection(Role.CLIENT)  # has no open stream to blame
    assert client.receive_message(data) == [MessageDropped(reason=vector["error"])]
    assert client.data_to_send() == []


# ----- properties

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
header_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"),
    max_size=40,
)
header_lists = st.lists(
    st.tuples(st.sampled_from(["Set-Cookie", "set-cookie", "x-dup"]) | tokens, header_values),
    max_size=12,
)
big_header = st.integers(0, 40000).map(lambda n: (("x-big", "b" * n),) if n else ())
targets = st.builds(
    lambda rest: "/" + rest,
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs",),
            blacklist_characters="#\x7f" + "".join(map(chr, range(33))),
        ),
        max_size=30,
    ),
).filter(lambda t: not t.startswith("//"))
services = st.from_regex(SERVICE_NAME, fullmatch=True).filter(lambda s: "--" not in s)
request_heads = st.builds(
    lambda method, target, headers, big, service: RequestHead(
        method=method, target=target, headers=tuple(headers) + big, service=service
    ),
    st.sampled_from(["GET", "POST", "PUT", "DELETE"]) | tokens,
    targets,
    header_lists,
    big_header,
    services,
)
response_heads = st.builds(
    lambda status, headers, big: ResponseHead(status=status, headers=tuple(headers) + big),
    st.integers(100, 599),
    header_lists,
    big_header,
)
body_sizes = (
    st.integers(0, 64)
    | st.sampled_from([MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 3 * MAX_PAYLOAD, 100_000])
    | st.integers(0, 100_000)
)


@dataclass
class Message:
    """One direction of one exchange: a head, a body cut into send_body() calls."""

    head: RequestHead | ResponseHead
    body: bytes
    cuts: list[int]
    end_on_head: bool  # an empty body may end with the head itself


@st.composite
def messages(draw: st.DrawFn, heads: st.SearchStrategy[Any]) -> Message:
    head = draw(heads)
    size = draw(body_sizes)
    body = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=6)))
    return Message(head, body, cuts, size == 0 and draw(st.booleans()))


def send(conn: ProxyConnection, sid: int, m: Message) -> None:
    edges = [0, *m.cuts, len(m.body)]
    pieces = [m.body[a:b] for a, b in zip(edges, edges[1:])]
    for i, piece in enumerate(pieces):
        conn.send_body(sid, piece, end_stream=i == len(pieces) - 1)


def scramble(wire: list[bytes], rnd: random.Random) -> list[bytes]:
    """Shuffle each stream's messages within blocks of at most 64, then interleave streams.

    A stream's first message never overtakes a lower stream's first one: the server takes an
    id below the highest it has seen for a reused one (see docs/protocol.md).
    """
    per_stream: dict[int, list[bytes]] = {}
    for m in wire:
        per_stream.setdefault(struct.unpack_from("!I", m)[0], []).append(m)
    queues = []
    for sid in sorted(per_stream):
        msgs, out, i = per_stream[sid], [], 0
        while i < len(msgs):
            block_ = msgs[i : i + rnd.randint(1, 64)]
            rnd.shuffle(block_)
            out += block_
            i += len(block_)
        queues.append(out)
    merged: list[bytes] = []
    started = 0
    while any(queues):
        choices = [i for i in range(min(started + 1, len(queues))) if queues[i]]
        i = rnd.choice(choices)
        started = max(started, i + 1)
        merged.append(queues[i].pop(0))
    return merged


def check_received(events: list[Event], sid: int, m: Message, head_type: type) -> None:
    mine = [e for e in events if getattr(e, "stream_id", None) == sid]
    first, rest = mine[0], mine[1:]
    assert type(first) is head_type and first.head == m.head  # type: ignore[union-attr]
    assert first.end_stream == m.end_on_head  # type: ignore[union-attr]
    assert all(type(e) is DataReceived for e in rest)
    assert b"".join(e.data for e in rest) == m.body  # type: ignore[union-attr]
    ends = [e.end_stream for e in rest]  # type: ignore[union-attr]
    assert ends == [False] * (len(rest) - 1) + [True] * bool(rest)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(
    st.lists(st.tuples(messages(request_heads), messages(response_heads)), min_size=1, max_size=4),
    st.randoms(use_true_random=False),
)
def test_exchanges_survive_reordering(
    exchanges: list[tuple[Message, Message]], rnd: random.Random
) -> None:
    p = Pair()
    for request, _ in exchanges:
        sid = p.client.open_stream(request.head, end_stream=request.end_on_head)  # type: ignore
        if not request.end_on_head:
            send(p.client, sid, request)
    events = deliver(p.server, scramble(p.client.data_to_send(), rnd))
    assert all(type(e) in (RequestReceived, DataReceived) for e in events)
    for sid, (request, _) in enumerate(exchanges, start=1):
        check_received(events, sid, request, RequestReceived)

    for sid, (_, response) in enumerate(exchanges, start=1):
        p.server.send_response(sid, response.head, end_stream=response.end_on_head)  # type: ignore
        if not response.end_on_head:
            send(p.server, sid, response)
    events = deliver(p.client, scramble(p.server.data_to_send(), rnd))
    assert all(type(e) in (ResponseReceived, DataReceived) for e in events)
    for sid, (_, response) in enumerate(exchanges, start=1):
        check_received(events, sid, response, ResponseReceived)
    assert (p.client.open_streams, p.server.open_streams) == (0, 0)


def check_only_events(conn: ProxyConnection, data: bytes) -> None:
    """receive_message never raises; what we send always parses; our resets are on the wire."""
    events = conn.receive_message(data)
    assert isinstance(events, list) and all(isinstance(e, EVENT_TYPES) for e in events)
    sent = [parse_frame(f) for m in conn.data_to_send()
            for f in (split_message(m) if conn.packed else [m])]
    for e in events:
        if isinstance(e, StreamReset) and not e.remote:
            assert any(f.flags == Flag.RESET and f.stream_id == e.stream_id
                       and f.reset_fields()[0] == e.code for f in sent)


def primed(role: Role, *, packed: bool = False) -> ProxyConnection:
    """A connection with a stream or two open, so garbage can hit live state."""
    conn = ProxyConnection(role, packed=packed)
    if role is Role.CLIENT:
        conn.open_stream(POST)
        conn.open_stream(GET, end_stream=True)
    else:
        conn.receive_message(msg(1, 0, H | E, POST.encode()))
        conn.receive_message(msg(2, 0, H, GET.encode()[:10]))
    conn.data_to_send()
    return conn


FUZZ = settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
roles = st.sampled_from([Role.CLIENT, Role.SERVER])


@FUZZ
@given(roles, st.lists(st.binary(max_size=40), max_size=8))
def test_fuzz_random_bytes(role: Role, inputs: list[bytes]) -> None:
    conn = primed(role)
    for data in inputs:
        check_only_events(conn, data)


payloads = st.binary(max_size=24) | st.sampled_from(
    [GET.encode(), POST.encode(), OK.encode(), b"\x00\x01", b"\x00\x00\x00\x01", b"{}", b"["]
)
crafted = st.builds(
    lambda sid, seq, flags, payload, skew: (
        sid.to_bytes(4, "big")
        + ((len(payload) + skew) % 65536).to_bytes(2, "big")
        + seq.to_bytes(4, "big")
        + flags.to_bytes(2, "big")
        + payload
    ),
    st.integers(0, 6),
    st.integers(0, 70) | st.just(2**32 - 1),
    st.integers(0, 0x7F) | st.integers(0, 0xFFFF),
    payloads,
    st.just(0) | st.integers(-2, 2),
)


@FUZZ
@given(roles, st.lists(crafted, min_size=1, max_size=12))
def test_fuzz_crafted_headers_connection_survives(role: Role, inputs: list[bytes]) -> None:
    conn = primed(role)
    for data in inputs:
        check_only_events(conn, data)
    if role is Role.SERVER:  # ids above the fuzzed ones still open normally
        assert conn.receive_message(msg(100, 0, H | E | F, GET.encode())) == [
            RequestReceived(stream_id=100, head=GET, end_stream=True)
        ]
    else:
        sid = conn.open_stream(GET, end_stream=True)
        conn.data_to_send()
        assert conn.receive_message(msg(sid, 0, H | E | F, OK.encode())) == [
            ResponseReceived(stream_id=sid, head=OK, end_stream=True)
        ]


@FUZZ
@given(roles, st.lists(st.lists(crafted, min_size=1, max_size=6), min_size=1, max_size=6),
       st.binary(max_size=14))
def test_fuzz_packed_messages_connection_survives(
    role: Role, messages: list[list[bytes]], tail: bytes
) -> None:
    """Packing on: crafted frames back to back, some messages with bytes that cannot be read."""
    conn = primed(role, packed=True)
    for i, frames in enumerate(messages):
        check_only_events(conn, b"".join(frames) + (tail if i % 2 else b""))


CORPUS = [bytes.fromhex(v["hex"]) for v in VECTORS if len(v.get("hex", "x" * 2000)) < 2000]


@FUZZ
@given(
    roles,
    st.sampled_from(CORPUS),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 300),
    st.binary(max_size=8),
)
def test_fuzz_mutated_vectors(
    role: Role, base: bytes, flips: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    data = bytearray(base)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    conn = primed(role)
    check_only_events(conn, bytes(data[:cut]) + tail)
    check_only_events(conn, bytes(data))


def test_token_with_trailing_newline_is_rejected():
    """`$` matches before a final newline: names and methods use fullmatch."""
    from peerproxyd.protocol.heads import HeadError, RequestHead

    for head in (
        b'{"method":"GET\\n","target":"/","headers":[],"service":"camera"}',
        b'{"method":"GET","target":"/","headers":[["X-A\\n","1"]],"service":"camera"}',
    ):
        with pytest.raises(HeadError):
            RequestHead.decode(head)
