"""ProxyConnection: the protocol state of one data channel, with no IO.

Feed each received message to `receive_message()`, act on the events it returns, and send
what `data_to_send()` returns, one data-channel message per item (see h11/h2). With `packed`
(both ends agreed in the auth exchange, docs/protocol.md §1.1) a message carries one or more
frames: `data_to_send()` packs what was queued, `receive_message()` splits.
"""

from __future__ import annotations

import collections
import enum
import logging
from dataclasses import dataclass, field

from peerproxyd.errors import LocalProtocolError, RemoteProtocolError
from peerproxyd.protocol.events import (
    DataReceived,
    Event,
    HeartbeatAcked,
    MessageDropped,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    WindowUpdated,
)
from peerproxyd.protocol.frames import (
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    ErrorCode,
    Flag,
    Frame,
    Kind,
    pack_messages,
    parse_frame,
    split_message,
)
from peerproxyd.protocol.heads import HeadError, RequestHead, ResponseHead
from peerproxyd.protocol.state import HalfState, Input, next_state

logger = logging.getLogger(__name__)

MAX_WINDOW = 2**31 - 1
RECENTLY_CLOSED = 1024  # stream ids remembered so late messages for them are dropped quietly


class Role(enum.Enum):
    CLIENT = "client"  # opens streams, sends requests
    SERVER = "server"  # the daemon: answers them


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_streams: int = 128
    """Concurrent streams the peer may open (server side)."""
    max_header_bytes: int = 64 * 1024
    """Size of one reassembled header block."""
    reorder_window: int = 64
    """Messages of one stream accepted ahead of the next expected sequence number."""


@dataclass
class _Stream:
    id: int
    recv: HalfState = HalfState.IDLE
    send: HalfState = HalfState.IDLE
    next_seq: int = 0
    final_seq: int | None = None
    pending: dict[int, Frame] = field(default_factory=dict)
    header_block: bytearray = field(default_factory=bytearray)
    send_seq: int = 0
    send_window: int = INITIAL_WINDOW
    recv_window: int = INITIAL_WINDOW
    unacked: int = 0

    @property
    def done(self) -> bool:
        return self.recv is HalfState.CLOSED and self.send is HalfState.CLOSED


def _inputs(frame: Frame) -> list[Input]:
    if frame.kind is Kind.HEADERS:
        first = Input.END_HEADERS if frame.flags & Flag.END_HEADERS else Input.HEADERS
    else:
        first = Input.BODY
    return [first, Input.FINAL] if frame.final else [first]


