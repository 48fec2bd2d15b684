"""Events that ProxyConnection.receive_message() returns."""

from __future__ import annotations

from dataclasses import dataclass

from peerproxyd.protocol.heads import RequestHead, ResponseHead


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestReceived:
    """A whole request head arrived (server side). `end_stream`: no body follows."""

    stream_id: int
    head: RequestHead
    end_stream: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponseReceived:
    """A whole response head arrived (client side). `end_stream`: no body follows."""

    stream_id: int
    head: ResponseHead
    end_stream: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class DataReceived:
    """Body bytes, in order. Call `ProxyConnection.consumed()` once they are passed on."""

    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamReset:
    """The stream is gone. `remote`: the peer reset it; otherwise we did, for its error."""

    stream_id: int
    code: int
    reason: str
    remote: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowUpdated:
    """The peer allowed `increment` more body bytes on the stream."""

    stream_id: int
    increment: int


@dataclass(frozen=True, kw_only=True, slots=True)
class HeartbeatAcked:
    """The peer answered our heartbeat `seq`."""

    seq: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageDropped:
    """A message was invalid and concerned no stream we could reset; it was ignored."""

    reason: str


Event = (
    RequestReceived
    | ResponseReceived
    | DataReceived
    | StreamReset
    | WindowUpdated
    | HeartbeatAcked
    | MessageDropped
)
