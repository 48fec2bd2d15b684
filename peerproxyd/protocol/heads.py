"""Request and response heads: the JSON carried by a stream's HEADERS messages."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from peerproxyd.errors import RemoteProtocolError
from peerproxyd.names import valid_service_name

Headers = tuple[tuple[str, str], ...]

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # JSON "\\ud800" escapes decode to these; not UTF-8
_FORBIDDEN_IN_TARGET = re.compile(r"[\x00-\x20\x7f#\ud800-\udfff]")


class HeadError(ValueError):
    """A head is malformed; the caller turns it into a RemoteProtocolError for its stream."""


def _headers(raw: Any) -> Headers:
    if not isinstance(raw, list):
        raise HeadError("headers must be a list of [name, value] pairs")
    pairs = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, str) for x in item)
        ):
            raise HeadError("headers must be a list of [name, value] pairs")
        name, value = item
        if not TOKEN.fullmatch(name):
            raise HeadError(f"invalid header name {name!r}")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise HeadError(f"header {name!r} has CR, LF or NUL in its value")
        if _SURROGATE.search(value):
            raise HeadError(f"header {name!r} has a lone surrogate in its value")
        pairs.append((name, value))
    return tuple(pairs)


def _object(data: bytes, keys: set[str]) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode())
    except RecursionError:
        raise HeadError("header block is nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError, and int() over 4300 digits
        raise HeadError(f"header block is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise HeadError("header block must be a JSON object")
    missing = keys - obj.keys()
    if missing:
        raise HeadError(f"header block lacks {', '.join(sorted(missing))}")
    return obj


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestHead:
    method: str
    target: str
    headers: Headers = ()
    service: str
    websocket: bool = False
    """The stream carries a WebSocket (docs/protocol.md §12); the key is written only if true."""

    def encode(self) -> bytes:
        obj = {
            "method": self.method,
            "target": self.target,
            "headers": [list(h) for h in self.headers],
            "service": self.service,
        }
        if self.websocket:
            obj["websocket"] = True
        return _encode(obj)

    @classmethod
    def decode(cls, data: bytes) -> RequestHead:
        obj = _object(data, {"method", "target", "headers", "service"})
        method, target, service = obj["method"], obj["target"], obj["service"]
        if not isinstance(method, str) or not TOKEN.fullmatch(method):
            raise HeadError(f"invalid method {method!r}")
        if (
            not isinstance(target, str)
            or not target.startswith("/")
            or target.startswith("//")
            or _FORBIDDEN_IN_TARGET.search(target)
        ):
            raise HeadError(f"target {target!r} is not in origin-form")
        if not isinstance(service, str) or not valid_service_name(service):
            raise HeadError(f"invalid service name {service!r}")
        websocket = "websocket" in obj
        if websocket and obj["websocket"] is not True:
            raise HeadError("websocket must be true")
        if websocket and method != "GET":
            raise HeadError("a websocket stream must use GET")
        return cls(
            method=method,
            target=target,
            headers=_headers(obj["headers"]),
            service=service,
            websocket=websocket,
        )

    def get(self, name: str) -> str | None:
        return _get(self.headers, name)


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponseHead:
    status: int
    headers: Headers = ()

    def encode(self) -> bytes:
        return _encode({"status": self.status, "headers": [list(h) for h in self.headers]})

    @classmethod
    def decode(cls, data: bytes) -> ResponseHead:
        obj = _object(data, {"status", "headers"})
        status = obj["status"]
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise HeadError(f"invalid status {status!r}")
        return cls(status=status, headers=_headers(obj["headers"]))

    def get(self, name: str) -> str | None:
        return _get(self.headers, name)


def _get(headers: Headers, name: str) -> str | None:
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def head_error(exc: HeadError, stream_id: int) -> RemoteProtocolError:
    return RemoteProtocolError(str(exc), code=1, stream_id=stream_id)
