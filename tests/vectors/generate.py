"""Regenerate tests/vectors/protocol.json, the golden messages of docs/protocol.md.

    python tests/vectors/generate.py          # rewrite protocol.json
    python tests/vectors/generate.py --check  # exit 1 if protocol.json is stale

Valid messages are built with Frame.__bytes__, invalid ones by hand. The expected error texts,
flag values and the header layout are written out here, not read back from the code under
test: the script stops if parse_frame() disagrees, so a change to the wire format shows up
as a failing generation and a diff of this file.

Each vector is one whole data-channel message:
  name, hex, valid, and either the decoded fields (stream_id, length, seq, flags, flag_names,
  kind, payload_hex, plus head / reset_code / reset_reason / window_increment where they
  apply) or `error`, the exact text of parse_frame's RemoteProtocolError.
Vectors with a `group` form a sequence: feed them in `index` order to one fresh
ProxyConnection of role `role`; `expect` lists the events each message yields and `replies`
the messages (hex) the connection then has to send.
Vectors with `packed: true` are packed messages (docs/protocol.md §1.1): `frames` (hex) is what
splitting `hex` yields, then `error` if the rest cannot be read; `pack` + `messages` show
greedy packing; packed groups run on a ProxyConnection with packing on.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from peerproxyd.errors import RemoteProtocolError  # noqa: E402
from peerproxyd.protocol import (  # noqa: E402
    DataReceived,
    Event,
    Flag,
    Frame,
    HeartbeatAcked,
    MessageDropped,
    ProxyConnection,
    RequestHead,
    RequestReceived,
    ResponseHead,
    ResponseReceived,
    Role,
    StreamReset,
    WindowUpdated,
    pack_messages,
    parse_frame,
    split_message,
)

OUTPUT = Path(__file__).resolve().parent / "protocol.json"

# The wire constants as docs/protocol.md states them; checked against the code below.
FLAG_VALUES = {
    "HEADERS": 0x0001,
    "FINAL": 0x0002,
    "END_HEADERS": 0x0004,
    "HEARTBEAT": 0x0008,
    "ACK": 0x0010,
    "RESET": 0x0020,
    "WINDOW": 0x0040,
}
H, F, E, HB, ACK, RST, WIN = FLAG_VALUES.values()
MAX_PAYLOAD = 16372

GET = RequestHead(
    method="GET",
    target="/",
    headers=(("accept", "*/*"),),
    service="web",
)
POST = RequestHead(
    method="POST",
    target="/api/items?sort=name",
    headers=(("content-type", "application/json"), ("content-length", "11")),
    service="web",
)
OK = ResponseHead(
    status=200,
    headers=(
        ("content-type", "text/plain"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
    ),
)
NO_CONTENT = ResponseHead(status=204, headers=())
WS = RequestHead(
    method="GET",
    target="/api/websocket?x=1",
    headers=(
        ("sec-websocket-protocol", "chat, superchat"),
        ("origin", "https://pi--ha.example.net"),
    ),
    service="ha",
    websocket=True,
)
SWITCHED = ResponseHead(status=101, headers=(("sec-websocket-protocol", "chat"),))
# WebSocket records (docs/protocol.md §12; tests/vectors/websocket.json has the record rules).
TEXT_HELLO = bytes.fromhex("010000000568656c6c6f")
BINARY_00FF = bytes.fromhex("020000000200ff")
CLOSE_1000_BYE = bytes.fromhex("080000000503e8627965")
CLOSE_NO_STATUS = bytes.fromhex("0800000000")
# A header block of two messages: 16372 bytes, then the rest.
BIG = RequestHead(
    method="GET",
    target="/big",
    headers=tuple((f"x-pad-{i}", "p" * 4000) for i in range(5)),
    service="web",
)


def header(stream_id: int, length: int, seq: int, flags: int) -> bytes:
    """The 12-byte header, packed by hand (not with frames.HEADER)."""
    return (
        stream_id.to_bytes(4, "big")
        + length.to_bytes(2, "big")
        + seq.to_bytes(4, "big")
        + flags.to_bytes(2, "big")
    )


def raw(stream_id: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    return header(stream_id, len(payload), seq, flags) + payload


def flag_names(flags: int) -> list[str]:
    return [name for name, value in FLAG_VALUES.items() if flags & value]


def valid(name: str, stream_id: int, seq: int, flags: int, payload: bytes = b"") -> dict[str, Any]:
    data = bytes(Frame(stream_id, seq, Flag(flags), payload))
    if data != raw(stream_id, seq, flags, payload):
        raise SystemExit(f"{name}: Frame.__bytes__ disagrees with the documented layout")
    frame = parse_frame(data)
    vector: dict[str, Any] = {
        "name": name,
        "hex": data.hex(),
        "valid": True,
        "stream_id": stream_id,
        "length": len(payload),
        "seq": seq,
        "flags": flags,
        "flag_names": flag_names(flags),
        "kind": frame.kind.value,
        "payload_hex": payload.hex(),
    }
    if flags & H and flags & E and seq == 0:  # a whole header block: the head, if it is valid
        try:
            obj = json.loads(payload)
            (ResponseHead if "status" in obj else RequestHead).decode(payload)
            vector["head"] = obj
        except ValueError:  # HeadError included
            pass
    if flags & RST:
        vector["reset_code"] = struct.unpack_from("!H", payload)[0]
        vector["reset_reason"] = payload[2:].decode()
    if flags & WIN:
        vector["window_increment"] = struct.unpack("!I", payload)[0]
    return vector


def invalid(name: str, data: bytes, error: str) -> dict[str, Any]:
    try:
        parse_frame(data)
    except RemoteProtocolError as exc:
        if str(exc) != error:
            raise SystemExit(f"{name}: parse_frame says {str(exc)!r}, expected {error!r}") from None
    else:
        raise SystemExit(f"{name}: parse_frame accepted an invalid message")
    return {"name": name, "hex": data.hex(), "valid": False, "error": error}


def frames() -> list[dict[str, Any]]:
    """Single messages: every flag, every kind, edge sizes."""
    body_max = bytes(i % 251 for i in range(MAX_PAYLOAD))
    reasons = [
        "",
        "request failed",
        "unexpected flags",
        "window exceeded",
        "too many concurrent streams (limit 128)",
        "cancelled by the browser",
        "header block on stream 1 exceeds 65536 bytes",
        "connection refused by 127.0.0.1:8080",
    ]
    vectors = [
        valid("request-get", 1, 0, H | E | F, GET.encode()),
        valid("request-post-head", 3, 0, H | E, POST.encode()),
        valid("response-head", 1, 0, H | E, OK.encode()),
        valid("response-no-content", 1, 0, H | E | F, NO_CONTENT.encode()),
        valid("headers-fragment", 1, 0, H, GET.encode()[:20]),
        valid("headers-fragment-empty", 1, 1, H),
        valid("headers-continuation-end", 1, 1, H | E, GET.encode()[20:]),
        valid("request-websocket", 3, 0, H | E, WS.encode()),
        valid("response-switching-protocols", 3, 0, H | E, SWITCHED.encode()),
        valid("websocket-text-record", 3, 1, 0, TEXT_HELLO),
        valid("websocket-binary-record", 3, 2, 0, BINARY_00FF),
        valid("websocket-close-record-final", 3, 3, F, CLOSE_1000_BYE),
        valid("websocket-close-no-status-final", 3, 3, F, CLOSE_NO_STATUS),
        valid("body", 3, 1, 0, b'{"name":"x"}'),
        valid("body-empty", 3, 2, 0),
        valid("body-final", 3, 2, F, b"bye"),
        valid("body-final-empty", 3, 3, F),
        valid("body-max", 1, 7, 0, body_max),
        valid("body-max-ids", 0xFFFFFFFF, 0xFFFFFFFF, 0, b"\x00\xff"),
        valid("heartbeat", 0, 1, HB),
        valid("heartbeat-ack", 0, 1, HB | ACK),
        valid("heartbeat-seq-0", 0, 0, HB),
        valid("heartbeat-ack-max-seq", 0, 0xFFFFFFFF, HB | ACK),
    ]
    for code, reason in enumerate(reasons):
        data = struct.pack("!H", code) + reason.encode()
        vectors.append(valid(f"reset-code-{code}", 1, 0, RST, data))
    vectors += [
        valid("reset-utf8-reason", 5, 0, RST, b"\x00\x05" + "abgebrochen: Grüße ✓".encode()),
        valid("reset-unknown-code", 5, 0, RST, struct.pack("!H", 0xFFFF) + b"?"),
        valid("window", 1, 0, WIN, struct.pack("!I", 262144)),
        valid("window-one", 1, 0, WIN, struct.pack("!I", 1)),
        valid("window-max", 1, 0, WIN, struct.pack("!I", 0xFFFFFFFF)),
    ]
    return vectors


def malformed() -> list[dict[str, Any]]:
    """Messages parse_frame must reject, each with its exact error text."""
    return [
        invalid("empty-message", b"", "message length 0 is less than the 12-byte header"),
        invalid(
            "short-11-bytes",
            header(1, 0, 0, H)[:11],
            "message length 11 is less than the 12-byte header",
        ),
        invalid(
            "too-long",
            header(1, MAX_PAYLOAD + 1, 1, 0) + bytes(MAX_PAYLOAD + 1),
            "message length 16385 exceeds the maximum of 16384",
        ),
        invalid(
            "length-field-too-big",
            header(1, 10, 1, 0) + b"hello",
            "payload length field 10 does not match the 5 payload bytes present",
        ),
        invalid(
            "length-field-too-small",
            header(1, 2, 1, 0) + b"hello",
            "payload length field 2 does not match the 5 payload bytes present",
        ),
        invalid(
            "length-field-without-payload",
            header(1, 1, 1, 0),
            "payload length field 1 does not match the 0 payload bytes present",
        ),
        invalid("unknown-flag-0x0080", raw(1, 1, 0x0080), "unknown flags 0x0080"),
        invalid("unknown-flag-0x8000", raw(1, 1, 0x8000 | H | E), "unknown flags 0x8000"),
        invalid("conflicting-headers-reset", raw(1, 0, H | RST, b"\x00\x00"),
                "conflicting flags 0x0021"),
        invalid("conflicting-heartbeat-window", raw(0, 0, HB | WIN), "conflicting flags 0x0048"),
        invalid("conflicting-reset-window", raw(1, 0, RST | WIN, bytes(4)),
                "conflicting flags 0x0060"),
        invalid("ack-alone", raw(1, 1, ACK), "ACK is only valid with HEARTBEAT"),
        invalid("ack-on-headers", raw(1, 0, H | E | ACK, b"{}"),
                "ACK is only valid with HEARTBEAT"),
        invalid(
            "final-on-reset",
            raw(1, 0, RST | F, b"\x00\x05"),
            "FINAL and END_HEADERS are not valid on control messages",
        ),
        invalid(
            "final-on-heartbeat",
            raw(0, 1, HB | F),
            "FINAL and END_HEADERS are not valid on control messages",
        ),
        invalid(
            "end-headers-on-window",
            raw(1, 0, WIN | E, struct.pack("!I", 1)),
            "FINAL and END_HEADERS are not valid on control messages",
        ),
        invalid("end-headers-on-body", raw(1, 1, E, b"x"),
                "END_HEADERS is only valid with HEADERS"),
        invalid(
            "final-headers-without-end-headers",
            raw(1, 0, H | F, b"{}"),
            "FINAL on HEADERS requires END_HEADERS",
        ),
        invalid("heartbeat-on-stream-1", raw(1, 1, HB), "HEARTBEAT must use stream 0"),
        invalid("heartbeat-ack-on-stream-7", raw(7, 1, HB | ACK), "HEARTBEAT must use stream 0"),
        invalid("heartbeat-with-payload", raw(0, 1, HB, b"\x00"),
                "HEARTBEAT must have an empty payload"),
        invalid("body-on-stream-0", raw(0, 0, 0, b"data"), "stream 0 is reserved for HEARTBEAT"),
        invalid("headers-on-stream-0", raw(0, 0, H | E, b"{}"),
                "stream 0 is reserved for HEARTBEAT"),
        invalid("reset-on-stream-0", raw(0, 0, RST, b"\x00\x01"),
                "stream 0 is reserved for HEARTBEAT"),
        invalid("window-on-stream-0", raw(0, 0, WIN, struct.pack("!I", 1)),
                "stream 0 is reserved for HEARTBEAT"),
        invalid(
            "reset-empty",
            raw(1, 0, RST),
            "RESET payload must hold at least a 2-byte error code",
        ),
        invalid(
            "reset-1-byte",
            raw(1, 0, RST, b"\x01"),
            "RESET payload must hold at least a 2-byte error code",
        ),
        invalid("reset-bad-utf8", raw(1, 0, RST, b"\x00\x01ok\xc3("),
                "RESET reason is not valid UTF-8"),
        invalid("reset-nonzero-seq", raw(1, 1, RST, b"\x00\x05"),
                "sequence number must be 0 on RESET and WINDOW"),
        invalid("window-nonzero-seq", raw(1, 9, WIN, struct.pack("!I", 1)),
                "sequence number must be 0 on RESET and WINDOW"),
        invalid("window-3-bytes", raw(1, 0, WIN, b"\x00\x00\x01"),
                "WINDOW payload must be exactly 4 bytes"),
        invalid("window-5-bytes", raw(1, 0, WIN, b"\x00\x00\x00\x01\x00"),
                "WINDOW payload must be exactly 4 bytes"),
        invalid("window-zero", raw(1, 0, WIN, bytes(4)), "WINDOW increment must not be 0"),
    ]


def event_json(event: Event) -> dict[str, Any]:
    """An event as JSON, for the `expect` lists of groups."""
    if isinstance(event, RequestReceived):
        return {
            "event": "RequestReceived",
            "stream_id": event.stream_id,
            "head": json.loads(event.head.encode()),
            "end_stream": event.end_stream,
        }
    if isinstance(event, ResponseReceived):
        return {
            "event": "ResponseReceived",
            "stream_id": event.stream_id,
            "head": json.loads(event.head.encode()),
            "end_stream": event.end_stream,
        }
    if isinstance(event, DataReceived):
        return {
            "event": "DataReceived",
            "stream_id": event.stream_id,
            "data_hex": event.data.hex(),
            "end_stream": event.end_stream,
        }
    if isinstance(event, StreamReset):
        return {
            "event": "StreamReset",
            "stream_id": event.stream_id,
            "code": int(event.code),
            "reason": event.reason,
            "remote": event.remote,
        }
    if isinstance(event, WindowUpdated):
        return {
            "event": "WindowUpdated",
            "stream_id": event.stream_id,
            "increment": event.increment,
        }
    if isinstance(event, HeartbeatAcked):
        return {"event": "HeartbeatAcked", "seq": event.seq}
    if isinstance(event, MessageDropped):
        return {"event": "MessageDropped", "reason": event.reason}
    raise TypeError(event)


def group(
    name: str,
    role: Role,
    steps: list[tuple[dict[str, Any], list[dict[str, Any]], list[bytes]]],
    *,
    packed: bool = False,
) -> list[dict[str, Any]]:
    """Vectors of one sequence. Each step: (vector, expected events, expected replies).

    The expectations are written by hand; the script stops if ProxyConnection disagrees.
    """
    conn = ProxyConnection(role, packed=packed)
    if role is Role.CLIENT:
        # A client accepts messages only for streams it opened: open as many as the group uses
        # (the JS tests do the same).
        for _ in range(max(step[0].get("stream_id", 0) for step in steps)):
            conn.open_stream(GET)
        conn.data_to_send()
    out = []
    for index, (vector, expect, replies) in enumerate(steps):
        events = [event_json(e) for e in conn.receive_message(bytes.fromhex(vector["hex"]))]
        sent = conn.data_to_send()
        if events != expect or sent != replies:
            raise SystemExit(f"{name}[{index}]: got {events} {sent}, expected {expect} {replies}")
        out.append(
            {
                **vector,
                "name": f"{name}/{index}",
                "group": name,
                "index": index,
                "role": role.value,
                "expect": expect,
                "replies": [r.hex() for r in replies],
            }
        )
    return out


def req(stream_id: int, head: RequestHead, end_stream: bool) -> dict[str, Any]:
    return {
        "event": "RequestReceived",
        "stream_id": stream_id,
        "head": json.loads(head.encode()),
        "end_stream": end_stream,
    }


def data(stream_id: int, payload: bytes, end_stream: bool) -> dict[str, Any]:
    return {
        "event": "DataReceived",
        "stream_id": stream_id,
        "data_hex": payload.hex(),
        "end_stream": end_stream,
    }


def reset(stream_id: int, code: int, reason: str) -> tuple[dict[str, Any], bytes]:
    """The StreamReset event for our own reset, and the RESET message that goes with it."""
    event = {"event": "StreamReset", "stream_id": stream_id, "code": code, "reason": reason,
             "remote": False}
    return event, raw(stream_id, 0, RST, struct.pack("!H", code) + reason.encode())


def sequences() -> list[dict[str, Any]]:
    """Groups: what a ProxyConnection does with a series of messages."""
    big = BIG.encode()
    post_head = valid("post-head", 1, 0, H | E, POST.encode())
    v: list[dict[str, Any]] = []

    # The worked example of docs/protocol.md, server side: a GET and a heartbeat.
    v += group("example-get-server", Role.SERVER, [
        (valid("get", 1, 0, H | E | F, GET.encode()), [req(1, GET, True)], []),
        (valid("heartbeat", 0, 1, HB), [], [raw(0, 1, HB | ACK)]),
    ])
    # A header block in two messages (over 16 KiB).
    v += group("request-multi-message-headers", Role.SERVER, [
        (valid("part-1", 1, 0, H, big[:MAX_PAYLOAD]), [], []),
        (valid("part-2", 1, 1, H | E | F, big[MAX_PAYLOAD:]), [req(1, BIG, True)], []),
    ])
    # A body whose messages arrive out of order: seq 2 waits for seq 1.
    v += group("request-reordered-body", Role.SERVER, [
        (post_head, [req(1, POST, False)], []),
        (valid("body-2", 1, 2, F, b"world"), [], []),
        (valid("body-1", 1, 1, 0, b"hello "), [data(1, b"hello ", False), data(1, b"world", True)],
         []),
    ])
    v += group("window-update", Role.SERVER, [
        (post_head, [req(1, POST, False)], []),
        (valid("window", 1, 0, WIN, struct.pack("!I", 1000)),
         [{"event": "WindowUpdated", "stream_id": 1, "increment": 1000}], []),
    ])
    v += group("heartbeat-acked", Role.CLIENT, [
        (valid("ack", 0, 42, HB | ACK), [{"event": "HeartbeatAcked", "seq": 42}], []),
    ])
    # Peer reset: then late messages of the stream vanish without a trace.
    v += group("reset-by-peer", Role.SERVER, [
        (post_head, [req(1, POST, False)], []),
        (valid("reset", 1, 0, RST, struct.pack("!H", 5) + b"bye"),
         [{"event": "StreamReset", "stream_id": 1, "code": 5, "reason": "bye", "remote": True}],
         []),
        (valid("late-body", 1, 1, 0, b"late"), [], []),
        (valid("late-window", 1, 0, WIN, struct.pack("!I", 1)), [], []),
        (invalid("late-malformed", raw(1, 2, ACK), "ACK is only valid with HEARTBEAT"),
         [{"event": "MessageDropped", "reason": "ACK is only valid with HEARTBEAT"}], []),
    ])
    # Stream-level errors: each resets only its stream, with the reason shown.
    event, rst = reset(1, 1, "duplicate sequence number 1 on stream 1")
    v += group("duplicate-seq", Role.SERVER, [
        (post_head, [req(1, POST, False)], []),
        (valid("body-1", 1, 1, 0, b"a"), [data(1, b"a", False)], []),
        (valid("body-1-again", 1, 1, 0, b"a"), [event], [rst]),
    ])
    event, rst = reset(1, 1, "sequence number 65 on stream 1 is beyond the reorder window"
                             " (next expected 1, window 64)")
    v += group("beyond-reorder-window", Role.SERVER, [
        (post_head, [req(1, POST, False)], []),
        (valid("body-64", 1, 64, 0, b"ok"), [], []),
        (valid("body-65", 1, 65, 0, b"too far"), [event], [rst]),
    ])
    event, rst = reset(1, 1, "FINAL at sequence number 2 on stream 1 is not last")
    v += group("final-not-last", Role.SERVER, [
        (post_head, [req(1, POST, False)], []),
        (valid("body-3", 1, 3, 0, b"c"), [], []),
        (valid("body-2-final", 1, 2, F, b"b"), [event], [rst]),
    ])
    event, rst = reset(1, 1, "sequence number 1 on stream 1 follows FINAL")
    v += group("body-after-final", Role.SERVER, [
        (valid("get", 1, 0, H | E | F, GET.encode()), [req(1, GET, True)], []),
        (valid("body-1", 1, 1, 0, b"x"), [event], [rst]),
    ])
    event, rst = reset(1, 1, "BODY not allowed on stream 1 in state idle")
    v += group("body-before-headers", Role.SERVER, [
        (valid("body-0", 1, 0, 0, b"x"), [event], [rst]),
    ])
    event, rst = reset(1, 1, "END_HEADERS not allowed on stream 1 in state body")
    v += group("second-header-block", Role.SERVER, [
        (post_head, [req(1, POST, False)], []),
        (valid("head-again", 1, 1, H | E, POST.encode()), [event], [rst]),
    ])
    event, rst = reset(2, 1, "stream id 2 reused")
    v += group("stream-id-reused", Role.SERVER, [
        (valid("get-3", 3, 0, H | E | F, GET.encode()), [req(3, GET, True)], []),
        (valid("get-2", 2, 0, H | E | F, GET.encode()), [event], [rst]),
    ])
    event, rst = reset(1, 1, "header block lacks service")
    v += group("head-missing-service", Role.SERVER, [
        (valid("head", 1, 0, H | E | F, b'{"method":"GET","target":"/","headers":[]}'),
         [event], [rst]),
    ])
    event, rst = reset(1, 1, "target '//evil.example/' is not in origin-form")
    bad_target = GET.encode().replace(b'"target":"/"', b'"target":"//evil.example/"')
    v += group("head-bad-target", Role.SERVER, [
        (valid("head", 1, 0, H | E | F, bad_target), [event], [rst]),
    ])
    event, rst = reset(1, 1, "conflicting flags 0x0021")
    v += group("malformed-on-open-stream", Role.SERVER, [
        (post_head, [req(1, POST, False)], []),
        (invalid("conflicting", raw(1, 0, H | RST, b"\x00\x00"), "conflicting flags 0x0021"),
         [event], [rst]),
    ])
    v += group("short-message-dropped", Role.SERVER, [
        (invalid("short", b"\x00\x00\x00\x01\x00", "message length 5 is less than the 12-byte"
                 " header"),
         [{"event": "MessageDropped", "reason": "message length 5 is less than the 12-byte"
           " header"}], []),
        (valid("get", 1, 0, H | E | F, GET.encode()), [req(1, GET, True)], []),
    ])
    v += websocket_sequences()
    return v


def websocket_sequences() -> list[dict[str, Any]]:
    """WebSocket streams (§12): records are body bytes; the head rules reset the stream."""
    ws_head = valid("head", 1, 0, H | E, WS.encode())
    v: list[dict[str, Any]] = []
    v += group("websocket-server", Role.SERVER, [
        (ws_head, [req(1, WS, False)], []),
        (valid("text", 1, 1, 0, TEXT_HELLO), [data(1, TEXT_HELLO, False)], []),
        (valid("close-final", 1, 2, F, CLOSE_1000_BYE), [data(1, CLOSE_1000_BYE, True)], []),
    ])
    # The client's view: 101, then a record split across two BODY messages, then CLOSE.
    v += group("websocket-client", Role.CLIENT, [
        (valid("switched", 1, 0, H | E, SWITCHED.encode()),
         [{"event": "ResponseReceived", "stream_id": 1, "head": json.loads(SWITCHED.encode()),
           "end_stream": False}], []),
        (valid("text-part-1", 1, 1, 0, TEXT_HELLO[:3]), [data(1, TEXT_HELLO[:3], False)], []),
        (valid("text-part-2", 1, 2, 0, TEXT_HELLO[3:]), [data(1, TEXT_HELLO[3:], False)], []),
        (valid("close-final", 1, 3, F, CLOSE_NO_STATUS), [data(1, CLOSE_NO_STATUS, True)], []),
    ])
    event, rst = reset(1, 1, "a websocket stream must not end its request with the head")
    v += group("websocket-head-with-final", Role.SERVER, [
        (valid("head", 1, 0, H | E | F, WS.encode()), [event], [rst]),
    ])
    event, rst = reset(1, 1, "a websocket stream must use GET")
    post = WS.encode().replace(b'"method":"GET"', b'"method":"POST"')
    v += group("websocket-not-get", Role.SERVER, [
        (valid("head", 1, 0, H | E, post), [event], [rst]),
    ])
    event, rst = reset(1, 1, "websocket must be true")
    false = WS.encode().replace(b'"websocket":true', b'"websocket":false')
    v += group("websocket-false", Role.SERVER, [
        (valid("head", 1, 0, H | E, false), [event], [rst]),
    ])
    return v


def split(name: str, frames: list[bytes], tail: bytes = b"", error: str | None = None,
          error_stream_id: int = 0) -> dict[str, Any]:
    """A packed message: whole frames, then `tail` that cannot be read (`error`)."""
    data = b"".join(frames) + tail
    got: list[bytes] = []
    try:
        got.extend(bytes(f) for f in split_message(data))
    except RemoteProtocolError as exc:
        if (str(exc), exc.stream_id) != (error, error_stream_id):
            raise SystemExit(f"{name}: split_message says {exc!r}, expected {error!r}") from None
    else:
        if error is not None:
            raise SystemExit(f"{name}: split_message accepted it")
    if got != frames:
        raise SystemExit(f"{name}: split_message gave {len(got)} frames, expected {len(frames)}")
    vector: dict[str, Any] = {"name": name, "packed": True, "valid": error is None,
                              "hex": data.hex(), "frames": [f.hex() for f in frames]}
    if error is None:
        if pack_messages(frames) != [data]:
            raise SystemExit(f"{name}: pack_messages does not give the message back")
    else:
        vector |= {"error": error, "error_stream_id": error_stream_id}
    return vector


def packed_message(frames: list[bytes]) -> dict[str, Any]:
    """A packed message as a group step (its `stream_id`: the highest of its frames)."""
    return {"packed": True, "hex": b"".join(frames).hex(),
            "stream_id": max(int.from_bytes(f[:4], "big") for f in frames)}


def packed_vectors() -> list[dict[str, Any]]:
    """§1.1: splitting, greedy packing, and connections with packing on."""
    get1 = raw(1, 0, H | E | F, GET.encode())
    head3, body3 = raw(3, 0, H | E, POST.encode()), raw(3, 1, F, b'{"name":"x"}')
    ok_head = raw(1, 0, H | E, OK.encode())
    kilo = bytes(i % 251 for i in range(1024))
    body_1k = raw(1, 1, F, kilo)
    hb1, hb2 = raw(0, 1, HB), raw(0, 2, HB)
    fill = raw(5, 1, 0, bytes(MAX_PAYLOAD - len(get1) - len(hb1)))  # makes exactly 16384
    v = [
        split("packed/one-frame", [get1]),
        split("packed/head-and-1k-body", [ok_head, body_1k]),
        split("packed/streams-and-control", [get1, head3, body3, hb1,
                                             raw(3, 0, WIN, struct.pack("!I", 1000)),
                                             raw(7, 0, RST, b"\x00\x05bye")]),
        split("packed/empty-payloads", [raw(1, 1, 0), hb1, raw(1, 2, F)]),
        split("packed/exactly-16384", [get1, hb1, fill]),
        split("packed/empty", [], b"", "message length 0 is less than the 12-byte header"),
        split("packed/too-long", [], get1 + hb1 + fill + b"x",
              "message length 16385 exceeds the maximum of 16384", 1),
        split("packed/length-past-end", [get1], header(3, 100, 1, 0) + b"hello",
              f"frame at offset {len(get1)}: payload length field 100 runs past the end of the"
              f" {len(get1) + 17}-byte message", 3),
        split("packed/first-length-past-end", [], header(1, 10, 1, 0) + b"hello",
              "frame at offset 0: payload length field 10 runs past the end of the 17-byte"
              " message", 1),
        split("packed/short-tail", [get1, hb1], b"\x00\x00\x00\x03\x00",
              f"frame at offset {len(get1) + 12}: 5 bytes are less than the 12-byte header"),
    ]
    a, b = raw(1, 1, 0, bytes(100)), raw(1, 2, 0, bytes(16200))
    c, d = raw(1, 3, F, bytes(100)), raw(0, 1, HB)
    out = [a + b, c + d]  # a+b is 16324 bytes; c would pass 16384
    if pack_messages([a, b, c, d]) != out:
        raise SystemExit("pack/greedy: pack_messages disagrees")
    v.append({"name": "pack/greedy", "packed": True, "pack": [f.hex() for f in (a, b, c, d)],
              "messages": [m.hex() for m in out]})
    # Whole messages through connections with packing on: each frame as its own message.
    bad = raw(1, 0, H | RST, b"\x00\x00")
    event, rst = reset(1, 1, "conflicting flags 0x0021")
    v += group("packed-server", Role.SERVER, [
        (packed_message([get1, head3, body3, hb1, hb2]),
         [req(1, GET, True), req(3, POST, False), data(3, b'{"name":"x"}', True)],
         [raw(0, 1, HB | ACK) + raw(0, 2, HB | ACK)]),
        (packed_message([raw(5, 0, H | E, POST.encode()), bad, raw(7, 0, H | E | F, GET.encode())]),
         [req(5, POST, False), event, req(7, GET, True)], [rst]),
    ], packed=True)
    past = f"frame at offset {len(get1)}: payload length field 100 runs past the end of the" \
           f" {len(get1) + 17}-byte message"
    event, rst = reset(3, 1, past)
    v += group("packed-unreadable-rest", Role.SERVER, [
        ({"packed": True, "hex": (get1 + header(3, 100, 1, 0) + b"hello").hex()},
         [req(1, GET, True), event], [rst]),
        (packed_message([raw(5, 0, H | E | F, GET.encode())]), [req(5, GET, True)], []),
        (packed_message([raw(0, 3, HB)]) | {"hex": (raw(0, 3, HB) + b"\x00\x00\x00\x07\x00").hex()},
         [{"event": "MessageDropped", "reason": "frame at offset 12: 5 bytes are less than the"
           " 12-byte header"}], [raw(0, 3, HB | ACK)]),
    ], packed=True)
    v += group("packed-client", Role.CLIENT, [
        (packed_message([ok_head, body_1k, raw(2, 0, WIN, struct.pack("!I", 1000))]),
         [{"event": "ResponseReceived", "stream_id": 1, "head": json.loads(OK.encode()),
           "end_stream": False}, data(1, kilo, True),
          {"event": "WindowUpdated", "stream_id": 2, "increment": 1000}], []),
    ], packed=True)
    return v


def build() -> list[dict[str, Any]]:
    for name, value in FLAG_VALUES.items():
        if Flag[name] != value:
            raise SystemExit(f"Flag.{name} is {int(Flag[name]):#06x}, documented {value:#06x}")
    vectors = frames() + malformed() + sequences() + packed_vectors()
    names = [v["name"] for v in vectors]
    if len(names) != len(set(names)):
        raise SystemExit("duplicate vector names")
    return vectors


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT} ({len(build())} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
