"""Regenerate tests/vectors/websocket.json, the WebSocket record vectors of docs/protocol.md §12.

    python tests/vectors/generate_websocket.py          # rewrite websocket.json
    python tests/vectors/generate_websocket.py --check  # exit 1 if websocket.json is stale

Each vector is the body bytes of one direction of a WebSocket stream:
  name, hex, end (FINAL follows the bytes), max_message (the decoder's limit, when not the
  default 16 MiB), and either `records` (what a decoder yields, in order; encoding them gives
  `hex`, or its start when a record is still incomplete) or `error` (the exact reason of the
  PROTOCOL_ERROR reset).
A record is {"type": "text", "text"}, {"type": "binary", "hex"} or {"type": "close"} with
"code" and "reason" when it has a status. The bytes are written out by hand here; the
script stops if peerproxyd/protocol/websocket.py disagrees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from peerproxyd.protocol.websocket import (  # noqa: E402
    Binary,
    Close,
    Record,
    RecordDecoder,
    RecordError,
    Text,
    encode,
)

OUTPUT = Path(__file__).resolve().parent / "websocket.json"


def prefix(kind: int, length: int) -> bytes:
    return bytes([kind]) + length.to_bytes(4, "big")


def as_json(record: Record) -> dict[str, Any]:
    match record:
        case Text(text=text):
            return {"type": "text", "text": text}
        case Binary(data=data):
            return {"type": "binary", "hex": data.hex()}
        case Close(code=None):
            return {"type": "close"}
        case Close(code=code, reason=reason):
            return {"type": "close", "code": code, "reason": reason}
    raise TypeError(record)


def decode(data: bytes, end: bool, max_message: int) -> list[Record]:
    decoder = RecordDecoder(max_message)
    records = decoder.feed(data)
    if end:
        decoder.end()
    return records


def ok(name: str, data: bytes, records: list[Record], *, end: bool = False,
       max_message: int | None = None) -> dict[str, Any]:
    complete = b"".join(encode(r) for r in records)
    if not data.startswith(complete) or (data != complete and end):
        raise SystemExit(f"{name}: encode() disagrees with the documented bytes")
    got = decode(data, end, max_message or 16 * 1024 * 1024)
    if got != records:
        raise SystemExit(f"{name}: decoded {got}, expected {records}")
    vector: dict[str, Any] = {"name": name, "hex": data.hex(), "end": end,
                              "records": [as_json(r) for r in records]}
    if max_message is not None:
        vector["max_message"] = max_message
    return vector


def bad(name: str, data: bytes, error: str, *, end: bool = False,
        max_message: int | None = None) -> dict[str, Any]:
    try:
        decode(data, end, max_message or 16 * 1024 * 1024)
    except RecordError as exc:
        if str(exc) != error:
            raise SystemExit(f"{name}: decoder says {str(exc)!r}, expected {error!r}") from None
    else:
        raise SystemExit(f"{name}: the decoder accepted it")
    vector: dict[str, Any] = {"name": name, "hex": data.hex(), "end": end, "error": error}
    if max_message is not None:
        vector["max_message"] = max_message
    return vector


def build() -> list[dict[str, Any]]:
    hello = prefix(1, 5) + b"hello"
    utf8 = "grüße ✓ 🙂".encode()
    close_bye = prefix(8, 5) + b"\x03\xe8bye"
    reason_123 = "r" * 123
    return [
        ok("text", hello, [Text("hello")]),
        ok("text-empty", prefix(1, 0), [Text("")]),
        ok("text-utf8", prefix(1, len(utf8)) + utf8, [Text("grüße ✓ 🙂")]),
        ok("binary", prefix(2, 2) + b"\x00\xff", [Binary(b"\x00\xff")]),
        ok("binary-empty", prefix(2, 0), [Binary(b"")]),
        ok("close-1000-bye", close_bye, [Close(1000, "bye")], end=True),
        ok("close-no-status", prefix(8, 0), [Close()], end=True),
        ok("close-4999-empty-reason", prefix(8, 2) + b"\x13\x87", [Close(4999, "")], end=True),
        ok("close-reason-123-bytes", prefix(8, 125) + b"\x0f\xa0" + reason_123.encode(),
           [Close(4000, reason_123)], end=True),
        ok("conversation", hello + prefix(2, 3) + b"abc" + prefix(1, 1) + b"!" + close_bye,
           [Text("hello"), Binary(b"abc"), Text("!"), Close(1000, "bye")], end=True),
        ok("incomplete-record-waits", hello + prefix(2, 10) + b"abc", [Text("hello")]),
        ok("incomplete-prefix-waits", hello + b"\x02\x00\x00", [Text("hello")]),
        ok("at-the-limit", prefix(2, 4) + b"1234", [Binary(b"1234")], max_message=4),
        bad("unknown-type", prefix(3, 1) + b"x", "unknown websocket record type 0x03"),
        bad("unknown-type-ping", prefix(9, 0), "unknown websocket record type 0x09"),
        bad("unknown-type-zero", prefix(0, 0), "unknown websocket record type 0x00"),
        bad("over-the-limit", prefix(2, 5), "websocket message of 5 bytes exceeds 4",
            max_message=4),
        bad("over-the-default-limit", prefix(1, 16 * 1024 * 1024 + 1),
            "websocket message of 16777217 bytes exceeds 16777216"),
        bad("text-not-utf8", prefix(1, 2) + b"\xc3\x28", "websocket text is not valid UTF-8"),
        bad("text-lone-surrogate", prefix(1, 3) + b"\xed\xa0\x80",
            "websocket text is not valid UTF-8"),
        bad("close-1-byte", prefix(8, 1) + b"\x03", "websocket close payload of 1 byte"),
        bad("close-code-999", prefix(8, 2) + b"\x03\xe7", "invalid websocket close code 999"),
        bad("close-code-1004", prefix(8, 2) + b"\x03\xec", "invalid websocket close code 1004"),
        bad("close-code-1005", prefix(8, 2) + b"\x03\xed", "invalid websocket close code 1005"),
        bad("close-code-1006", prefix(8, 2) + b"\x03\xee", "invalid websocket close code 1006"),
        bad("close-code-1015", prefix(8, 2) + b"\x03\xf7", "invalid websocket close code 1015"),
        bad("close-code-5000", prefix(8, 2) + b"\x13\x88", "invalid websocket close code 5000"),
        bad("close-reason-124-bytes", prefix(8, 126) + b"\x0f\xa0" + b"r" * 124,
            "websocket close reason over 123 bytes"),
        bad("close-reason-not-utf8", prefix(8, 3) + b"\x03\xe8\xff",
            "websocket close reason is not valid UTF-8"),
        bad("record-after-close", close_bye + hello, "websocket record after close"),
        bad("byte-after-close", close_bye + b"\x01", "websocket record after close"),
        bad("end-inside-record", hello + prefix(2, 10) + b"abc",
            "websocket stream ended inside a record", end=True),
        bad("end-inside-prefix", b"\x01\x00", "websocket stream ended inside a record", end=True),
        bad("end-without-close", hello, "websocket stream ended without a close record", end=True),
    ]


def render() -> str:
    vectors = build()
    if len({v["name"] for v in vectors}) != len(vectors):
        raise SystemExit("duplicate vector names")
    return json.dumps(vectors, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT} ({len(json.loads(text))} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
