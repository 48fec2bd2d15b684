"""ChannelLink: the thin IO shell between one data channel and one ProxyConnection.

Messages from the channel go to `ProxyConnection.receive_message()`; the resulting events are
routed to `ChannelStream`s; whatever the connection wants to send goes out on the channel.
Backpressure has two levels: per stream, the peer's WINDOW credit; per channel, the data
channel's bufferedAmount (writers wait for "bufferedamountlow").

With packed messages (docs/protocol.md §1.1) what is written within one turn of the event loop
goes out together, packed: a response head, its small body and FINAL become one message
(and one SCTP packet). Every write step yields to the loop, so that outbox stays small.

Slow-reader protection: a peer that never grants window or never reads the channel cannot make
this side buffer without bound. Both waits judge progress, not levels: an overloaded peer that
acknowledges a little in each period is waited for, however full the channel stays.

- A writer waits for window at most `stall_timeout` seconds once the peer has acknowledged
  everything sent before the wait (while the channel still delivers those bytes, the peer may
  not have seen them yet); then its stream is reset (CANCEL, "stalled: no window").
- A channel above HIGH_WATER of which the peer acknowledges nothing for `stall_timeout`, or
  whose queue passes `max_buffered` bytes (messages that need no window: response heads,
  RESETs, heartbeat answers), is closed with the whole peer ("peer is not reading").
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from peerproxyd.errors import PeerGoneError, StreamResetError
from peerproxyd.protocol import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    DataReceived,
    ErrorCode,
    Flag,
    HeartbeatAcked,
    MessageDropped,
    ProxyConnection,
    RequestHead,
    RequestReceived,
    ResponseHead,
    ResponseReceived,
    StreamReset,
    WindowUpdated,
)

logger = logging.getLogger(__name__)

HIGH_WATER = 1024 * 1024  # writers pause above this many bytes queued on the channel
LOW_WATER = 256 * 1024  # ... and resume at this many
# Body bytes handed to the connection per write step: one message, then a yield to the loop.
# aiortc's per-SACK work grows with the chunks in flight, so queueing many messages at once
# costs it more CPU than it saves here (bench/README.md, finding 2).
MAX_WRITE = MAX_PAYLOAD
STALL_TIMEOUT = 60.0  # seconds without window (stream) or without draining (channel)
MAX_BUFFERED = 16 * HIGH_WATER  # bytes queued on the channel before the peer is dropped


class DataChannel(Protocol):
    """What we use of aiortc's RTCDataChannel."""

    bufferedAmount: int  # noqa: N815 (aiortc's name)
    bufferedAmountLowThreshold: int  # noqa: N815
    readyState: str  # noqa: N815

    def send(self, data: bytes | str) -> None: ...

    def on(self, event: str, f: Callable[..., Any]) -> Any: ...

    def remove_listener(self, event: str, f: Callable[..., Any]) -> Any: ...

    def close(self) -> None: ...


