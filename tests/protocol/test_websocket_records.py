"""WebSocket records (peerproxyd/protocol/websocket.py) against tests/vectors/websocket.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peerproxyd.protocol.websocket import (
    MAX_MESSAGE,
    Binary,
    Close,
    Record,
    RecordDecoder,
    RecordError,
    Text,
    close_record,
    encode,
)

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS: list[dict[str, Any]] = json.loads((VECTORS_DIR / "websocket.json").read_text())
VALID = [v for v in VECTORS if "records" in v]
INVALID = [v for v in VECTORS if "error" in v]


def from_json(r: dict[str, Any]) -> Record:
    if r["type"] == "text":
        return Text(r["text"])
    if r["type"] == "binary":
        return Binary(bytes.fromhex(r["hex"]))
    return Close(r["code"], r["reason"]) if "code" in r else Close()


def run(v: dict[str, Any], pieces: list[bytes]) -> list[Record]:
    decoder = RecordDecoder(v.get("max_message", MAX_MESSAGE))
    records = [r for piece in pieces for r in decoder.feed(piece)]
    if v["end"]:
        decoder.end()
    return records


def splits(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and in two at every offset (up to 40 of them)."""
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    out += [[data[:i], data[i:]] for i in range(1, min(len(data), 40))]
    return out


def test_the_vectors_file_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(VECTORS_DIR / "generate_websocket.py"), "--check"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert len(VALID) >= 10 and len(INVALID) >= 15


@pytest.mark.parametrize("v", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector_decodes_however_it_is_split(v: dict[str, Any]) -> None:
    data = bytes.fromhex(v["hex"])
    expected = [from_json(r) for r in v["records"]]
    for pieces in splits(data):
        assert run(v, pieces) == expected
    assert data.startswith(b"".join(encode(r) for r in expected))


@pytest.mark.parametrize("v", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_fails_with_its_reason_however_it_is_split(v: dict[str, Any]) -> None:
    data = bytes.fromhex(v["hex"])
    for pieces in splits(data):
        with pytest.raises(RecordError) as info:
            run(v, pieces)
        assert str(info.value) == v["error"]


def test_an_oversized_message_is_refused_before_its_payload_is_buffered() -> None:
    decoder = RecordDecoder(1000)
    with pytest.raises(RecordError, match="1001 bytes exceeds 1000"):
        decoder.feed(b"\x02\x00\x00\x03\xe9")
    assert decoder.buffered <= 5


def test_encode_refuses_what_may_not_be_sent() -> None:
    for code in (999, 1005, 1006, 1015, 5000):
        with pytest.raises(ValueError, match="invalid websocket close code"):
            encode(Close(code))
    with pytest.raises(ValueError, match="over 123 bytes"):
        encode(Close(1000, "x" * 124))
    with pytest.raises(ValueError, match="no reason"):
        encode(Close(None, "why"))


def test_close_record_turns_library_codes_into_sendable_ones() -> None:
    assert close_record(1000, "bye") == Close(1000, "bye")
    assert close_record(1006, "gone") == Close()
    assert close_record(None) == Close()
    # A reason over 123 bytes is cut at a character boundary.
    cut = close_record(4000, "é" * 100)
    assert cut.code == 4000 and cut.reason == "é" * 61
    assert len(encode(cut)) == 5 + 2 + 122
