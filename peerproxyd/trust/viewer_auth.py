"""Viewer access, sans-IO: share links, DTLS fingerprints, the channel-binding MAC, the auth
messages and the daemon's decision (docs/security.md 1.3 and 1.5).

Pure functions only; the viewer store's file is viewers.py (its records are `ViewerRecord`s,
here), the data channel is device/peer.py (daemon) and client/native.py (native viewer).
Readings of the contract this module fixes, shared with the browser client through
tests/vectors/auth.json: `K = sha256(UTF-8 of the b64u token text)`; a fingerprint's SDP
form is the 95-character `AB:CD:...` value without the attribute name; SDP fingerprints are
read case-insensitively and used in uppercase.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from peerproxyd import b64u
from peerproxyd.errors import AuthError, FingerprintError, LinkError
from peerproxyd.names import origin_label, valid_device_id, valid_service_name

def sdp_fingerprint(digest: bytes) -> str:
    """A sha-256 fingerprint in SDP form: 32 uppercase hex pairs joined by ':' (the value of
    `a=fingerprint:sha-256 ...`, as aiortc and browsers write it)."""
    return ":".join(f"{b:02X}" for b in digest)


LINK_VERSION = "1"
LINK_KEYS = ("v", "d", "s", "n", "t", "f")
VIEWER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
TOKEN_BYTES = 32
FINGERPRINT_BYTES = 32
MAX_AUTH_MESSAGE = 1024
"""Bytes of UTF-8: a well-formed auth message is under 200; anything longer is refused
unparsed."""
MAC_LABEL = "peerproxyd-auth-v1"
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31}")


class AuthCode(StrEnum):
    """The `code` of an auth-error message."""

    UNAUTHORIZED = "unauthorized"
    REVOKED = "revoked"
    EXPIRED = "expired"
    BAD_AUTH = "bad-auth"
    TOO_MANY_PEERS = "too-many-peers"


# ----- encodings
def _decode_exact(text: str, size: int) -> bytes | None:
    """The `size` bytes that `text` (strict base64url, no padding) encodes, or None."""
    try:
        data = b64u.decode(text)
    except ValueError:
        return None
    return data if len(data) == size else None


def format_time(when: datetime | None) -> str | None:
    """ISO 8601 in UTC to the second, `2030-01-02T03:04:05Z`; None stays None."""
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with a zone (ValueError otherwise), in UTC."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return when.astimezone(UTC)


def valid_viewer_name(name: str) -> bool:
    return VIEWER_NAME.fullmatch(name) is not None


def check_viewer_name(name: str) -> str:
    if not valid_viewer_name(name):
        raise ValueError(f"invalid viewer name {name!r} (1-64 characters of A-Z a-z 0-9 . _ -)")
    return name


def token_key(token: str) -> bytes:
    """K = sha256(token): the MAC key, and (in hex) what the viewer store keeps."""
    return hashlib.sha256(token.encode("utf-8")).digest()


# ----- fingerprints
def fingerprint_from_sdp(sdp: str) -> bytes:
    """The 32 bytes of the SDP's one `a=fingerprint:sha-256` line (session or media level;
    other hash functions are ignored). FingerprintError if there is not exactly one, or it is
    malformed."""
    found: list[str] = []
    for line in sdp.splitlines():
        line = line.strip()
        if not line.lower().startswith("a=fingerprint:"):
            continue
        algorithm, _, value = line[len("a=fingerprint:") :].strip().partition(" ")
        if algorithm.lower() == "sha-256":
            found.append(value.strip())
    if not found:
        raise FingerprintError("the SDP has no a=fingerprint:sha-256 line")
    if len(found) > 1:
        raise FingerprintError(
            f"the SDP has {len(found)} a=fingerprint:sha-256 lines; exactly one is required"
        )
    if not _HEX_PAIRS.fullmatch(found[0]):
        raise FingerprintError(f"malformed sha-256 fingerprint in the SDP: {found[0][:120]!r}")
    return bytes.fromhex(found[0].replace(":", ""))


def check_pinned(sdp: str, pinned: bytes) -> None:
    """The viewer's check of the answer (1.5 step 1): FingerprintError unless its sha-256
    fingerprint is the pinned one."""
    got = fingerprint_from_sdp(sdp)
    if not hmac.compare_digest(got, pinned):
        raise FingerprintError(
            "the device's identity does not match the link: its DTLS fingerprint is "
            f"{sdp_fingerprint(got)}, the link pins {sdp_fingerprint(pinned)} "
            "(the signaling server or the network tried to intercept the connection)"
        )


def auth_mac(key: bytes, viewer_fp: bytes, device_fp: bytes) -> bytes:
    """HMAC-SHA256(K, "peerproxyd-auth-v1\\n" + VIEWER_FP + "\\n" + DEVICE_FP), SDP forms."""
    text = f"{MAC_LABEL}\n{sdp_fingerprint(viewer_fp)}\n{sdp_fingerprint(device_fp)}"
    return hmac.new(key, text.encode("ascii"), hashlib.sha256).digest()


# ----- share links (1.3)
@dataclass(frozen=True, kw_only=True)
class ShareLink:
    """What a share link says: where (scheme and signaling host) and who."""

    scheme: str
    host: str
    """The signaling host, with `:port` if any: the link's host without its first label."""
    device: str
    service: str
    name: str
    token: str
    fingerprint: bytes

    @property
    def key(self) -> bytes:
        return token_key(self.token)

    @property
    def signal_url(self) -> str:
        """http -> ws, https -> wss; the host without its first label; path /ws."""
        return f"{'wss' if self.scheme == 'https' else 'ws'}://{self.host}/ws"

    def __str__(self) -> str:
        fragment = "&".join(
            f"{k}={v}"
            for k, v in (("v", LINK_VERSION), ("d", self.device), ("s", self.service),
                         ("n", self.name), ("t", self.token), ("f", b64u.encode(self.fingerprint)))
        )
        return f"{self.scheme}://{origin_label(self.device, self.service)}.{self.host}/#{fragment}"


