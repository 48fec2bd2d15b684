"""Property-based fuzzing of everything that parses network input, with no IO: the packet
decoder, the reassembler (ProxyConnection.receive_message over arbitrary message sequences),
the header JSON parser and the signaling message parser.

Each property: only the typed errors escape (ProtocolError subclasses, HeadError inside the
protocol layer, SignalingError), and what the peer can make us keep stays within the
configured limits after every message.
"""

from __future__ import annotations

import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerproxyd.errors import RemoteProtocolError
from peerproxyd.protocol import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
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
)
from peerproxyd.protocol.connection import RECENTLY_CLOSED
from peerproxyd.protocol.heads import HeadError
from peerproxyd.signaling.messages import (
    MAX_MESSAGE_SIZE as MAX_SIGNAL_SIZE,
)
from peerproxyd.signaling.messages import MESSAGE_TYPES
from tests.fuzz.targets import check_signaling

FUZZ = settings(max_examples=1000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EVENTS = (RequestReceived, ResponseReceived, DataReceived, StreamReset, WindowUpdated,
          HeartbeatAcked, MessageDropped)
H, E, F = Flag.HEADERS, Flag.END_HEADERS, Flag.FINAL
VALID_FLAGS = [0x0000, 0x0002, 0x0001, 0x0005, 0x0007, 0x0008, 0x0018, 0x0020, 0x0040]
GET = RequestHead(method="GET", target="/", headers=(("accept", "*/*"),), service="camera")
OK = ResponseHead(status=200, headers=(("content-type", "text/plain"),))
# Small limits, so that sequences of a few dozen messages can reach every bound.
LIMITS = Limits(max_streams=4, max_header_bytes=2048, reorder_window=8)


# ----- the packet decoder


def header(stream_id: int, length: int, seq: int, flags: int) -> bytes:
    return (stream_id.to_bytes(4, "big") + length.to_bytes(2, "big") + seq.to_bytes(4, "big")
            + flags.to_bytes(2, "big"))


u32 = st.integers(0, 2**32 - 1) | st.integers(0, 8)
frames_bytes = st.builds(
    lambda sid, seq, flags, payload, skew: header(
        sid, (len(payload) + skew) % 65536, seq, flags) + payload,
    u32, u32, st.sampled_from(VALID_FLAGS) | st.integers(0, 0xFFFF),
    st.binary(max_size=64) | st.integers(MAX_PAYLOAD - 2, MAX_PAYLOAD + 2).map(bytes),
    st.just(0) | st.integers(-3, 3),
)


@FUZZ
@given(st.binary(max_size=64) | frames_bytes)
def test_parse_frame_raises_only_remote_protocol_errors(data: bytes) -> None:
    try:
        frame = parse_frame(data)
    except RemoteProtocolError as exc:
        assert exc.code == ErrorCode.PROTOCOL_ERROR and str(exc)
        if len(data) >= HEADER_SIZE:
            assert exc.stream_id == int.from_bytes(data[:4], "big")
        return
    assert HEADER_SIZE <= len(data) <= MAX_MESSAGE_SIZE
    assert bytes(frame) == data  # what parses encodes back to the same bytes
    assert frame.flags in VALID_FLAGS


# ----- the header JSON parser

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
header_text = st.text(st.characters(codec="utf-8") | st.sampled_from("\r\n\x00\t \ud800"),
                      max_size=12)
heads_json = st.fixed_dictionaries(
    {},
    optional={
        "method": st.sampled_from(["GET", "POST", "G T", ""]) | json_values,
        "target": st.sampled_from(["/", "/a?b", "//x", "http://x/"]) | header_text | json_values,
        "headers": st.lists(st.lists(header_text, min_size=0, max_size=3), max_size=3)
        | json_values,
        "service": st.sampled_from(["camera", "Camera", "a--b", ""]) | json_values,
        "status": st.integers(0, 700) | json_values,
    },
).map(lambda d: json.dumps(d).encode())
head_blocks = (
    heads_json
    | st.binary(max_size=40)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)  # deep nesting
    | st.integers(4000, 5000).map(lambda n: b'{"status":' + b"9" * n + b"}")  # huge int
)


@settings(FUZZ, max_examples=800)
@given(head_blocks)
def test_head_parser_raises_only_head_errors(block: bytes) -> None:
    for cls in (RequestHead, ResponseHead):
        try:
            head = cls.decode(block)
        except HeadError as exc:
            assert str(exc)
            continue
        assert cls.decode(head.encode()) == head  # a valid head survives a round trip


tokens = st.text(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1,
                 max_size=10)
values = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=20)
request_heads = st.builds(
    RequestHead,
    method=tokens,
    target=st.text(st.characters(codec="utf-8", min_codepoint=0x21, exclude_characters="#\x7f"),
                   max_size=20)
    .map(lambda t: "/" + t.lstrip("/")),
    headers=st.lists(st.tuples(tokens, values), max_size=5).map(tuple),
    service=st.sampled_from(["camera", "ha", "a1-b2"]),
)


@settings(FUZZ, max_examples=400)
@given(request_heads)
def test_valid_request_heads_round_trip(head: RequestHead) -> None:
    assert RequestHead.decode(head.encode()) == head


