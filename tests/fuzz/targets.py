"""The fuzz targets as plain functions: one input in, an AssertionError if the code under test
misbehaved. Shared by the hypothesis properties (test_targets.py), the atheris harnesses
(atheris_*.py) and the replay of every crash ever found (tests/fuzz/crashes/).

"Misbehaved": any exception but the parser's own error type, a value that does not survive
a round trip, or (viewer auth) a forged proof that is accepted. No hypothesis or atheris
import here, so the harnesses instrument only this file and peerproxyd.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from peerproxyd.errors import (
    AuthError,
    FingerprintError,
    LinkError,
    RemoteProtocolError,
    SignalingError,
)
from peerproxyd.protocol import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    ErrorCode,
    Frame,
    Limits,
    ProxyConnection,
    RequestHead,
    ResponseHead,
    Role,
    parse_frame,
)
from peerproxyd.protocol.heads import HeadError
from peerproxyd.protocol.http_headers import (
    BadRequest,
    check_request,
    downstream_response_headers,
    upstream_request_headers,
)
from peerproxyd.protocol.websocket import RecordDecoder, RecordError, encode
from peerproxyd.signaling.messages import MAX_MESSAGE_SIZE as MAX_SIGNAL_SIZE
from peerproxyd.signaling.messages import check_inbound, parse_message
from peerproxyd.signaling.messages import encode as encode_message
from peerproxyd.trust import viewer_auth as va

TESTS = Path(__file__).resolve().parents[1]
VECTORS = TESTS / "vectors"
CRASHES = Path(__file__).resolve().parent / "crashes"


# ----- frames


def check_frame(data: bytes, expected: Frame | None = None) -> None:
    """parse_frame() decodes `data` (to `expected`, when given) or raises RemoteProtocolError;
    what decodes encodes back to `data`; a fresh connection takes it without raising."""
    try:
        frame = parse_frame(data)
    except RemoteProtocolError as exc:
        assert expected is None, f"valid {expected} refused: {exc}"
        assert str(exc) and exc.code == ErrorCode.PROTOCOL_ERROR
        if len(data) >= HEADER_SIZE:
            assert exc.stream_id == int.from_bytes(data[:4], "big")
    else:
        assert HEADER_SIZE <= len(data) <= MAX_MESSAGE_SIZE
        assert bytes(frame) == data
        assert expected is None or frame == expected
    for role in Role:
        conn = ProxyConnection(role, Limits(max_streams=4))
        conn.receive_message(data)  # never raises: a bad message resets or is dropped
        for sent in conn.data_to_send():
            parse_frame(sent)  # and all it answers is valid


def frame_seeds() -> list[bytes]:
    """Every message of the shared vectors (valid and invalid)."""
    vectors = json.loads((VECTORS / "protocol.json").read_text())
    return [bytes.fromhex(v["hex"]) for v in vectors if "hex" in v]  # "pack" cases have lists


# ----- HTTP heads


def check_head(data: bytes) -> None:
    """A HEADERS block: decoded as a request and as a response, or HeadError; what decodes
    survives a round trip; the proxy policy refuses with BadRequest or passes on only
    printable targets and header values without CR, LF or NUL."""
    try:
        response = ResponseHead.decode(data)
    except HeadError as exc:
        assert str(exc)
    else:
        assert ResponseHead.decode(response.encode()) == response
        for name, value in downstream_response_headers(response.headers):
            assert not any(c in value for c in "\r\n\x00") and name
    try:
        request = RequestHead.decode(data)
    except HeadError as exc:
        assert str(exc)
        return
    assert RequestHead.decode(request.encode()) == request
    try:
        checked = check_request(request, max_body=1 << 20)
    except BadRequest as exc:
        assert str(exc) and exc.status in (400, 413)
        return
    target = checked.target
    assert target.isascii() and target.isprintable() and " " not in target, target
    assert not _escapes_base(target.split("?", 1)[0]), target
    for name, value in upstream_request_headers(request.headers, upstream_host="127.0.0.1:1",
                                          client_address="::1"):
        assert name and not any(c in value for c in "\r\n\x00"), (name, value)


def _escapes_base(path: str) -> bool:
    """A `.`/`..` segment or a backslash at any level of percent-decoding (the oracle for
    check_target, written independently of it)."""
    for _ in range(6):
        segments = [s.split(";", 1)[0] for s in path.split("/")]
        if "\\" in path or "." in segments or ".." in segments:
            return True
        path, before = unquote(path), path
        if path == before:
            return False
    return True


def head_seeds() -> list[bytes]:
    """Every complete header block of the shared vectors."""
    vectors = json.loads((VECTORS / "protocol.json").read_text())
    return [bytes.fromhex(v["payload_hex"]) for v in vectors
            if v.get("kind") == "headers" and "head" in v]


# ----- signaling messages


def check_signaling(text: str, max_size: int = MAX_SIGNAL_SIZE) -> None:
    """parse_message() returns a Message or raises SignalingError; check_inbound() only
    SignalingError; every parsed message can be sent on (encoded) and reads back the same."""
    try:
        message = parse_message(text, max_size)
    except SignalingError as exc:
        assert exc.code in ("too-large", "bad-message") and exc.message
        return
    try:
        check_inbound(message)
    except SignalingError as exc:
        assert exc.code == "bad-message" and exc.message
    encoded = encode_message(message)  # the server relays what it parsed: it must encode
    assert parse_message(encoded, 4 * len(encoded) + 64) == message


# ----- viewer auth: the daemon's decision and the viewer's readings

TOKENS = {"alice": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
          "bob": "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8",
          "carol": "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8"}
NOW = datetime(2030, 1, 1, tzinfo=UTC)
VIEWER_FP = bytes(range(32))
DEVICE_FP = bytes(range(100, 132))


def _record(name: str, *, revoked: bool = False, expired: bool = False) -> va.ViewerRecord:
    return va.ViewerRecord(
        name=name, key=va.token_key(TOKENS[name]), service="camera", created=NOW - timedelta(1),
        expires=NOW - timedelta(seconds=1) if expired else None,
        revoked=NOW - timedelta(1) if revoked else None)


STORE = {"alice": _record("alice"), "bob": _record("bob", revoked=True),
         "carol": _record("carol", expired=True)}


def true_mac(name: str, viewer_fp: bytes = VIEWER_FP, device_fp: bytes = DEVICE_FP) -> bytes:
    """The MAC a viewer holding `name`'s token sends."""
    return token_mac(TOKENS[name], viewer_fp, device_fp)


