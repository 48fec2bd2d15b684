"""WebSocket records: how a WebSocket's messages ride the body of a stream (docs/protocol.md §12).

Sans-IO. Each direction of a WebSocket stream carries a byte stream of records:

    record = type (u8) | length (u32, big-endian) | payload (length bytes)

TEXT (0x01) and BINARY (0x02) hold one message each; CLOSE (0x08) ends the direction, with an
optional u16 code and UTF-8 reason. Records may span BODY messages and a BODY message may hold
several. `RecordDecoder` reassembles them and enforces the rules; a violation raises
`RecordError`, whose text is the reason of the PROTOCOL_ERROR reset (the vectors in
tests/vectors/websocket.json compare it exactly).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

PREFIX = struct.Struct("!BI")
PREFIX_SIZE = PREFIX.size  # 5
MAX_MESSAGE = 16 * 1024 * 1024
"""Default limit on one message's payload (both directions, both ends)."""
MAX_CLOSE_REASON = 123  # bytes: a close frame's payload is at most 125 bytes (RFC 6455 5.5)
# Codes that are never sent in a close frame (RFC 6455 7.4.1): reserved, or local-only.
RESERVED_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})
NO_STATUS = 1005  # what a CLOSE without a code is reported as
ABNORMAL = 1006  # a connection that ended without a CLOSE


class RecordType(enum.IntEnum):
    TEXT = 0x01
    BINARY = 0x02
    CLOSE = 0x08


class RecordError(ValueError):
    """The peer broke a record rule; the caller resets the stream with PROTOCOL_ERROR."""


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Binary:
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """`code` None: a close without status (reported as 1005)."""

    code: int | None = None
    reason: str = ""


Record = Text | Binary | Close


def valid_close_code(code: int) -> bool:
    return 1000 <= code <= 4999 and code not in RESERVED_CLOSE_CODES


def close_record(code: int | None, reason: str = "") -> Close:
    """A CLOSE that may be sent for a code reported by a WebSocket library: codes that never
    travel (1005, 1006, ...) become a close without status; the reason is cut to 123 bytes."""
    if code is None or not valid_close_code(code):
        return Close()
    data = reason.encode()[:MAX_CLOSE_REASON]
    return Close(code, data.decode(errors="ignore"))


def encode(record: Record) -> bytes:
    """One record, prefix included. Raises ValueError for a CLOSE that may not be sent."""
    match record:
        case Text(text=text):
            kind, payload = RecordType.TEXT, text.encode()
        case Binary(data=data):
            kind, payload = RecordType.BINARY, bytes(data)
        case Close(code=None, reason=reason):
            if reason:
                raise ValueError("a CLOSE without a code has no reason")
            kind, payload = RecordType.CLOSE, b""
        case Close(code=code, reason=reason):
            assert code is not None
            if not valid_close_code(code):
                raise ValueError(f"invalid websocket close code {code}")
            payload = struct.pack("!H", code) + reason.encode()
            if len(payload) > 2 + MAX_CLOSE_REASON:
                raise ValueError(f"websocket close reason over {MAX_CLOSE_REASON} bytes")
            kind = RecordType.CLOSE
        case _:
            raise TypeError(record)
    return PREFIX.pack(kind, len(payload)) + payload


def encode_header(kind: RecordType, length: int) -> bytes:
    """The 5-byte prefix alone, for a payload the caller sends separately."""
    return PREFIX.pack(kind, length)


class RecordDecoder:
    """Reassembles the records of one direction. `feed()` returns the complete ones;
    `end()` is called at FINAL. Both raise RecordError; after one, the decoder is unusable."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.closed: Close | None = None  # the CLOSE received, once it was
        self._buffer = bytearray()
        self._need: tuple[RecordType, int] | None = None  # the current record's prefix

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete record."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Record]:
        self._buffer += data
        out: list[Record] = []
        while True:
            if self._need is None:
                if self.closed is not None and self._buffer:
                    raise RecordError("websocket record after close")
                if len(self._buffer) < PREFIX_SIZE:
                    return out
                kind, length = PREFIX.unpack_from(self._buffer)
                if kind not in RecordType._value2member_map_:
                    raise RecordError(f"unknown websocket record type 0x{kind:02x}")
                if length > self.max_message:
                    raise RecordError(
                        f"websocket message of {length} bytes exceeds {self.max_message}"
                    )
                if kind == RecordType.CLOSE and length > 2 + MAX_CLOSE_REASON:
                    raise RecordError(f"websocket close reason over {MAX_CLOSE_REASON} bytes")
                self._need = (RecordType(kind), length)
                del self._buffer[:PREFIX_SIZE]
            kind, length = self._need
            if len(self._buffer) < length:
                return out
            payload = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._need = None
            out.append(self._record(kind, payload))

    def _record(self, kind: RecordType, payload: bytes) -> Record:
        if kind is RecordType.TEXT:
            try:
                return Text(payload.decode())
            except UnicodeDecodeError:
                raise RecordError("websocket text is not valid UTF-8") from None
        if kind is RecordType.BINARY:
            return Binary(payload)
        if not payload:
            self.closed = Close()
            return self.closed
        if len(payload) == 1:
            raise RecordError("websocket close payload of 1 byte")
        code = payload[0] << 8 | payload[1]
        if not valid_close_code(code):
            raise RecordError(f"invalid websocket close code {code}")
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            raise RecordError("websocket close reason is not valid UTF-8") from None
        self.closed = Close(code, reason)
        return self.closed

    def end(self) -> None:
        """The direction ended (FINAL): it must end after a CLOSE, between records."""
        if self._need is not None or self._buffer:
            raise RecordError("websocket stream ended inside a record")
        if self.closed is None:
            raise RecordError("websocket stream ended without a close record")
