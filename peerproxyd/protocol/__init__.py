"""The packet protocol, sans-IO: bytes in, events out, bytes to send. See docs/protocol.md."""

from peerproxyd.protocol.connection import Limits, ProxyConnection, Role
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
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_MESSAGE_SIZE,
    MAX_PAYLOAD,
    ErrorCode,
    Flag,
    Frame,
    pack_messages,
    parse_frame,
    split_message,
)
from peerproxyd.protocol.heads import RequestHead, ResponseHead

__all__ = [
    "HEADER_SIZE",
    "INITIAL_WINDOW",
    "MAX_MESSAGE_SIZE",
    "MAX_PAYLOAD",
    "DataReceived",
    "ErrorCode",
    "Event",
    "Flag",
    "Frame",
    "HeartbeatAcked",
    "Limits",
    "MessageDropped",
    "ProxyConnection",
    "RequestHead",
    "RequestReceived",
    "ResponseHead",
    "ResponseReceived",
    "Role",
    "StreamReset",
    "WindowUpdated",
    "pack_messages",
    "parse_frame",
    "split_message",
]