class ChannelStream:
    """One request/response exchange as seen by the IO code: read body, write body, reset."""

    def __init__(self, link: ChannelLink, stream_id: int) -> None:
        self.id = stream_id
        self._link = link
        self._chunks: collections.deque[bytes] = collections.deque()
        self._eof = False
        self._error: BaseException | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self.response: asyncio.Future[tuple[ResponseHead, bool]] = (
            asyncio.get_running_loop().create_future()
        )
        self.bytes_in = 0
        self.bytes_out = 0
        self.head_sent_at: float | None = None
        """When the response head was sent (time.monotonic()), for the latency metric."""

    # ----- fed by the link
    def _feed(self, data: bytes, end: bool) -> None:
        if data:
            self._chunks.append(data)
        self._eof = self._eof or end
        self._readable.set()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._readable.set()
        self._writable.set()
        if not self.response.done():
            self.response.set_exception(error)
            self.response.exception()  # mark retrieved: nobody may be waiting

    def _window_opened(self) -> None:
        self._writable.set()

    # ----- used by request/response code
    @property
    def is_open(self) -> bool:
        """Whether the protocol still has this stream open in either direction."""
        return self._error is None and self._link.conn.is_open(self.id)

    async def read(self) -> bytes:
        """The next body chunk in order; b"" at the end. Chunks that arrived before a reset are
        still returned; then StreamResetError/PeerGoneError is raised."""
        while not self._chunks:
            if self._eof:
                return b""
            if self._error is not None:
                raise self._error
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        self.bytes_in += len(chunk)
        self._link.conn.consumed(self.id, len(chunk))
        self._link.flush()
        return chunk

    def send_response(self, head: ResponseHead, *, end_stream: bool = False) -> None:
        """Server: send the response head (end_stream: no body follows)."""
        if self._error is not None:
            raise self._error
        self._link.conn.send_response(self.id, head, end_stream=end_stream)
        self.head_sent_at = time.monotonic()
        self._link.flush()
        if end_stream:
            self._link.release_if_done(self.id)

    async def write(self, data: bytes, *, end: bool = False) -> None:
        """Send body bytes as the peer's window and the channel's buffer allow; `end` sends
        FINAL with the last of them (or alone, for empty `data`)."""
        view = memoryview(data)
        while view or end:
            if self._error is not None:
                raise self._error
            window = self._link.conn.send_window(self.id)
            if view and window == 0:
                if not await self._wait_for_window():
                    reason = f"stalled: no window for {self._link.stall_timeout:g} s"
                    logger.warning("%s: stream %d %s", self._link.name, self.id, reason)
                    self._link.on_error("stalled")
                    self.reset(ErrorCode.CANCEL, reason)
                continue
            step = bytes(view[: min(window, MAX_WRITE)])
            view = view[len(step) :]
            last = end and not view
            self._link.conn.send_body(self.id, step, end_stream=last)
            self.bytes_out += len(step)
            self._link.flush()
            if last:
                self._link.release_if_done(self.id)
                end = False
            if not await self._link.drain():
                await asyncio.sleep(0)

    async def _wait_for_window(self) -> bool:
        """Wait for WINDOW (or a failure); False once the peer has had every byte sent before
        the wait for `stall_timeout` seconds and granted none. While the channel is still
        delivering those bytes (the peer acknowledges more in each period), the clock waits."""
        link = self._link
        sent_before = link.sent
        acknowledged = link.acknowledged()
        self._writable.clear()
        while True:
            try:
                await asyncio.wait_for(self._writable.wait(), link.stall_timeout)
                return True
            except TimeoutError:
                now = link.acknowledged()
                if now >= sent_before or now <= acknowledged:
                    return False
                acknowledged = now

    async def end(self) -> None:
        await self.write(b"", end=True)

    def reset(self, code: int = ErrorCode.CANCEL, reason: str = "") -> None:
        """Abort the stream both ways (no-op if it is already gone)."""
        self._link.conn.reset_stream(self.id, code, reason)
        self._link.flush()
        self._link.streams.pop(self.id, None)
        self._fail(StreamResetError(self.id, code, reason, remote=False))