# ----- the reassembler: arbitrary message sequences


payloads = (
    st.binary(max_size=24)
    | st.sampled_from([GET.encode(), OK.encode(), GET.encode()[:9], GET.encode()[9:], b"{}",
                       b"\x00\x05bye", b"\x00\x04\x00\x00", b"\xff\xff\xff\xff"])
    | st.integers(1, 4).map(lambda n: b"x" * (MAX_PAYLOAD // n))
)
messages = st.builds(
    lambda sid, seq, flags, payload: header(sid, len(payload), seq, flags) + payload,
    st.integers(0, 9) | st.just(2**32 - 1),
    st.integers(0, 12) | st.just(2**32 - 1),
    st.sampled_from(VALID_FLAGS) | st.integers(0, 0x7F),
    payloads,
) | st.binary(max_size=20)


def check_bounds(conn: ProxyConnection) -> None:
    """Everything the peer can make the connection keep, against the configured limits."""
    streams = conn._streams
    assert len(streams) <= conn.limits.max_streams
    for stream in streams.values():
        assert len(stream.pending) < conn.limits.reorder_window
        assert sum(len(f.payload) for f in stream.pending.values()) <= (
            (conn.limits.reorder_window - 1) * MAX_PAYLOAD)
        assert len(stream.header_block) <= conn.limits.max_header_bytes
        assert 0 <= stream.recv_window
    assert len(conn._closed) == len(conn._closed_set) <= RECENTLY_CLOSED


def feed(conn: ProxyConnection, sequence: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for data in sequence:
        got = conn.receive_message(data)  # must not raise
        assert all(isinstance(e, EVENTS) for e in got)
        for sent in conn.data_to_send():
            parse_frame(sent)  # we only ever send valid messages
        check_bounds(conn)
        events += got
    return events


@settings(FUZZ, max_examples=600)
@given(st.lists(messages, max_size=40))
def test_server_survives_any_message_sequence(sequence: list[bytes]) -> None:
    conn = ProxyConnection(Role.SERVER, LIMITS)
    feed(conn, sequence)
    # A new stream above every fuzzed id still gets through (or is refused as too many).
    sid = conn._highest_remote + 1
    if sid < 2**32:
        full = conn.open_streams >= LIMITS.max_streams
        (event,) = conn.receive_message(bytes(Frame(sid, 0, H | E | F, GET.encode())))
        if full:
            assert isinstance(event, StreamReset) and event.code == ErrorCode.REFUSED_STREAM
        else:
            assert event == RequestReceived(stream_id=sid, head=GET, end_stream=True)


@settings(FUZZ, max_examples=400)
@given(st.integers(0, 3), st.lists(messages, max_size=40))
def test_client_survives_any_message_sequence(opened: int, sequence: list[bytes]) -> None:
    conn = ProxyConnection(Role.CLIENT, LIMITS)
    for i in range(opened):
        conn.open_stream(GET, end_stream=i % 2 == 0)
    conn.data_to_send()
    feed(conn, sequence)
    sid = conn.open_stream(GET, end_stream=True)
    conn.data_to_send()
    assert conn.receive_message(bytes(Frame(sid, 0, H | E | F, OK.encode()))) == [
        ResponseReceived(stream_id=sid, head=OK, end_stream=True)
    ]


# Long sequences aimed at the bounds: many streams, early messages, big header blocks.
pressure = st.lists(
    st.builds(
        lambda sid, seq, flags, n: header(sid, n, seq, flags) + b"{" * n,
        st.integers(1, 40), st.integers(0, 10), st.sampled_from([0x0001, 0x0000, 0x0005]),
        st.sampled_from([0, 1, 1000, MAX_PAYLOAD]),
    ),
    min_size=20, max_size=120,
)


@settings(FUZZ, max_examples=150)
@given(pressure)
def test_memory_stays_within_limits_under_pressure(sequence: list[bytes]) -> None:
    feed(ProxyConnection(Role.SERVER, LIMITS), sequence)


# ----- the signaling message parser

signal_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(sorted(MESSAGE_TYPES)) | json_values,
        "to": st.sampled_from(["camera-pi", "c-0123456789abcdef", ""]) | json_values,
        "from": st.text(max_size=8) | json_values,
        "payload": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
        "device": st.text(max_size=8) | json_values,
        "secret": st.text(max_size=8) | json_values,
        "id": st.text(max_size=8) | json_values,
        "code": st.text(max_size=8) | json_values,
        "message": st.text(max_size=8) | json_values,
    },
).map(json.dumps)
signal_texts = (
    signal_objects
    | st.text(max_size=40)
    | json_values.map(json.dumps)
    | st.sampled_from(['{"type":"offer","to":"x","payload":NaN}', '{"type":"bye","to":Infinity}',
                       "[" * 5000 + "]" * 5000, '{"type":"bye","to":"x","n":' + "9" * 5000 + "}",
                       '"\\ud800"', '{"type":"hello","id":"\\udfff"}'])
)


@settings(FUZZ, max_examples=700)
@given(signal_texts, st.sampled_from([1024, MAX_SIGNAL_SIZE]))
def test_signaling_parser_raises_only_signaling_errors(text: str, max_size: int) -> None:
    check_signaling(text, max_size)
