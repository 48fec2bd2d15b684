"""Wire format: every golden vector round-trips or fails with its exact error text."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from peerproxyd.errors import RemoteProtocolError
from peerproxyd.protocol import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_MESSAGE_SIZE,
    MAX_PAYLOAD,
    ErrorCode,
    Flag,
    Frame,
    RequestHead,
    ResponseHead,
    pack_messages,
    parse_frame,
    split_message,
)

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS: list[dict[str, Any]] = json.loads(
    (VECTORS_DIR / "protocol.json").read_text(encoding="utf-8")
)
FRAMES = [v for v in VECTORS if not v.get("packed")]  # one frame per message
VALID = [v for v in FRAMES if v["valid"]]
INVALID = [v for v in FRAMES if not v["valid"]]


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("vectors_generate", VECTORS_DIR / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def roundtrip(data: bytes) -> Frame:
    frame = parse_frame(data)
    assert bytes(frame) == data
    return frame


def test_constants() -> None:
    assert (HEADER_SIZE, MAX_MESSAGE_SIZE, MAX_PAYLOAD) == (12, 16384, 16372)
    assert INITIAL_WINDOW == 1048576
    assert {f.name: f.value for f in Flag} == {
        "HEADERS": 0x0001,
        "FINAL": 0x0002,
        "END_HEADERS": 0x0004,
        "HEARTBEAT": 0x0008,
        "ACK": 0x0010,
        "RESET": 0x0020,
        "WINDOW": 0x0040,
    }
    assert [(c.name, c.value) for c in ErrorCode] == [
        ("NO_ERROR", 0),
        ("PROTOCOL_ERROR", 1),
        ("INTERNAL_ERROR", 2),
        ("FLOW_CONTROL_ERROR", 3),
        ("REFUSED_STREAM", 4),
        ("CANCEL", 5),
        ("HEADERS_TOO_LARGE", 6),
        ("UPSTREAM_ERROR", 7),
    ]


def test_header_layout_network_byte_order() -> None:
    data = bytes(Frame(0x01020304, 0x0A0B0C0D, Flag.HEADERS | Flag.END_HEADERS, b"xyz"))
    assert data.hex(" ") == "01 02 03 04 00 03 0a 0b 0c 0d 00 05 78 79 7a"


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    frame = roundtrip(data)
    assert frame.stream_id == vector["stream_id"]
    assert len(frame.payload) == vector["length"] == len(data) - HEADER_SIZE
    assert frame.seq == vector["seq"]
    assert int(frame.flags) == vector["flags"]
    assert [f.name for f in Flag if f in frame.flags] == vector["flag_names"]
    assert frame.kind.value == vector["kind"]
    assert frame.payload.hex() == vector["payload_hex"]
    assert frame.final == ("FINAL" in vector["flag_names"])
    if "head" in vector:
        head_type = ResponseHead if "status" in vector["head"] else RequestHead
        head = head_type.decode(frame.payload)
        assert json.loads(head.encode()) == vector["head"]
        assert head.encode() == frame.payload  # the encoding is canonical
    if "reset_code" in vector:
        assert frame.reset_fields() == (vector["reset_code"], vector["reset_reason"])
    if "window_increment" in vector:
        assert frame.window_increment() == vector["window_increment"]


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    with pytest.raises(RemoteProtocolError) as info:
        parse_frame(data)
    assert str(info.value) == vector["error"]
    assert info.value.code == ErrorCode.PROTOCOL_ERROR
    # The stream id is kept whenever the header could be read, so one stream can be reset.
    expected_stream = struct.unpack_from("!I", data)[0] if len(data) >= HEADER_SIZE else 0
    assert info.value.stream_id == expected_stream


def test_vectors_cover_the_protocol() -> None:
    """The file holds what docs/protocol.md promises: a guard against a thinned-out generator."""
    seen = 0
    for v in VALID:
        seen |= v["flags"]
    assert seen == 0x7F
    assert {v["kind"] for v in VALID} == {"headers", "body", "heartbeat", "reset", "window"}
    assert {v["reset_code"] for v in VALID if "reset_code" in v} >= {int(c) for c in ErrorCode}
    lengths = {v["length"] for v in VALID}
    assert 0 in lengths and MAX_PAYLOAD in lengths
    assert max(len(v["hex"]) // 2 for v in VALID) == MAX_MESSAGE_SIZE
    assert len({v["name"] for v in INVALID if "group" not in v}) >= 15
    assert len({v["error"] for v in INVALID}) >= 15
    multi = [v for v in VECTORS if v.get("group") == "request-multi-message-headers"]
    assert [v["flag_names"] for v in multi] == [["HEADERS"], ["HEADERS", "FINAL", "END_HEADERS"]]
    assert sum(len(v["payload_hex"]) // 2 for v in multi) > MAX_PAYLOAD


def test_groups_are_numbered_in_order() -> None:
    groups: dict[str, list[int]] = {}
    for v in VECTORS:
        if "group" in v:
            groups.setdefault(v["group"], []).append(v["index"])
            assert v["role"] in ("client", "server")
    assert groups
    for indexes in groups.values():
        assert indexes == list(range(len(indexes)))


def test_generator_output_matches_committed_file() -> None:
    committed = (VECTORS_DIR / "protocol.json").read_text(encoding="utf-8")
    assert load_generator().render() == committed, "run tests/vectors/generate.py"


def test_reset_reason_truncated_on_a_character_boundary() -> None:
    # 1 + 2 * 9000 bytes: a plain byte cut at 16370 would split an "é".
    frame = Frame.reset(1, ErrorCode.HEADERS_TOO_LARGE, "a" + "é" * 9000)
    data = bytes(frame)
    assert len(data) == MAX_MESSAGE_SIZE - 1
    assert roundtrip(data).reset_fields() == (6, "a" + "é" * 8184)


def test_control_constructors() -> None:
    assert bytes(Frame.heartbeat(7)).hex() == "00000000" "0000" "00000007" "0008"
    assert bytes(Frame.heartbeat(7, ack=True)).hex() == "00000000" "0000" "00000007" "0018"
    assert bytes(Frame.window(3, 65536)).hex() == "00000003" "0004" "00000000" "0040" "00010000"
    assert bytes(Frame.reset(3, ErrorCode.CANCEL, "x")).hex() == (
        "00000003" "0003" "00000000" "0020" "0005" "78"
    )


# ----- packed messages (docs/protocol.md §1.1)
SPLITS = [v for v in VECTORS if v.get("packed") and "frames" in v]
PACKS = [v for v in VECTORS if v.get("packed") and "pack" in v]


@pytest.mark.parametrize("vector", SPLITS, ids=[v["name"] for v in SPLITS])
def test_split_vector(vector: dict[str, Any]) -> None:
    frames: list[str] = []
    data = bytes.fromhex(vector["hex"])
    if vector["valid"]:
        frames = [bytes(f).hex() for f in split_message(data)]
        assert [m.hex() for m in pack_messages(bytes.fromhex(f) for f in frames)] == [
            vector["hex"]
        ]
    else:
        with pytest.raises(RemoteProtocolError) as info:
            for f in split_message(data):
                frames.append(bytes(f).hex())
        assert (str(info.value), info.value.stream_id) == (
            vector["error"], vector["error_stream_id"]
        )
    assert frames == vector["frames"]
    for f in frames:
        roundtrip(bytes.fromhex(f))


@pytest.mark.parametrize("vector", PACKS, ids=[v["name"] for v in PACKS])
def test_pack_vector(vector: dict[str, Any]) -> None:
    messages = pack_messages(bytes.fromhex(f) for f in vector["pack"])
    assert [m.hex() for m in messages] == vector["messages"]
    assert [bytes(f).hex() for m in messages for f in split_message(m)] == vector["pack"]


def test_pack_keeps_order_and_size() -> None:
    sizes = [12, 16384, 12, 100, 16372, 16272, 1, 12]
    frames = [bytes(Frame(i + 1, 0, Flag(0), bytes(max(n - 12, 0)))) for i, n in enumerate(sizes)]
    messages = pack_messages(frames)
    assert all(len(m) <= MAX_MESSAGE_SIZE for m in messages)
    assert [bytes(f) for m in messages for f in split_message(m)] == frames
    assert [len(m) for m in messages] == [12, 16384, 112, 16372, 16296]
    assert pack_messages([]) == []
    one = frames[1]
    assert pack_messages([one])[0] is one  # a frame alone is sent as it is, not copied
