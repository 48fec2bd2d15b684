"""viewer_auth: share links, SDP fingerprints, the MAC and the auth messages, against the
worked examples in tests/vectors/auth.json (computed independently of this code)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from peerproxyd.errors import AuthError, FingerprintError, LinkError
from peerproxyd.trust.viewer_auth import (
    AuthCode,
    AuthMessage,
    Granted,
    ViewerRecord,
    auth_mac,
    base_url_from_signaling,
    build_link,
    check_pinned,
    decide,
    encode_auth,
    encode_auth_error,
    encode_auth_ok,
    fingerprint_from_sdp,
    parse_auth,
    parse_auth_reply,
    parse_link,
    sdp_fingerprint,
    token_key,
)

VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "auth.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
NOW = datetime(2030, 1, 1, tzinfo=UTC)
DEVICE = VECTORS["links"][0]["fields"]["d"]


def _fp(sdp_form: str) -> bytes:
    return bytes.fromhex(sdp_form.replace(":", ""))


def test_generator_output_matches_committed_file() -> None:
    generator = VECTORS_PATH.parent / "generate_auth.py"
    result = subprocess.run([sys.executable, str(generator), "--check"], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


@pytest.mark.parametrize("vector", VECTORS["links"], ids=lambda v: v["name"])
def test_link_vector(vector: dict[str, Any]) -> None:
    link = parse_link(vector["link"])
    fields = vector["fields"]
    assert (link.device, link.service, link.name, link.token) == (
        fields["d"], fields["s"], fields["n"], fields["t"]
    )
    assert sdp_fingerprint(link.fingerprint) == vector["fingerprint"]
    assert link.key.hex() == vector["key_hex"]
    assert link.signal_url == vector["signal_url"]
    # Building it again gives the canonical order v d s n t f.
    rebuilt = parse_link(str(link))
    assert rebuilt == link
    if "#v=1&d=" in vector["link"]:
        assert str(link) == vector["link"]


@pytest.mark.parametrize("vector", VECTORS["invalid_links"], ids=lambda v: v["name"])
def test_invalid_link_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(LinkError) as info:
        parse_link(vector["link"])
    assert str(info.value) == vector["error"]


@pytest.mark.parametrize("vector", VECTORS["macs"], ids=lambda v: v["name"])
def test_mac_vector(vector: dict[str, Any]) -> None:
    key = token_key(vector["token"])
    assert key.hex() == vector["key_hex"]
    mac = auth_mac(key, _fp(vector["viewer_fp"]), _fp(vector["device_fp"]))
    assert encode_auth("x", mac).endswith(f'"mac":"{vector["mac"]}"}}')
    assert vector["input"] == (
        f"peerproxyd-auth-v1\n{vector['viewer_fp']}\n{vector['device_fp']}"
    )


def test_macs_differ_per_session() -> None:
    assert len({v["mac"] for v in VECTORS["macs"]}) == len(VECTORS["macs"])


@pytest.mark.parametrize("vector", VECTORS["sdp"], ids=lambda v: v["name"])
def test_sdp_vector(vector: dict[str, Any]) -> None:
    if "error" in vector:
        with pytest.raises(FingerprintError) as info:
            fingerprint_from_sdp(vector["sdp"])
        assert str(info.value) == vector["error"]
    else:
        assert sdp_fingerprint(fingerprint_from_sdp(vector["sdp"])) == vector["fingerprint"]


def test_message_vectors_are_what_we_write() -> None:
    texts = {v["name"]: v["text"] for v in VECTORS["messages"]}
    mac = VECTORS["macs"][0]["mac"]
    assert parse_auth(texts["auth"]).viewer == "alice"
    assert encode_auth("alice", parse_auth(texts["auth"]).mac) == texts["auth"]
    assert json.loads(texts["auth"])["mac"] == mac
    granted = parse_auth_reply(texts["auth-ok"])
    assert granted == Granted(
        viewer="alice", service="camera", expires=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    assert encode_auth_ok(granted) == texts["auth-ok"]
    assert encode_auth_ok(parse_auth_reply(texts["auth-ok, no expiry"])) == texts[
        "auth-ok, no expiry"
    ]
    # Packing (docs/protocol.md §1.1): asked for, agreed to; absent means unpacked.
    asked = parse_auth(texts["auth, packed"])
    assert asked.packed and not parse_auth(texts["auth"]).packed
    assert encode_auth("alice", asked.mac, packed=True) == texts["auth, packed"]
    agreed = parse_auth_reply(texts["auth-ok, packed"])
    assert agreed.packed and not granted.packed
    assert encode_auth_ok(agreed) == texts["auth-ok, packed"]
    assert not parse_auth(texts["auth"][:-1] + ',"packed":1}').packed  # only true asks
    with pytest.raises(AuthError) as info:
        parse_auth_reply(texts["auth-error"])
    assert info.value.code == "revoked"
    assert encode_auth_error(info.value) == texts["auth-error"]


def test_check_pinned() -> None:
    vector = VECTORS["sdp"][0]
    check_pinned(vector["sdp"], _fp(vector["fingerprint"]))
    with pytest.raises(FingerprintError, match="does not match the link"):
        check_pinned(vector["sdp"], bytes(32))


def test_build_link_and_base_url() -> None:
    token = VECTORS["macs"][0]["token"]
    link = build_link("http://localhost:8787", device=DEVICE, service="dashboard",
                      name="demo", token=token, fingerprint=bytes(32))
    assert link.startswith(f"http://{DEVICE}--dashboard.localhost:8787/#v=1&d={DEVICE}&s=dashboard")
    assert parse_link(link).signal_url == "ws://localhost:8787/ws"
    assert base_url_from_signaling("ws://127.0.0.1:8787/ws") == "http://localhost:8787"
    assert base_url_from_signaling("ws://[::1]:99/ws") == "http://localhost:99"
    assert base_url_from_signaling("wss://signal.example.net/ws") == "https://signal.example.net"
    with pytest.raises(ValueError, match="DNS name"):
        build_link("http://10.0.0.1:8787", device=DEVICE, service="s", name="n", token=token,
                   fingerprint=bytes(32))
    with pytest.raises(ValueError, match="invalid viewer name"):
        build_link("https://x.example", device=DEVICE, service="s", name="a b", token=token,
                   fingerprint=bytes(32))
    with pytest.raises(ValueError, match="base URL"):
        build_link("ws://x.example", device=DEVICE, service="s", name="n", token=token,
                   fingerprint=bytes(32))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b'{"type":"auth"}', "expected a text auth message, got a binary message"),
        ("x" * 1025, "auth message longer than 1024 bytes"),
        ("é" * 600, "auth message longer than 1024 bytes"),
        ("{", "auth message is not JSON"),
        ("[" * 100_000, "auth message longer than 1024 bytes"),
        ("[1]", "auth message must be a JSON object"),
        ('{"type":"hello"}', "expected type 'auth', got 'hello'"),
        ('{"type":"auth","v":true}', "unsupported auth version True (expected 1)"),
        ('{"type":"auth","v":2}', "unsupported auth version 2 (expected 1)"),
        ('{"type":"auth","v":1,"viewer":"a b"}', "invalid viewer name 'a b'"),
        ('{"type":"auth","v":1,"viewer":"a","mac":"AAAA"}', "mac must be base64url of 32 bytes"),
        ('{"type":"auth","v":1,"viewer":"a","mac":5}', "mac must be base64url of 32 bytes"),
    ],
)
def test_malformed_auth_is_bad_auth(message: str | bytes, error: str) -> None:
    with pytest.raises(AuthError) as info:
        parse_auth(message)
    assert (info.value.code, info.value.message) == (AuthCode.BAD_AUTH, error)


@pytest.mark.parametrize(
    "text",
    ['{"type":"hello"}', '{"type":"auth-error","code":1}', '{"type":"auth-ok","viewer":"a"}',
     '{"type":"auth-ok","viewer":"a","service":"s","expires":"tomorrow"}',
     '{"type":"auth-ok","viewer":"a","service":"s","expires":"2030-01-01T00:00:00"}'],
)
def test_malformed_reply_is_bad_auth(text: str) -> None:
    with pytest.raises(AuthError) as info:
        parse_auth_reply(text)
    assert info.value.code == AuthCode.BAD_AUTH


# ----- decide
VIEWER_FP = _fp(VECTORS["macs"][0]["viewer_fp"])
DEVICE_FP = _fp(VECTORS["macs"][0]["device_fp"])
TOKEN = VECTORS["macs"][0]["token"]


def _record(**changes: Any) -> ViewerRecord:
    fields: dict[str, Any] = dict(
        name="alice", key=token_key(TOKEN), service="camera", created=NOW - timedelta(days=1),
        expires=None, revoked=None,
    )
    fields.update(changes)
    return ViewerRecord(**fields)


def _message(token: str = TOKEN, viewer_fp: bytes = VIEWER_FP) -> AuthMessage:
    return AuthMessage(viewer="alice", mac=auth_mac(token_key(token), viewer_fp, DEVICE_FP))


def _decide(record: ViewerRecord | None, message: AuthMessage) -> Granted:
    return decide(record, message, viewer_fp=VIEWER_FP, device_fp=DEVICE_FP, now=NOW)


def test_decide_grants_the_right_mac() -> None:
    expires = NOW + timedelta(hours=1)
    assert _decide(_record(expires=expires), _message()) == Granted(
        viewer="alice", service="camera", expires=expires
    )


@pytest.mark.parametrize(
    ("record", "message", "code"),
    [
        (None, _message(), "unauthorized"),
        (_record(), _message(token=VECTORS["macs"][3]["token"]), "unauthorized"),
        (_record(), _message(viewer_fp=DEVICE_FP), "unauthorized"),  # replayed elsewhere
        (_record(revoked=NOW), _message(), "revoked"),
        (_record(expires=NOW), _message(), "expired"),
        # A wrong MAC is never told "revoked" or "expired".
        (_record(revoked=NOW), _message(token=VECTORS["macs"][3]["token"]), "unauthorized"),
        (_record(expires=NOW), _message(viewer_fp=DEVICE_FP), "unauthorized"),
    ],
)
def test_decide_refuses(record: ViewerRecord | None, message: AuthMessage, code: str) -> None:
    with pytest.raises(AuthError) as info:
        _decide(record, message)
    assert info.value.code == code
    if code == "unauthorized":
        assert info.value.message == "unknown viewer or wrong key"
