"""Regenerate tests/vectors/auth.json, the worked examples of docs/security.md 1.3 and 1.5.

    python tests/vectors/generate_auth.py          # rewrite auth.json
    python tests/vectors/generate_auth.py --check  # exit 1 if auth.json is stale

Everything here is computed with the standard library only (hashlib, hmac, base64), straight
from the text of docs/security.md, never with peerproxyd's own code: tests/trust/test_viewer_auth.py
then checks peerproxyd/trust/viewer_auth.py against the file, and the browser client's tests do the
same for webclient/. Readings of the contract that the file pins down:

- `token` is the b64u text from the link; `K = sha256(UTF-8 bytes of that text)`, and the
  viewer store's `key` is `hex(K)`.
- A fingerprint's "SDP form" is the value after `a=fingerprint:sha-256 `: 32 uppercase hex
  pairs joined by `:` (95 characters), without the attribute name. The MAC input is
  `"peerproxyd-auth-v1\n" + VIEWER_FP + "\n" + DEVICE_FP` in that form.
- An SDP fingerprint is read case-insensitively (algorithm and hex digits) and used in its
  canonical uppercase form; exactly one `sha-256` line is required (other hash functions
  are ignored).

Keys of auth.json:
  links[]         link -> fields (v d s n t f), and what follows from it: the fingerprint in
                  SDP form, `key_hex` = hex(K), `signal_url` (http->ws, https->wss, the host
                  without its first label, path /ws)
  invalid_links[] link -> `error`: Python's message (informative; only rejection is binding)
  macs[]          token + viewer_fp + device_fp (SDP form) -> `input` (the exact MAC input,
                  as a JSON string), `key_hex`, `mac` (b64u)
  sdp[]           an SDP -> `fingerprint` (SDP form), or `error` (Python's message)
  messages[]      the auth / auth-ok / auth-error texts exactly as peerproxyd writes them
                  (`packed`: the viewer asks for packed messages, the daemon agrees)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "auth.json"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sdp_form(fp: bytes) -> str:
    return ":".join(f"{b:02X}" for b in fp)


def device_id(spki_stand_in: bytes) -> str:
    return base64.b32encode(hashlib.sha256(spki_stand_in).digest()).decode().lower()[:32]


def mac(token: str, viewer_fp: bytes, device_fp: bytes) -> dict[str, str]:
    key = hashlib.sha256(token.encode()).digest()
    text = "peerproxyd-auth-v1\n" + sdp_form(viewer_fp) + "\n" + sdp_form(device_fp)
    return {
        "token": token,
        "viewer_fp": sdp_form(viewer_fp),
        "device_fp": sdp_form(device_fp),
        "input": text,
        "key_hex": key.hex(),
        "mac": b64u(hmac.new(key, text.encode(), hashlib.sha256).digest()),
    }


# The worked example: fixed stand-ins for the random parts.
DEVICE = device_id(b"worked example: the device's SubjectPublicKeyInfo")
DEVICE_FP = hashlib.sha256(b"worked example: the device certificate").digest()
VIEWER_FP = hashlib.sha256(b"worked example: the browser's certificate").digest()
OTHER_VIEWER_FP = hashlib.sha256(b"worked example: another browser's certificate").digest()
TOKEN = b64u(bytes(range(32)))
TOKEN_2 = b64u(hashlib.sha256(b"worked example: bob's token").digest())


def link(base: str, service: str, name: str, token: str, fp: bytes, device: str = DEVICE,
         *, order: tuple[str, ...] = ("v", "d", "s", "n", "t", "f")) -> str:
    scheme, host = base.split("://")
    values = {"v": "1", "d": device, "s": service, "n": name, "t": token, "f": b64u(fp)}
    fragment = "&".join(f"{k}={values[k]}" for k in order)
    return f"{scheme}://{device}--{service}.{host}/#{fragment}"


def link_vector(name: str, url: str, signal_url: str, fields: dict[str, str]) -> dict[str, Any]:
    fp = base64.urlsafe_b64decode(fields["f"] + "=")
    return {
        "name": name,
        "link": url,
        "fields": fields,
        "fingerprint": sdp_form(fp),
        "key_hex": hashlib.sha256(fields["t"].encode()).hexdigest(),
        "signal_url": signal_url,
    }


def fields(service: str, name: str, token: str, fp: bytes) -> dict[str, str]:
    return {"v": "1", "d": DEVICE, "s": service, "n": name, "t": token, "f": b64u(fp)}


def links() -> list[dict[str, Any]]:
    return [
        link_vector(
            "worked example",
            link("https://signal.example.net", "camera", "alice", TOKEN, DEVICE_FP),
            "wss://signal.example.net/ws",
            fields("camera", "alice", TOKEN, DEVICE_FP),
        ),
        link_vector(
            "http with a port (peerproxyd demo)",
            link("http://localhost:8787", "dashboard", "demo", TOKEN_2, DEVICE_FP),
            "ws://localhost:8787/ws",
            fields("dashboard", "demo", TOKEN_2, DEVICE_FP),
        ),
        link_vector(
            "keys in another order, name with . _ -",
            link("https://p.example.org", "ha", "Bob_2.phone-x", TOKEN_2, DEVICE_FP,
                 order=("f", "t", "n", "s", "d", "v")),
            "wss://p.example.org/ws",
            fields("ha", "Bob_2.phone-x", TOKEN_2, DEVICE_FP),
        ),
    ]


def invalid_links() -> list[dict[str, str]]:
    good = link("https://signal.example.net", "camera", "alice", TOKEN, DEVICE_FP)
    base, fragment = good.split("#")
    short_token = b64u(bytes(31))
    cases = [
        ("no fragment", base, "link has no #fragment with the viewer's credentials"),
        ("ftp scheme", "ftp" + good.removeprefix("https"),
         "link scheme must be http or https, got 'ftp'"),
        ("version 2", good.replace("v=1", "v=2"), "unsupported link version '2' (expected 1)"),
        ("missing token", good.replace(f"&t={TOKEN}", ""), "link lacks t"),
        ("repeated key", good + "&n=bob", "link repeats n"),
        ("short token", good.replace(TOKEN, short_token),
         "link t must be base64url of 32 bytes"),
        ("padded fingerprint", good.replace(b64u(DEVICE_FP), b64u(DEVICE_FP) + "="),
         "link f must be base64url of 32 bytes"),
        ("bad viewer name", good.replace("n=alice", "n=al%20ice"),
         "invalid viewer name 'al ice' (1-64 characters of A-Z a-z 0-9 . _ -)"),
        ("host does not match d and s", good.replace(f"{DEVICE}--camera.", f"{DEVICE}--ha."),
         f"link host must start with '{DEVICE}--camera.', got '{DEVICE}--ha.signal.example.net'"),
        ("no signaling host", f"https://{DEVICE}--camera/#{fragment}",
         f"link host must start with '{DEVICE}--camera.', got '{DEVICE}--camera'"),
    ]
    return [{"name": n, "link": url, "error": error} for n, url, error in cases]


SDP_HEAD = (
    "v=0\r\no=- 3950000000 3950000000 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\na=msid-semantic:WMS *\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
    "a=mid:0\r\na=sctp-port:5000\r\na=max-message-size:65536\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n"
)


def sdp_vectors() -> list[dict[str, Any]]:
    fp = sdp_form(VIEWER_FP)
    sha384 = ":".join(["AB"] * 48)
    return [
        {"name": "one sha-256 line", "fingerprint": fp,
         "sdp": SDP_HEAD + f"a=fingerprint:sha-256 {fp}\r\na=setup:actpass\r\n"},
        {"name": "aiortc style: sha-256, sha-384, sha-512", "fingerprint": fp,
         "sdp": SDP_HEAD + f"a=fingerprint:sha-256 {fp}\r\na=fingerprint:sha-384 {sha384}\r\n"
                f"a=fingerprint:sha-512 {':'.join(['CD'] * 64)}\r\na=setup:active\r\n"},
        {"name": "lowercase, LF line ends", "fingerprint": fp,
         "sdp": (SDP_HEAD + f"a=fingerprint:SHA-256 {fp.lower()}\r\n").replace("\r\n", "\n")},
        {"name": "none", "sdp": SDP_HEAD + f"a=fingerprint:sha-384 {sha384}\r\n",
         "error": "the SDP has no a=fingerprint:sha-256 line"},
        {"name": "two", "sdp": SDP_HEAD + f"a=fingerprint:sha-256 {fp}\r\n"
                                  f"a=fingerprint:sha-256 {sdp_form(DEVICE_FP)}\r\n",
         "error": "the SDP has 2 a=fingerprint:sha-256 lines; exactly one is required"},
        {"name": "31 bytes", "sdp": SDP_HEAD + f"a=fingerprint:sha-256 {fp[3:]}\r\n",
         "error": f"malformed sha-256 fingerprint in the SDP: {fp[3:]!r}"},
    ]


def messages() -> list[dict[str, str]]:
    m = mac(TOKEN, VIEWER_FP, DEVICE_FP)["mac"]
    return [
        {"name": "auth", "text": json.dumps(
            {"type": "auth", "v": 1, "viewer": "alice", "mac": m}, separators=(",", ":"))},
        {"name": "auth-ok", "text": json.dumps(
            {"type": "auth-ok", "viewer": "alice", "service": "camera",
             "expires": "2030-01-02T03:04:05Z"}, separators=(",", ":"))},
        {"name": "auth-ok, no expiry", "text": json.dumps(
            {"type": "auth-ok", "viewer": "alice", "service": "camera", "expires": None},
            separators=(",", ":"))},
        {"name": "auth, packed", "text": json.dumps(
            {"type": "auth", "v": 1, "viewer": "alice", "mac": m, "packed": True},
            separators=(",", ":"))},
        {"name": "auth-ok, packed", "text": json.dumps(
            {"type": "auth-ok", "viewer": "alice", "service": "camera", "expires": None,
             "packed": True}, separators=(",", ":"))},
        {"name": "auth-error", "text": json.dumps(
            {"type": "auth-error", "code": "revoked",
             "message": "viewer alice was revoked at 2030-01-02T03:04:05Z"},
            separators=(",", ":"))},
    ]


def build() -> dict[str, Any]:
    return {
        "about": "docs/security.md 1.3 and 1.5 worked examples; see tests/vectors/generate_auth.py",
        "links": links(),
        "invalid_links": invalid_links(),
        "macs": [
            {"name": "worked example", **mac(TOKEN, VIEWER_FP, DEVICE_FP)},
            {"name": "same token, another browser", **mac(TOKEN, OTHER_VIEWER_FP, DEVICE_FP)},
            {"name": "fingerprints swapped", **mac(TOKEN, DEVICE_FP, VIEWER_FP)},
            {"name": "another token", **mac(TOKEN_2, VIEWER_FP, DEVICE_FP)},
        ],
        "sdp": sdp_vectors(),
        "messages": messages(),
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
