"""Wire format of the signaling server: JSON text frames, one object per frame.

    {"type": str, "to"?: str, "from"?: str, "payload"?: object, ...}

SANS-IO: parsing, encoding, device-id rules and a token bucket. No asyncio here; the
server (server.py) and the client (client.py) move the text.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

from peerproxyd import names
from peerproxyd.errors import SignalingError

MAX_MESSAGE_SIZE = 64 * 1024

RELAY_TYPES = frozenset({"offer", "answer", "candidate", "bye", "restart"})
"""Types the server forwards to the `to` peer, with `from` set to the sender. `restart`: the
device asks a viewer for an ICE-restart offer (docs/network.md, "Network changes")."""
CLIENT_TYPES = RELAY_TYPES | {"register"}
"""Types a connection may send to the server."""
MESSAGE_TYPES = CLIENT_TYPES | {"hello", "registered", "error"}

PEER_ID = re.compile(r"c-[0-9a-f]{16}")
"""Ids the server gives anonymous connections ("c-" + 16 hex digits); no device may take one."""

_NEEDS_PAYLOAD = frozenset({"offer", "answer", "candidate"})
_REQUIRED_STRINGS: dict[str, tuple[str, ...]] = {
    "hello": ("id",),
    "register": ("device", "key", "signature"),
    "registered": ("device",),
    "error": ("code", "message"),
}


def valid_device_id(device_id: str) -> bool:
    """True if `device_id` has the form of a device id (derived from a device key, see
    identity.py); such an id can never be a peer id."""
    return names.valid_device_id(device_id)


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """One signaling message. `from_` is the JSON key "from"; other keys live in `extra`."""

    type: str
    to: str | None = None
    from_: str | None = None
    payload: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """An extra field, e.g. msg.get("code") of an error or msg.get("id") of a hello."""
        return self.extra.get(key, default)


def error_message(code: str, message: str, **extra: Any) -> Message:
    """An error message as the server sends it (`ref`, `to` and the like go in extra)."""
    return Message(type="error", extra={"code": code, "message": message, **extra})


def _short(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _bad(message: str) -> NoReturn:
    raise SignalingError("bad-message", message)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    """A JSON number as a float; 1e999 would read as inf, which encode() cannot write back."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def parse_message(text: str, max_size: int = MAX_MESSAGE_SIZE) -> Message:
    """Parse one text frame. Raise SignalingError "too-large" or "bad-message"."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if size > max_size:
        raise SignalingError(
            "too-large", f"message of {size} bytes exceeds the limit of {max_size} bytes"
        )
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        _bad(f"message is not valid JSON: {exc.msg} at position {exc.pos}")
    except ValueError as exc:
        _bad(f"message is not valid JSON: {exc}")
    except RecursionError:
        _bad("message is nested too deeply")
    if not isinstance(data, dict):
        _bad("message is not a JSON object")
    kind = data.pop("type", None)
    if not isinstance(kind, str):
        _bad("message needs a 'type' string")
    if kind not in MESSAGE_TYPES:
        _bad(f"unknown message type {_short(kind)}")
    to = data.pop("to", None)
    if to is not None and not isinstance(to, str):
        _bad("'to' must be a string")
    from_ = data.pop("from", None)
    if from_ is not None and not isinstance(from_, str):
        _bad("'from' must be a string")
    payload = data.pop("payload", None)
    if payload is not None and not isinstance(payload, dict):
        _bad("'payload' must be an object")
    for name in _REQUIRED_STRINGS.get(kind, ()):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            _bad(f"{kind} message needs a non-empty '{name}' string")
    return Message(type=kind, to=to, from_=from_, payload=payload, extra=data)


def check_inbound(msg: Message) -> None:
    """Rules for messages a connection sends to the server, on top of parse_message()."""
    if msg.type not in CLIENT_TYPES:
        _bad(f"message type {_short(msg.type)} cannot be sent to the server")
    if msg.type in RELAY_TYPES:
        if not msg.to:
            _bad(f"{msg.type} message needs a non-empty 'to' string")
        if msg.type in _NEEDS_PAYLOAD and msg.payload is None:
            _bad(f"{msg.type} message needs a 'payload' object")


def encode(msg: Message) -> str:
    """The JSON text of `msg`: type, to, from, payload (those that are set), then extra."""
    data: dict[str, Any] = {"type": msg.type}
    if msg.to is not None:
        data["to"] = msg.to
    if msg.from_ is not None:
        data["from"] = msg.from_
    if msg.payload is not None:
        data["payload"] = msg.payload
    for key, value in msg.extra.items():
        data.setdefault(key, value)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; each message takes one.

    The bucket starts full. `now` is any monotonic clock in seconds (loop.time()).
    """

    __slots__ = ("rate", "burst", "tokens", "_last")

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self._last is not None and now > self._last:
            self.tokens = min(float(self.burst), self.tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
