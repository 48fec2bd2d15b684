"""Wire format of one frame: a 12-byte header and a payload.

    stream id u32 | payload length u16 | sequence number u32 | flags u16 | payload

All integers are in network byte order. A data-channel message is one frame, or, once both
ends agreed to packing, several frames back to back (`pack_messages`, `split_message`). See
docs/protocol.md for the rules checked here.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from peerproxyd.errors import RemoteProtocolError

HEADER = struct.Struct("!IHIH")
HEADER_SIZE = HEADER.size  # 12
MAX_MESSAGE_SIZE = 16 * 1024
MAX_PAYLOAD = MAX_MESSAGE_SIZE - HEADER_SIZE  # 16372
INITIAL_WINDOW = 1024 * 1024
"""Body bytes a sender may have unacknowledged on one stream before a WINDOW message."""


class Flag(enum.IntFlag):
    HEADERS = 0x0001
    FINAL = 0x0002
    END_HEADERS = 0x0004
    HEARTBEAT = 0x0008
    ACK = 0x0010
    RESET = 0x0020
    WINDOW = 0x0040


KNOWN_FLAGS = 0x007F
_CONTROL = Flag.HEARTBEAT | Flag.RESET | Flag.WINDOW


class ErrorCode(enum.IntEnum):
    """The u16 code at the start of a RESET payload."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    REFUSED_STREAM = 4
    CANCEL = 5
    HEADERS_TOO_LARGE = 6
    UPSTREAM_ERROR = 7


class Kind(enum.Enum):
    HEADERS = "headers"
    BODY = "body"
    HEARTBEAT = "heartbeat"
    RESET = "reset"
    WINDOW = "window"


@dataclass(frozen=True, slots=True)
class Frame:
    stream_id: int
    seq: int
    flags: Flag
    payload: bytes = b""

    @property
    def kind(self) -> Kind:
        known = _FLAG_TABLE.get(self.flags)
        return known.kind if known else _kind_of(self.flags)

    @property
    def final(self) -> bool:
        return bool(int(self.flags) & Flag.FINAL.value)

    def __bytes__(self) -> bytes:
        return HEADER.pack(self.stream_id, len(self.payload), self.seq, self.flags) + self.payload

    # Constructors for control messages.
    @classmethod
    def heartbeat(cls, seq: int, *, ack: bool = False) -> Frame:
        return cls(0, seq, Flag.HEARTBEAT | (Flag.ACK if ack else 0))

    @classmethod
    def reset(cls, stream_id: int, code: int, reason: str = "") -> Frame:
        # Cut at a character boundary: a split character would make the reason invalid UTF-8.
        data = reason.encode()[: MAX_PAYLOAD - 2].decode(errors="ignore").encode()
        return cls(stream_id, 0, Flag.RESET, struct.pack("!H", code) + data)

    @classmethod
    def window(cls, stream_id: int, increment: int) -> Frame:
        return cls(stream_id, 0, Flag.WINDOW, struct.pack("!I", increment))

    def reset_fields(self) -> tuple[int, str]:
        """(code, reason) of a RESET message."""
        (code,) = struct.unpack_from("!H", self.payload)
        return code, self.payload[2:].decode()

    def window_increment(self) -> int:
        (increment,) = struct.unpack("!I", self.payload)
        return int(increment)


def _check_size(data: bytes | memoryview) -> int:
    """The stream id of a message of acceptable size (checks 1 and 2 of docs/protocol.md)."""
    if len(data) < HEADER_SIZE:
        raise RemoteProtocolError(f"message length {len(data)} is less than the 12-byte header")
    (stream_id,) = struct.unpack_from("!I", data)
    if len(data) > MAX_MESSAGE_SIZE:
        raise RemoteProtocolError(
            f"message length {len(data)} exceeds the maximum of {MAX_MESSAGE_SIZE}",
            code=ErrorCode.PROTOCOL_ERROR,
            stream_id=stream_id,
        )
    return int(stream_id)


def parse_frame(data: bytes | memoryview) -> Frame:
    """Decode and check one whole frame (an unpacked message); raise RemoteProtocolError if
    invalid.

    Errors carry the stream id whenever the header could be read, so the caller can reset
    just that stream.
    """
    _check_size(data)
    stream_id, length, seq, raw_flags = HEADER.unpack_from(data)

    def fail(message: str) -> RemoteProtocolError:
        return RemoteProtocolError(message, code=ErrorCode.PROTOCOL_ERROR, stream_id=stream_id)

    if length != len(data) - HEADER_SIZE:
        raise fail(
            f"payload length field {length} does not match the {len(data) - HEADER_SIZE}"
            " payload bytes present"
        )
    known = _FLAG_TABLE.get(raw_flags)
    if known is None:
        raise fail(f"unknown flags 0x{raw_flags & ~KNOWN_FLAGS:04x}")
    if known.problem:
        raise fail(known.problem)
    frame = Frame(stream_id, seq, known.flags, bytes(data[HEADER_SIZE:]))
    problem = _frame_problem(frame, known.kind)
    if problem:
        raise fail(problem)
    return frame