def token_mac(token: str, viewer_fp: bytes = VIEWER_FP, device_fp: bytes = DEVICE_FP) -> bytes:
    """The MAC made with `token`, computed here from docs/security.md 1.5."""
    text = f"peerproxyd-auth-v1\n{_sdp_form(viewer_fp)}\n{_sdp_form(device_fp)}"
    key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _sdp_form(fingerprint: bytes) -> str:
    return ":".join(f"{b:02X}" for b in fingerprint)


def check_auth(message: str | bytes) -> None:
    """The daemon reads a viewer's first message with STORE's viewers on the fixed DTLS
    fingerprints: granted only for the right MAC of an active viewer; refused with an
    AuthError otherwise, and with `revoked`/`expired` only after a right MAC."""
    try:
        auth = va.parse_auth(message)
    except AuthError as exc:
        assert exc.code == va.AuthCode.BAD_AUTH and exc.message
        return
    record = STORE.get(auth.viewer)
    right = auth.viewer in TOKENS and hmac.compare_digest(auth.mac, true_mac(auth.viewer))
    try:
        granted = va.decide(record, auth, viewer_fp=VIEWER_FP, device_fp=DEVICE_FP, now=NOW)
    except AuthError as exc:
        if not right or record is None:
            assert exc.code == va.AuthCode.UNAUTHORIZED, exc
        else:
            assert auth.viewer != "alice", f"right proof refused: {exc}"
            assert exc.code == {"bob": "revoked", "carol": "expired"}[auth.viewer], exc
        return
    assert right and auth.viewer == "alice", f"forged proof accepted: {message!r}"
    assert granted == va.Granted(viewer="alice", service="camera", expires=None)


def check_auth_reply(message: str | bytes) -> None:
    """The viewer reads the daemon's answer: Granted, or an AuthError."""
    try:
        granted = va.parse_auth_reply(message)
    except AuthError as exc:
        assert isinstance(exc.code, str) and isinstance(exc.message, str)
        return
    assert isinstance(granted.viewer, str) and isinstance(granted.service, str)
    assert granted.expires is None or granted.expires.tzinfo is not None


def check_link(text: str) -> None:
    """A share link parses (and its printed form parses back to the same) or raises
    LinkError."""
    try:
        link = va.parse_link(text)
    except LinkError as exc:
        assert str(exc)
        return
    assert va.parse_link(str(link)) == link


def check_answer_sdp(sdp: str) -> None:
    """The viewer's check of the answer: FingerprintError unless the SDP's one sha-256
    fingerprint is the pinned DEVICE_FP."""
    try:
        va.check_pinned(sdp, DEVICE_FP)
    except FingerprintError as exc:
        assert str(exc)
        return
    assert va.fingerprint_from_sdp(sdp) == DEVICE_FP


def auth_seeds() -> dict[str, Any]:
    """The worked examples of tests/vectors/auth.json."""
    return json.loads((VECTORS / "auth.json").read_text())


# ----- WebSocket records


def check_websocket(data: bytes, cuts: list[int], end: bool, max_message: int) -> None:
    """The records of `data` (or the error text) are the same whether it is fed whole or cut
    at `cuts`; only RecordError is raised; what decodes encodes back to its bytes."""
    whole = _decode_records(data, [], end, max_message)
    assert _decode_records(data, cuts, end, max_message) == whole
    records, consumed = whole
    if isinstance(records, list):
        assert b"".join(encode(r) for r in records) == data[:consumed]


def _decode_records(
    data: bytes, cuts: list[int], end: bool, max_message: int
) -> tuple[list[Any] | str, int]:
    """(records or the error text, bytes in complete records) of feeding `data` in pieces."""
    decoder = RecordDecoder(max_message)
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    records: list[Any] = []
    try:
        for a, b in zip(bounds, bounds[1:]):
            records += decoder.feed(data[a:b])
        if end:
            decoder.end()
    except RecordError as exc:
        assert str(exc)
        return str(exc), -1
    return records, len(data) - decoder.buffered - (5 if decoder._need else 0)


def websocket_seeds() -> list[bytes]:
    return [bytes.fromhex(v["hex"]) for v in json.loads((VECTORS / "websocket.json").read_text())]