class ProxyConnection:
    def __init__(self, role: Role, limits: Limits | None = None, *, packed: bool = False) -> None:
        self.role = role
        self.limits = limits or Limits()
        self.packed = packed
        self._streams: dict[int, _Stream] = {}
        self._outbox: list[bytes] = []
        self._next_id = 1  # client: next stream id to allocate
        self._highest_remote = 0  # server: highest stream id the peer opened
        self._closed: collections.deque[int] = collections.deque(maxlen=RECENTLY_CLOSED)
        self._closed_set: set[int] = set()
        self._heartbeat_seq = 0

    # ----- inspection
    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        """Body bytes that may be sent on the stream now."""
        stream = self._streams.get(stream_id)
        return stream.send_window if stream else 0

    def data_to_send(self) -> list[bytes]:
        """The messages to send, in order: one frame each, or packed frames if `packed`."""
        out, self._outbox = self._outbox, []
        return pack_messages(out) if self.packed and len(out) > 1 else out

    # ----- receiving
    def receive_message(self, data: bytes) -> list[Event]:
        """Process one data-channel message. Never raises for bad input: a broken stream is
        reset (StreamReset with remote=False), a message with no stream to blame is dropped.
        A packed message's frames are processed in order, each as its own message; where the
        rest of it cannot be split into frames, that is reported after the frames before."""
        if not self.packed:
            return self._receive_one(data)
        events: list[Event] = []
        try:
            for frame in split_message(data):
                events += self._receive_one(frame)
        except RemoteProtocolError as exc:
            events += self._fail_stream(exc)
        return events

    def _receive_one(self, data: bytes | memoryview) -> list[Event]:
        try:
            frame = parse_frame(data)
            return self._receive_frame(frame)
        except RemoteProtocolError as exc:
            return self._fail_stream(exc)

    def _receive_frame(self, frame: Frame) -> list[Event]:
        kind = frame.kind
        if kind is Kind.HEARTBEAT:
            if frame.flags & Flag.ACK:
                return [HeartbeatAcked(seq=frame.seq)]
            self._emit(Frame.heartbeat(frame.seq, ack=True))
            return []
        stream = self._streams.get(frame.stream_id)
        if kind is Kind.RESET:
            if stream is None:
                return []
            code, reason = frame.reset_fields()
            self._forget(stream)
            return [StreamReset(stream_id=stream.id, code=code, reason=reason, remote=True)]
        if stream is None:
            if kind is Kind.WINDOW or self._is_stale(frame.stream_id):
                return []
            refused = self._open_remote(frame.stream_id)
            if refused is not None:
                return [refused]
            stream = self._streams[frame.stream_id]
        if kind is Kind.WINDOW:
            stream.send_window += frame.window_increment()
            if stream.send_window > MAX_WINDOW:
                raise RemoteProtocolError(
                    f"WINDOW overflows stream {stream.id}'s send window",
                    code=ErrorCode.FLOW_CONTROL_ERROR,
                    stream_id=stream.id,
                )
            return [WindowUpdated(stream_id=stream.id, increment=frame.window_increment())]
        events: list[Event] = []
        for ready in self._reorder(stream, frame):
            events.extend(self._deliver(stream, ready))
        if stream.done:
            self._forget(stream)
        return events

    def _is_stale(self, stream_id: int) -> bool:
        """A message for a stream that existed and is gone (reset or finished)."""
        if self.role is Role.CLIENT:
            if stream_id < self._next_id:
                return True
            raise RemoteProtocolError(
                f"stream {stream_id} was never opened", stream_id=stream_id
            )
        if stream_id in self._closed_set:
            return True
        if stream_id <= self._highest_remote:
            raise RemoteProtocolError(f"stream id {stream_id} reused", stream_id=stream_id)
        return False

    def _open_remote(self, stream_id: int) -> StreamReset | None:
        self._highest_remote = stream_id
        stream = _Stream(stream_id)
        if len(self._streams) >= self.limits.max_streams:
            reason = f"too many concurrent streams (limit {self.limits.max_streams})"
            self._emit(Frame.reset(stream_id, ErrorCode.REFUSED_STREAM, reason))
            self._forget(stream)
            return StreamReset(
                stream_id=stream_id, code=ErrorCode.REFUSED_STREAM, reason=reason, remote=False
            )
        self._streams[stream_id] = stream
        return None

    def _reorder(self, stream: _Stream, frame: Frame) -> list[Frame]:
        """The thesis's ordering: deliver from the next expected sequence number on, keeping
        early messages in a bounded map."""
        seq = frame.seq

        def fail(message: str) -> RemoteProtocolError:
            return RemoteProtocolError(message, stream_id=stream.id)

        if seq < stream.next_seq or seq in stream.pending:
            raise fail(f"duplicate sequence number {seq} on stream {stream.id}")
        if seq >= stream.next_seq + self.limits.reorder_window:
            raise fail(
                f"sequence number {seq} on stream {stream.id} is beyond the reorder window"
                f" (next expected {stream.next_seq}, window {self.limits.reorder_window})"
            )
        if stream.final_seq is not None and seq > stream.final_seq:
            raise fail(f"sequence number {seq} on stream {stream.id} follows FINAL")
        if frame.final:
            if any(s > seq for s in stream.pending):
                raise fail(f"FINAL at sequence number {seq} on stream {stream.id} is not last")
            stream.final_seq = seq
        if seq != stream.next_seq:
            stream.pending[seq] = frame
            return []
        ready = [frame]
        stream.next_seq += 1
        while stream.next_seq in stream.pending:
            ready.append(stream.pending.pop(stream.next_seq))
            stream.next_seq += 1
        return ready

    def _deliver(self, stream: _Stream, frame: Frame) -> list[Event]:
        for event in _inputs(frame):
            state = next_state(stream.recv, event)
            if state is None:
                raise RemoteProtocolError(
                    f"{event.value} not allowed on stream {stream.id} in state"
                    f" {stream.recv.value}",
                    stream_id=stream.id,
                )
            stream.recv = state
        if frame.kind is Kind.HEADERS:
            stream.header_block += frame.payload
            if len(stream.header_block) > self.limits.max_header_bytes:
                raise RemoteProtocolError(
                    f"header block on stream {stream.id} exceeds"
                    f" {self.limits.max_header_bytes} bytes",
                    code=ErrorCode.HEADERS_TOO_LARGE,
                    stream_id=stream.id,
                )
            if not frame.flags & Flag.END_HEADERS:
                return []
            block, stream.header_block = bytes(stream.header_block), bytearray()
            try:
                if self.role is Role.SERVER:
                    head = RequestHead.decode(block)
                    if head.websocket and frame.final:
                        raise HeadError("a websocket stream must not end its request with the head")
                    return [RequestReceived(stream_id=stream.id, head=head, end_stream=frame.final)]
                return [
                    ResponseReceived(
                        stream_id=stream.id, head=ResponseHead.decode(block), end_stream=frame.final
                    )
                ]
            except HeadError as exc:
                raise RemoteProtocolError(str(exc), stream_id=stream.id) from None
        size = len(frame.payload)
        if size > stream.recv_window:
            raise RemoteProtocolError(
                f"stream {stream.id} sent {size} bytes with a window of {stream.recv_window}",
                code=ErrorCode.FLOW_CONTROL_ERROR,
                stream_id=stream.id,
            )
        stream.recv_window -= size
        return [DataReceived(stream_id=stream.id, data=frame.payload, end_stream=frame.final)]

    def _fail_stream(self, exc: RemoteProtocolError) -> list[Event]:
        stream_id = exc.stream_id
        if stream_id == 0:
            return [MessageDropped(reason=str(exc))]
        if stream_id not in self._streams and (
            self.role is Role.CLIENT or stream_id in self._closed_set
        ):
            # A late message for a stream that is gone: nothing left to reset.
            return [MessageDropped(reason=str(exc))]
        logger.debug("stream %d reset: %s", stream_id, exc)
        self._emit(Frame.reset(stream_id, exc.code, str(exc)))
        stream = self._streams.get(stream_id) or _Stream(stream_id)
        self._highest_remote = max(self._highest_remote, stream_id)
        self._forget(stream)
        return [StreamReset(stream_id=stream_id, code=exc.code, reason=str(exc), remote=False)]

    # ----- sending
    def open_stream(self, head: RequestHead, *, end_stream: bool = False) -> int:
        """Client: start a request; returns its new stream id."""
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only the client opens streams")
        stream = _Stream(self._next_id)
        self._next_id += 1
        self._streams[stream.id] = stream
        self._send_head(stream, head.encode(), end_stream)
        return stream.id

    def send_response(self, stream_id: int, head: ResponseHead, *, end_stream: bool = False) -> None:
        """Server: answer a request."""
        if self.role is not Role.SERVER:
            raise LocalProtocolError("only the server sends responses")
        self._send_head(self._stream(stream_id), head.encode(), end_stream)

    def send_body(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Body bytes (at most `send_window()`), split into messages; FINAL if end_stream."""
        stream = self._stream(stream_id)
        if len(data) > stream.send_window:
            raise LocalProtocolError(
                f"{len(data)} bytes exceed stream {stream_id}'s window of {stream.send_window}"
            )
        stream.send_window -= len(data)
        view = memoryview(data)
        chunks = [view[i : i + MAX_PAYLOAD] for i in range(0, len(data), MAX_PAYLOAD)] or [view]
        for i, chunk in enumerate(chunks):
            final = end_stream and i == len(chunks) - 1
            self._send_frame(stream, Flag.FINAL if final else Flag(0), bytes(chunk))

    def end_stream(self, stream_id: int) -> None:
        self.send_body(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, code: int = ErrorCode.CANCEL, reason: str = "") -> None:
        """Abort a stream in both directions. A no-op for a stream that is already gone."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._emit(Frame.reset(stream_id, code, reason))
        self._forget(stream)

    def consumed(self, stream_id: int, size: int) -> None:
        """The application passed `size` received body bytes on: grant the peer more."""
        stream = self._streams.get(stream_id)
        if stream is None or size <= 0:
            return
        stream.unacked += size
        if stream.unacked >= INITIAL_WINDOW // 4 and stream.recv is not HalfState.CLOSED:
            self._emit(Frame.window(stream_id, stream.unacked))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    def heartbeat(self) -> int:
        """Queue a HEARTBEAT; the peer answers with HeartbeatAcked(seq)."""
        self._heartbeat_seq = (self._heartbeat_seq + 1) % 2**32
        self._emit(Frame.heartbeat(self._heartbeat_seq))
        return self._heartbeat_seq

    # ----- internals
    def _stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return stream

    def _send_head(self, stream: _Stream, block: bytes, end_stream: bool) -> None:
        chunks = [block[i : i + MAX_PAYLOAD] for i in range(0, len(block), MAX_PAYLOAD)] or [b""]
        for i, chunk in enumerate(chunks):
            flags = Flag.HEADERS
            if i == len(chunks) - 1:
                flags |= Flag.END_HEADERS | (Flag.FINAL if end_stream else 0)
            self._send_frame(stream, flags, chunk)

    def _send_frame(self, stream: _Stream, flags: Flag, payload: bytes) -> None:
        frame = Frame(stream.id, stream.send_seq, flags, payload)
        for event in _inputs(frame):
            state = next_state(stream.send, event)
            if state is None:
                raise LocalProtocolError(
                    f"cannot send {event.value} on stream {stream.id} in state {stream.send.value}"
                )
            stream.send = state
        stream.send_seq += 1
        self._emit(frame)
        if stream.done:
            self._forget(stream)

    def _emit(self, frame: Frame) -> None:
        self._outbox.append(bytes(frame))

    def _forget(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        if len(self._closed) == self._closed.maxlen:
            self._closed_set.discard(self._closed[0])
        self._closed.append(stream.id)
        self._closed_set.add(stream.id)