def pack_messages(frames: Iterable[bytes]) -> list[bytes]:
    """Encoded frames joined, in order, into packed messages: a new message whenever the next
    frame would take the current one past MAX_MESSAGE_SIZE (docs/protocol.md §1.1)."""
    messages: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for frame in frames:
        if batch and size + len(frame) > MAX_MESSAGE_SIZE:
            messages.append(batch[0] if len(batch) == 1 else b"".join(batch))
            batch, size = [], 0
        batch.append(frame)
        size += len(frame)
    if batch:
        messages.append(batch[0] if len(batch) == 1 else b"".join(batch))
    return messages


def split_message(data: bytes) -> Iterator[memoryview]:
    """The frames of a packed message, in order, each for `parse_frame`. Where the rest of
    the message cannot be read, raises RemoteProtocolError after yielding the frames before
    it (with the stream id of that frame's header, if it could be read)."""
    _check_size(data)
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        left = len(data) - offset
        if left < HEADER_SIZE:
            raise RemoteProtocolError(
                f"frame at offset {offset}: {left} bytes are less than the 12-byte header"
            )
        stream_id, length = struct.unpack_from("!IH", data, offset)
        if HEADER_SIZE + length > left:
            raise RemoteProtocolError(
                f"frame at offset {offset}: payload length field {length} runs past the end"
                f" of the {len(data)}-byte message",
                code=ErrorCode.PROTOCOL_ERROR,
                stream_id=stream_id,
            )
        end = offset + HEADER_SIZE + length
        yield view[offset:end]
        offset = end


def _kind_of(f: Flag) -> Kind:
    if f & Flag.HEARTBEAT:
        return Kind.HEARTBEAT
    if f & Flag.RESET:
        return Kind.RESET
    if f & Flag.WINDOW:
        return Kind.WINDOW
    if f & Flag.HEADERS:
        return Kind.HEADERS
    return Kind.BODY


def _flags_problem(f: Flag) -> str | None:
    """What is wrong with this combination of flags by itself."""
    if sum(bool(f & k) for k in (Flag.HEARTBEAT, Flag.RESET, Flag.WINDOW, Flag.HEADERS)) > 1:
        return f"conflicting flags 0x{int(f):04x}"
    if f & Flag.ACK and not f & Flag.HEARTBEAT:
        return "ACK is only valid with HEARTBEAT"
    if f & _CONTROL and f & (Flag.FINAL | Flag.END_HEADERS):
        return "FINAL and END_HEADERS are not valid on control messages"
    if f & Flag.END_HEADERS and not f & Flag.HEADERS:
        return "END_HEADERS is only valid with HEADERS"
    if f & Flag.HEADERS and f & Flag.FINAL and not f & Flag.END_HEADERS:
        return "FINAL on HEADERS requires END_HEADERS"
    return None


@dataclass(frozen=True, slots=True)
class _KnownFlags:
    flags: Flag
    kind: Kind
    problem: str | None


# Every combination of the known flags, worked out once: each message passes parse_frame,
# and an enum.Flag operation costs about a microsecond (profiled: bench/README.md,
# "Concurrency"; they were 10-12 % of a native client's time under concurrent downloads).
_FLAG_TABLE: dict[int, _KnownFlags] = {
    raw: _KnownFlags(Flag(raw), _kind_of(Flag(raw)), _flags_problem(Flag(raw)))
    for raw in range(KNOWN_FLAGS + 1)
}


def _frame_problem(frame: Frame, kind: Kind) -> str | None:
    """What is wrong with the stream id, sequence number and payload of a `kind` frame."""
    if kind is Kind.HEARTBEAT:
        if frame.stream_id != 0:
            return "HEARTBEAT must use stream 0"
        if frame.payload:
            return "HEARTBEAT must have an empty payload"
        return None
    if frame.stream_id == 0:
        return "stream 0 is reserved for HEARTBEAT"
    if kind in (Kind.RESET, Kind.WINDOW) and frame.seq != 0:
        return "sequence number must be 0 on RESET and WINDOW"
    if kind is Kind.RESET:
        if len(frame.payload) < 2:
            return "RESET payload must hold at least a 2-byte error code"
        try:
            frame.payload[2:].decode()
        except UnicodeDecodeError:
            return "RESET reason is not valid UTF-8"
    if kind is Kind.WINDOW:
        if len(frame.payload) != 4:
            return "WINDOW payload must be exactly 4 bytes"
        if frame.window_increment() == 0:
            return "WINDOW increment must not be 0"
    return None