def build_link(
    base_url: str, *, device: str, service: str, name: str, token: str, fingerprint: bytes
) -> str:
    """`<scheme>://<device>--<service>.<base host>[:port]/#v=1&d=..&s=..&n=..&t=..&f=..`.
    ValueError if a part cannot go in a link."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base URL must be http(s)://host[:port], got {base_url!r}")
    if not _is_dns_name(parts.hostname):
        raise ValueError(
            f"base URL host must be a DNS name (browsers reach <device>--<service>.<host>), "
            f"got {parts.hostname!r}"
        )
    if _decode_exact(token, TOKEN_BYTES) is None:
        raise ValueError("token must be base64url of 32 bytes")
    if len(fingerprint) != FINGERPRINT_BYTES:
        raise ValueError("fingerprint must be 32 bytes")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    link = ShareLink(scheme=parts.scheme, host=host, device=device, service=service,
                     name=check_viewer_name(name), token=token, fingerprint=fingerprint)
    return str(link)  # origin_label() checks device and service


def parse_link(text: str) -> ShareLink:
    """Read a share link; LinkError saying what is wrong."""
    try:
        parts = urlsplit(text.strip())
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:
        raise LinkError(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise LinkError(f"link scheme must be http or https, got {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise LinkError("link must not contain a user name or password")
    if not parts.fragment:
        raise LinkError("link has no #fragment with the viewer's credentials")
    try:
        pairs = parse_qsl(parts.fragment, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise LinkError("link fragment is not key=value pairs joined by &") from None
    values: dict[str, str] = {}
    for key, value in pairs:
        if key in values:
            raise LinkError(f"link repeats {key}")
        values[key] = value
    missing = [k for k in LINK_KEYS if k not in values]
    if missing:
        raise LinkError(f"link lacks {', '.join(missing)}")
    if values["v"] != LINK_VERSION:
        raise LinkError(f"unsupported link version {values['v']!r} (expected {LINK_VERSION})")
    device, service, name = values["d"], values["s"], values["n"]
    if not valid_device_id(device):
        raise LinkError(f"link d is not a device id: {device!r}")
    if not valid_service_name(service):
        raise LinkError(f"link s is not a service name: {service!r}")
    if not valid_viewer_name(name):
        raise LinkError(f"invalid viewer name {name!r} (1-64 characters of A-Z a-z 0-9 . _ -)")
    if _decode_exact(values["t"], TOKEN_BYTES) is None:
        raise LinkError("link t must be base64url of 32 bytes")
    fingerprint = _decode_exact(values["f"], FINGERPRINT_BYTES)
    if fingerprint is None:
        raise LinkError("link f must be base64url of 32 bytes")
    prefix = f"{device}--{service}."
    host = hostname or ""
    if not host.startswith(prefix) or len(host) == len(prefix):
        raise LinkError(f"link host must start with {prefix!r}, got {host!r}")
    signal_host = host[len(prefix) :] + (f":{port}" if port else "")
    return ShareLink(scheme=parts.scheme, host=signal_host, device=device, service=service,
                     name=name, token=values["t"], fingerprint=fingerprint)


def base_url_from_signaling(url: str) -> str:
    """The default base of share links: the signaling URL with ws -> http, wss -> https,
    127.0.0.1 and ::1 -> localhost, the path dropped."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    host = parts.hostname
    if host in ("127.0.0.1", "::1"):
        host = "localhost"
    return f"{scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _is_dns_name(host: str) -> bool:
    labels = host.split(".")
    return all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) for label in labels) \
        and not re.fullmatch(r"[0-9.]+", host)