class ChannelLink:
    """Moves messages between a data channel and a ProxyConnection.

    `on_request(stream, head, end_stream)` is called for each new request (server role);
    `on_text(message)` for each text message (without it they are dropped: the protocol is
    binary); `on_error(kind)` for each error this side detects (metrics: too_many_streams,
    bad_frame, stalled, slow_peer, peer_silent). `last_activity` is when a message other than
    a heartbeat last arrived.
    """

    def __init__(
        self,
        channel: DataChannel,
        conn: ProxyConnection,
        *,
        on_request: Callable[[ChannelStream, RequestHead, bool], None] | None = None,
        on_text: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] = lambda kind: None,
        name: str = "",
        stall_timeout: float = STALL_TIMEOUT,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.channel = channel
        self.conn = conn
        self.name = name
        self.stall_timeout = stall_timeout
        self.max_buffered = max_buffered
        self.streams: dict[int, ChannelStream] = {}
        self._on_request = on_request
        self._on_text = on_text
        self.on_error = on_error
        self._low = asyncio.Event()
        self._low.set()
        self._closed = asyncio.Event()
        self.last_received = time.monotonic()
        self.last_activity = self.last_received
        self.rtt: float | None = None
        self._heartbeat_sent: dict[int, float] = {}
        self._send_soon: asyncio.Handle | None = None
        self.dropped = 0
        self.sent = 0
        """Bytes handed to the channel so far (see acknowledged())."""
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("message", self._on_message)
        channel.on("bufferedamountlow", self._low.set)
        channel.on("close", self.close)

    # ----- inbound
    def _on_message(self, message: bytes | str) -> None:
        self.last_received = time.monotonic()
        if isinstance(message, str):
            if self._on_text is not None:
                self._on_text(message)
                return
            self.dropped += 1
            logger.warning("%s: dropped a text message (the protocol is binary)", self.name)
            return
        if not _is_heartbeat(message):
            self.last_activity = self.last_received
        events = self.conn.receive_message(message)
        for event in events:
            self._dispatch(event)
        # Only now: a packed message may finish a stream in its first frames' events already.
        for event in events:
            if isinstance(event, DataReceived):
                self.release_if_done(event.stream_id)
        self.flush()

    def _dispatch(self, event: object) -> None:
        match event:
            case DataReceived(stream_id=sid, data=data, end_stream=end):
                if stream := self.streams.get(sid):
                    stream._feed(data, end)
            case RequestReceived(stream_id=sid, head=head, end_stream=end):
                stream = ChannelStream(self, sid)
                self.streams[sid] = stream
                if end:
                    stream._feed(b"", True)
                if self._on_request is None:
                    stream.reset(ErrorCode.PROTOCOL_ERROR, "this side accepts no requests")
                else:
                    self._on_request(stream, head, end)
            case ResponseReceived(stream_id=sid, head=head, end_stream=end):
                if stream := self.streams.get(sid):
                    if end:
                        stream._feed(b"", True)
                    if not stream.response.done():
                        stream.response.set_result((head, end))
            case StreamReset(stream_id=sid, code=code, reason=reason, remote=remote):
                log = logger.debug if code in (ErrorCode.CANCEL, ErrorCode.NO_ERROR) else logger.warning
                log("%s: stream %d reset (%s): %s", self.name, sid, code, reason)
                if not remote:  # the protocol refused the viewer's stream
                    self.on_error("too_many_streams" if code == ErrorCode.REFUSED_STREAM
                                  else "bad_frame")
                if stream := self.streams.pop(sid, None):
                    stream._fail(StreamResetError(sid, code, reason, remote=remote))
            case WindowUpdated(stream_id=sid):
                if stream := self.streams.get(sid):
                    stream._window_opened()
            case HeartbeatAcked(seq=seq):
                sent = self._heartbeat_sent.pop(seq, None)
                if sent is not None:
                    self.rtt = time.monotonic() - sent
            case MessageDropped(reason=reason):
                self.dropped += 1
                logger.warning("%s: dropped a message: %s", self.name, reason)
                self.on_error("bad_frame")

    def release_if_done(self, stream_id: int) -> None:
        """Stop routing events to a stream the connection has finished with (both ways)."""
        if not self.conn.is_open(stream_id):
            self.streams.pop(stream_id, None)

    # ----- outbound
    def flush(self) -> None:
        """Send everything the connection has queued: at once, or with packing at the end of
        this turn of the event loop (one deferred send, whatever else is written meanwhile)."""
        if not self.conn.packed:
            self.send_queued()
        elif self._send_soon is None:
            self._send_soon = asyncio.get_running_loop().call_soon(self.send_queued)

    def send_queued(self) -> None:
        """Send what the connection has queued now."""
        if self._send_soon is not None:
            self._send_soon.cancel()
            self._send_soon = None
        if self.channel.readyState != "open":
            self.conn.data_to_send()
            return
        for message in self.conn.data_to_send():
            self.channel.send(message)
            self.sent += len(message)
        if self.channel.bufferedAmount > self.max_buffered and not self._closed.is_set():
            self.abort(f"peer is not reading: {self.channel.bufferedAmount} bytes queued")

    def unsent(self) -> int:
        """Bytes written to this channel that the peer has not acknowledged yet: queued in the
        channel (bufferedAmount) plus, with aiortc, the SCTP chunks queued or in flight (its
        private queues; 0 where they are not there)."""
        sctp = getattr(self.channel, "transport", None)
        chunks = [*getattr(sctp, "_outbound_queue", ()), *getattr(sctp, "_sent_queue", ())]
        return self.channel.bufferedAmount + sum(len(getattr(c, "user_data", b"")) for c in chunks)

    def acknowledged(self) -> int:
        """Bytes sent on this channel that are no longer unsent(): the peer's progress (it
        only grows while the peer reads, whatever is queued meanwhile)."""
        return self.sent - self.unsent()

    async def drain(self) -> bool:
        """Wait while the channel holds more than HIGH_WATER bytes unsent; True if it waited.
        A peer that acknowledges nothing for `stall_timeout` is closed; one that acknowledges
        anything in each period is waited for, even if the channel never gets back below
        LOW_WATER (other writers, WINDOWs and heads refill it: its level proves nothing)."""
        waited = False
        acknowledged = 0
        while self.channel.bufferedAmount > HIGH_WATER and not self._closed.is_set():
            if not waited:  # unsent() walks aiortc's SCTP queues: only when waiting
                acknowledged = self.acknowledged()
            waited = True
            self._low.clear()
            try:
                async with asyncio.timeout(self.stall_timeout):
                    await _first(self._low.wait(), self._closed.wait())
            except TimeoutError:
                now = self.acknowledged()
                if now <= acknowledged:
                    self.abort(f"peer is not reading: nothing acknowledged for "
                               f"{self.stall_timeout:g} s ({self.channel.bufferedAmount} bytes "
                               "queued)")
                acknowledged = now
        if self._closed.is_set():
            raise PeerGoneError(f"{self.name}: data channel closed")
        return waited

    def open_stream(self, head: RequestHead, *, end_stream: bool = False) -> ChannelStream:
        """Client: send a request head; returns the stream to write the body / await the
        response on."""
        if self._closed.is_set():
            raise PeerGoneError(f"{self.name}: data channel closed")
        sid = self.conn.open_stream(head, end_stream=end_stream)
        stream = ChannelStream(self, sid)
        self.streams[sid] = stream
        self.flush()
        return stream

    # ----- liveness
    async def keepalive(self, interval: float, timeout: float) -> None:
        """Send HEARTBEATs; return when the peer has been silent for `timeout` seconds or the
        channel closed."""
        while not self._closed.is_set():
            silent = time.monotonic() - self.last_received
            if silent > timeout:
                logger.warning("%s: peer silent for %.1f s, closing", self.name, silent)
                self.on_error("peer_silent")
                return
            seq = self.conn.heartbeat()
            self._heartbeat_sent = {seq: time.monotonic()}
            self.flush()
            try:
                await asyncio.wait_for(self._closed.wait(), interval)
            except TimeoutError:
                pass

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def abort(self, reason: str) -> None:
        """Give up on a peer that misbehaves at the channel level: close the channel (the
        session notices) and fail every stream."""
        logger.warning("%s: closing: %s", self.name, reason)
        self.on_error("slow_peer")
        self.channel.close()
        self.close()

    def close(self) -> None:
        """The channel is gone: fail every stream (their tasks see PeerGoneError)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._low.set()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream._fail(PeerGoneError(f"{self.name}: data channel closed"))


def _is_heartbeat(message: bytes) -> bool:
    """HEARTBEATs or HEARTBEAT|ACKs only (12 bytes each, stream 0, the HEARTBEAT flag): one,
    or several packed."""
    return bool(message) and len(message) % HEADER_SIZE == 0 and all(
        message[i : i + 6] == bytes(6) and message[i + 11] & Flag.HEARTBEAT
        for i in range(0, len(message), HEADER_SIZE)
    )


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
