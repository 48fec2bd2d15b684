"""WebSocketRelay: one WebSocket carried between an aiohttp WebSocket and a stream.

The same pump serves both ends (docs/protocol.md §12): in the daemon the aiohttp side is the
upstream (`ClientWebSocketResponse`), in the native client it is the local client
(`web.WebSocketResponse`). Messages become records on the stream and records become
messages; a close on either side is passed on as a CLOSE record + FINAL and answered.

Backpressure: the next message is read from the WebSocket only once the previous record is
written (the stream's window and the channel's buffer), and records are read from the stream
only as fast as the WebSocket side accepts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from peerproxyd.errors import PeerGoneError, StreamResetError
from peerproxyd.protocol import ErrorCode
from peerproxyd.protocol.websocket import (
    ABNORMAL,
    MAX_MESSAGE,
    Binary,
    Close,
    RecordDecoder,
    RecordError,
    RecordType,
    Text,
    close_record,
    encode,
    encode_header,
)
from peerproxyd.tunnel.channel import ChannelStream

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT = 10.0
"""Seconds the other side gets to answer a close before the stream is reset."""
GOING_AWAY = 1001


class WebSocketRelay:
    """Run with `await relay.run()`; afterwards `close_code` says how it ended (1006:
    abnormally) and `messages_in`/`messages_out` count messages to and from the stream."""

    def __init__(
        self,
        ws: Any,  # aiohttp ClientWebSocketResponse or web.WebSocketResponse
        stream: ChannelStream,
        *,
        lost_code: ErrorCode,
        lost_reason: str,
        on_stream_lost: Callable[[], Awaitable[None]],
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.ws = ws
        self.stream = stream
        self.close_code = ABNORMAL
        self.messages_in = 0  # WebSocket -> stream
        self.messages_out = 0  # stream -> WebSocket
        self._lost = (lost_code, lost_reason)
        self._on_stream_lost = on_stream_lost
        self._decoder = RecordDecoder(max_message)
        self._write_lock = asyncio.Lock()
        self._close_sent = False

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._ws_to_stream()),
            asyncio.create_task(self._stream_to_ws()),
        ]
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if pending:  # the other direction gets a bounded time to finish its close
                await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            if self.stream.is_open:
                self.stream.reset(ErrorCode.CANCEL, "websocket close timed out")
            if not self.ws.closed:
                with contextlib.suppress(Exception):
                    await self.ws.close(code=1001)
        for result in results:
            if isinstance(result, Exception) and not isinstance(
                result, (StreamResetError, PeerGoneError, asyncio.CancelledError)
            ):
                raise result

    async def go_away(self, reason: str) -> None:
        """Close both sides with 1001 (Going Away), as a server does when it shuts down: the
        stream gets a CLOSE record + FINAL, the WebSocket side a close frame. run() then ends
        once the stream's side has answered (or CLOSE_TIMEOUT has passed)."""
        self.close_code = GOING_AWAY
        with contextlib.suppress(StreamResetError, PeerGoneError):
            await self._send_close(close_record(GOING_AWAY, reason))
        if not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.close(code=GOING_AWAY, message=reason.encode())

    # ----- WebSocket -> stream
    async def _ws_to_stream(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                await self._write(encode(Text(msg.data)))
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await self._write(encode_header(RecordType.BINARY, len(msg.data)) + msg.data)
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                # The WebSocket side closed (aiohttp has answered it): pass its code on.
                logger.debug("websocket stream %d: closed by its websocket (%s %r)",
                             self.stream.id, msg.data, msg.extra)
                self.close_code = msg.data
                await self._send_close(close_record(msg.data, msg.extra or ""))
                return
            elif msg.type is aiohttp.WSMsgType.ERROR and isinstance(
                msg.data, aiohttp.WebSocketError
            ):
                # e.g. a message over max_msg_size: aiohttp closed with that code (1009).
                self.close_code = msg.data.code
                await self._send_close(close_record(msg.data.code, str(msg.data)))
                return
            elif msg.type is aiohttp.WSMsgType.CLOSING:
                return  # our own close() (from the stream side) is in progress
            else:  # CLOSED or ERROR: the connection broke without a close frame
                if not self._close_sent:
                    self.stream.reset(*self._lost)
                return
            self.messages_in += 1

    async def _write(self, record: bytes, *, end: bool = False) -> None:
        async with self._write_lock:  # records must not interleave
            if self._close_sent:
                return
            if end:
                self._close_sent = True
            await self.stream.write(record, end=end)

    async def _send_close(self, record: Close) -> None:
        await self._write(encode(record), end=True)

    # ----- stream -> WebSocket
    async def _stream_to_ws(self) -> None:
        try:
            while chunk := await self.stream.read():
                for record in self._decoder.feed(chunk):
                    await self._deliver(record)
            self._decoder.end()
        except RecordError as exc:
            self.stream.reset(ErrorCode.PROTOCOL_ERROR, str(exc))
            await self._on_stream_lost()
        except (StreamResetError, PeerGoneError) as exc:
            logger.debug("websocket stream %d lost: %s", self.stream.id, exc)
            await self._on_stream_lost()

    async def _deliver(self, record: Text | Binary | Close) -> None:
        match record:
            case Text(text=text):
                await self.ws.send_str(text)
                self.messages_out += 1
            case Binary(data=data):
                await self.ws.send_bytes(data)
                self.messages_out += 1
            case Close(code=code, reason=reason):
                if self._close_sent:
                    return  # the answer to our CLOSE: both directions are done
                # Close the WebSocket side; aiohttp waits for its answer (ws_close timeout).
                logger.debug("websocket stream %d: closed by the stream (%s %r)",
                             self.stream.id, code, reason)
                await self.ws.close(code=code or 1000, message=reason.encode())
                answer = self.ws.close_code
                if answer is None or answer == ABNORMAL:  # no answer in time, or it broke
                    self.stream.reset(*self._lost)
                    return
                self.close_code = answer
                await self._send_close(close_record(answer, ""))