# ----- messages (1.5)
@dataclass(frozen=True, kw_only=True)
class AuthMessage:
    viewer: str
    mac: bytes
    packed: bool = False
    """The viewer asks for packed messages (docs/protocol.md §1.1)."""


@dataclass(frozen=True, kw_only=True)
class Granted:
    """auth-ok: the viewer may use `service` until `expires` (None: no expiry)."""

    viewer: str
    service: str
    expires: datetime | None
    packed: bool = False
    """Both ends send packed messages from now on (the viewer asked, the daemon agreed)."""


def encode_auth(viewer: str, mac: bytes, *, packed: bool = False) -> str:
    """`packed`: ask for packed messages (the key is written only when true)."""
    obj: dict[str, Any] = {"type": "auth", "v": 1, "viewer": viewer, "mac": b64u.encode(mac)}
    return _json(obj | {"packed": True} if packed else obj)


def encode_auth_ok(granted: Granted) -> str:
    obj = {"type": "auth-ok", "viewer": granted.viewer, "service": granted.service,
           "expires": format_time(granted.expires)}
    return _json(obj | {"packed": True} if granted.packed else obj)


def encode_auth_error(error: AuthError) -> str:
    return _json({"type": "auth-error", "code": error.code, "message": error.message})


def parse_auth(message: str | bytes) -> AuthMessage:
    """The daemon's reading of the viewer's first message; AuthError `bad-auth` if it is not
    a well-formed auth message (a binary message included)."""
    if isinstance(message, bytes):
        raise _bad("expected a text auth message, got a binary message")
    obj = _object(message)
    if obj.get("type") != "auth":
        raise _bad(f"expected type 'auth', got {_short(obj.get('type'))}")
    version = obj.get("v")
    if type(version) is not int or version != 1:
        raise _bad(f"unsupported auth version {_short(version)} (expected 1)")
    viewer = obj.get("viewer")
    if not isinstance(viewer, str) or not valid_viewer_name(viewer):
        raise _bad(f"invalid viewer name {_short(viewer)}")
    mac_text = obj.get("mac")
    mac = _decode_exact(mac_text, 32) if isinstance(mac_text, str) else None
    if mac is None:
        raise _bad("mac must be base64url of 32 bytes")
    return AuthMessage(viewer=viewer, mac=mac, packed=obj.get("packed") is True)


def parse_auth_reply(message: str | bytes) -> Granted:
    """The viewer's reading of the daemon's answer: Granted for auth-ok; the AuthError of an
    auth-error; AuthError `bad-auth` for anything else."""
    if isinstance(message, bytes):
        raise _bad("expected a text auth-ok or auth-error, got a binary message")
    obj = _object(message)
    kind = obj.get("type")
    if kind == "auth-error":
        code, text = obj.get("code"), obj.get("message")
        if not isinstance(code, str) or not isinstance(text, str):
            raise _bad("auth-error lacks a code or message")
        raise AuthError(code[:64], text[:500])
    if kind != "auth-ok":
        raise _bad(f"expected auth-ok or auth-error, got {_short(kind)}")
    viewer, service, expires = obj.get("viewer"), obj.get("service"), obj.get("expires")
    if not isinstance(viewer, str) or not isinstance(service, str):
        raise _bad("auth-ok lacks viewer or service")
    when = None
    if expires is not None:
        try:
            when = parse_time(expires if isinstance(expires, str) else "")
        except ValueError:
            raise _bad(f"auth-ok expires is not an ISO 8601 time: {_short(expires)}") from None
    return Granted(viewer=viewer, service=service, expires=when, packed=obj.get("packed") is True)


def _object(message: str) -> dict[str, Any]:
    if len(message) > MAX_AUTH_MESSAGE or len(message.encode("utf-8", "replace")) > MAX_AUTH_MESSAGE:
        raise _bad(f"auth message longer than {MAX_AUTH_MESSAGE} bytes")
    try:
        obj = json.loads(message)
    except (ValueError, RecursionError):
        raise _bad("auth message is not JSON") from None
    if not isinstance(obj, dict):
        raise _bad("auth message must be a JSON object")
    return obj


def _bad(message: str) -> AuthError:
    return AuthError(AuthCode.BAD_AUTH, message)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ----- the decision (1.5 step 3)
ViewerState = Literal["active", "revoked", "expired"]


@dataclass(frozen=True, kw_only=True)
class ViewerRecord:
    name: str
    key: bytes
    """sha256(token): the MAC key."""
    service: str
    created: datetime
    expires: datetime | None
    revoked: datetime | None

    def state(self, now: datetime) -> ViewerState:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"


_NOBODY = hashlib.sha256(b"peerproxyd: no such viewer").digest()


def decide(
    record: ViewerRecord | None,
    message: AuthMessage,
    *,
    viewer_fp: bytes,
    device_fp: bytes,
    now: datetime,
) -> Granted:
    """Granted, or AuthError: `unauthorized` for an unknown name or a wrong MAC (not told
    apart, and the MAC is computed either way); `revoked`/`expired` only after a right MAC."""
    key = record.key if record is not None else _NOBODY
    expected = auth_mac(key, viewer_fp, device_fp)
    if not hmac.compare_digest(expected, message.mac) or record is None:
        raise AuthError(AuthCode.UNAUTHORIZED, "unknown viewer or wrong key")
    refusal = access_refusal(record, now)
    if refusal is not None:
        raise refusal
    return Granted(viewer=record.name, service=record.service, expires=record.expires)


def access_refusal(record: ViewerRecord | None, now: datetime) -> AuthError | None:
    """Why a viewer that authenticated may no longer be served (revoked, expired, deleted),
    or None: the check a live session gets every second."""
    if record is None:
        return AuthError(AuthCode.UNAUTHORIZED, "unknown viewer or wrong key")
    if record.revoked is not None:
        return AuthError(
            AuthCode.REVOKED, f"viewer {record.name} was revoked at {format_time(record.revoked)}"
        )
    if record.expires is not None and record.expires <= now:
        return AuthError(
            AuthCode.EXPIRED, f"viewer {record.name} expired at {format_time(record.expires)}"
        )
    return None
