"""Property-based fuzzing with counts: each target below runs budget.FUZZ's cases (10,000 in
the `ci` profile) of arbitrary and mutated input through one check of targets.py, and the
last test fails the run if a target ran fewer than that.

Inputs are of three sorts: arbitrary (bytes, text, JSON values), valid ones built from the
protocol's own types, and mutations of valid seeds (the shared vectors): bit flips,
overwrites, inserts of random bytes or of JSON/protocol tokens, deletions, truncations.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerproxyd import b64u
from peerproxyd.protocol import MAX_PAYLOAD, Flag, Frame
from peerproxyd.protocol.websocket import MAX_MESSAGE, Binary, Close, Text, encode
from tests.fuzz import targets
from tests.fuzz.budget import COUNTS, FUZZ, REQUIRED, TARGETS, ran

# ----- mutations of valid seeds

TOKENS = [b"1e999", b"-1e400", b"NaN", b"Infinity", b"null", b"true", b"0", b"-0", b"1.5",
          b"99999999999999999999", b'"', b"\\", b"\\u0000", b"\\ud800", b"{", b"}", b"[", b"]",
          b",", b":", b"\r\n", b"\x00", b"\xff", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"%2e",
          b"%252e", b"/..", b"\\", b";", b"#", b"=", b"&", b"\x00\x00\x00\x00", b"\xff\xff"]
"""What inserts and overwrites splice in besides random bytes (a libFuzzer-style dictionary)."""
_MUTATIONS = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 1 << 16),
              st.binary(min_size=1, max_size=4) | st.sampled_from(TOKENS)),
    min_size=1, max_size=4,
)


def _mutate(seed: bytes, mutations: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for op, position, chunk in mutations:
        i = position % (len(data) + 1)
        if op == 0 and data:
            data[i % len(data)] ^= 1 << (chunk[0] % 8)
        elif op == 1:
            data[i : i + len(chunk)] = chunk
        elif op == 2:
            data[i:i] = chunk
        elif op == 3:
            del data[i : i + chunk[0] % 16 + 1]
        elif op == 4:
            del data[i:]
        else:
            data[i:i] = data[i : i + chunk[0] % 32 + 1]
    return bytes(data)


def mutated(seeds: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(_mutate, seeds, _MUTATIONS)


def mutated_text(seeds: list[str]) -> st.SearchStrategy[str]:
    """Byte mutations of UTF-8 seeds, read back with invalid bytes as lone surrogates."""
    seeds_bytes = st.sampled_from([s.encode() for s in seeds])
    return mutated(seeds_bytes).map(lambda b: b.decode("utf-8", "surrogateescape"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8,
)
_DELETE = object()
RAW = ["1e999", "-1e400", "1e-400", "NaN", "-Infinity", "9" * 5000, "[" * 3000 + "]" * 3000,
       '"\\ud800"', '"\\u0000"', "{}", "[]", '""']
"""JSON texts that json.dumps never writes: out-of-range and non-finite numbers, huge ints,
deep nesting, escaped lone surrogates and NULs."""


def mutated_json(seeds: list[dict[str, Any]], keys: list[str]) -> st.SearchStrategy[str]:
    """Valid JSON objects with fields replaced by other JSON values or RAW texts, removed or
    added."""
    def apply(seed: dict[str, Any], edits: list[tuple[str, Any]], ascii_only: bool) -> str:
        obj = dict(seed)
        for key, value in edits:
            if value is _DELETE:
                obj.pop(key, None)
            else:
                obj[key] = value
        text = json.dumps(obj, ensure_ascii=ascii_only)
        for i, raw in enumerate(RAW):
            text = text.replace(f'"@raw{i}@"', raw)
        return text

    edit = st.tuples(st.sampled_from(keys) | st.text(max_size=6),
                     json_values | st.just(_DELETE) | st.sampled_from(
                         [v for s in seeds for v in s.values()] + [
                             f"@raw{i}@" for i in range(len(RAW))]))
    return st.builds(apply, st.sampled_from(seeds), st.lists(edit, min_size=1, max_size=3),
                     st.booleans())


def as_case(strategy: st.SearchStrategy[Any], expected: Any = None) -> st.SearchStrategy[Any]:
    return strategy.map(lambda x: (x, expected))


# ----- frames

H, E, F = Flag.HEADERS, Flag.END_HEADERS, Flag.FINAL
stream_ids = st.integers(1, 9) | st.integers(1, 2**32 - 1)
seqs = st.integers(0, 9) | st.integers(0, 2**32 - 1)
valid_frames = st.one_of(
    st.builds(Frame.heartbeat, seqs, ack=st.booleans()),
    st.builds(Frame.reset, stream_ids, st.integers(0, 0xFFFF), st.text(max_size=12)),
    st.builds(Frame.window, stream_ids, st.integers(1, 2**32 - 1)),
    st.builds(Frame, stream_ids, seqs, st.sampled_from([H, H | E, H | E | F]),
              st.binary(max_size=40) | st.sampled_from(targets.head_seeds())),
    st.builds(Frame, stream_ids, seqs, st.sampled_from([Flag(0), F]),
              st.binary(max_size=40) | st.just(bytes(MAX_PAYLOAD))),
)
frame_cases = st.one_of(
    valid_frames.map(lambda f: (bytes(f), f)),
    as_case(st.binary(max_size=64)),
    as_case(mutated(st.sampled_from(targets.frame_seeds()) | valid_frames.map(bytes))),
)


@FUZZ
@given(frame_cases)
def test_frame_decoder(case: tuple[bytes, Frame | None]) -> None:
    ran("frames")
    targets.check_frame(*case)


# ----- signaling messages

DEVICE = "iagqyuphl22c5flgteck3lgiv7crbrex"
PEER = "c-0123456789abcdef"
SIGNAL_SEEDS: list[dict[str, Any]] = [
    {"type": "hello", "id": PEER, "challenge": "Zm9v"},
    {"type": "register", "device": DEVICE, "key": "a2V5", "signature": "c2ln"},
    {"type": "registered", "device": DEVICE},
    {"type": "offer", "to": DEVICE, "payload": {"type": "offer", "sdp": "v=0\r\n"}},
    {"type": "answer", "to": PEER, "from": DEVICE, "payload": {"type": "answer", "sdp": "v=0"}},
    {"type": "candidate", "to": DEVICE, "payload": {"candidate": "candidate:1 1 udp 9 ::1 9",
                                                    "sdpMid": "0"}},
    {"type": "bye", "to": PEER},
    {"type": "restart", "to": PEER, "from": DEVICE},
    {"type": "error", "code": "bad-message", "message": "no", "ref": "register"},
]
SIGNAL_KEYS = ["type", "to", "from", "payload", "id", "device", "key", "signature", "code",
               "message"]
signal_texts = st.one_of(
    json_values.map(json.dumps),
    mutated_json(SIGNAL_SEEDS, SIGNAL_KEYS),
    mutated_text([json.dumps(s) for s in SIGNAL_SEEDS]),
    st.text(max_size=30),
)


@FUZZ
@given(signal_texts)
def test_signaling_parser(text: str) -> None:
    ran("signaling")
    targets.check_signaling(text)


# ----- viewer auth

AUTH = targets.auth_seeds()
NAMES = [*targets.TOKENS, "dave", "Alice", "alice "]


def _auth_text(viewer: str, mac: bytes) -> str:
    return json.dumps({"type": "auth", "v": 1, "viewer": viewer, "mac": b64u.encode(mac)})


def _flip(mac: bytes, bit: int) -> bytes:
    return (int.from_bytes(mac, "big") ^ (1 << bit % 256)).to_bytes(32, "big")


forged_macs = st.one_of(
    st.builds(targets.true_mac, st.sampled_from(list(targets.TOKENS))),  # another viewer's
    st.builds(targets.true_mac, st.sampled_from(list(targets.TOKENS)),  # another connection's
              st.just(targets.DEVICE_FP), st.just(targets.VIEWER_FP)),
    st.builds(_flip, st.builds(targets.true_mac, st.just("alice")), st.integers(0, 255)),
    st.builds(targets.token_mac, mutated_text([targets.TOKENS["alice"]])),  # a near token
    st.binary(min_size=32, max_size=32),
)
right_texts = [_auth_text(name, targets.true_mac(name)) for name in targets.TOKENS]
auth_texts = st.one_of(
    st.builds(_auth_text, st.sampled_from(NAMES) | st.text(max_size=8), forged_macs),
    mutated_json([json.loads(t) for t in right_texts], ["type", "v", "viewer", "mac"]),
    mutated_text(right_texts),
    st.sampled_from(right_texts),  # the oracle must see grants too
    st.binary(max_size=8),
)
reply_texts = mutated_text([m["text"] for m in AUTH["messages"]]) | mutated_json(
    [json.loads(m["text"]) for m in AUTH["messages"]], ["type", "viewer", "service", "expires",
                                                        "code", "message"])
link_texts = mutated_text([v["link"] for v in AUTH["links"] + AUTH["invalid_links"]])
sdp_texts = mutated_text([v["sdp"] for v in AUTH["sdp"]] + [
    f"a=fingerprint:sha-256 {targets._sdp_form(targets.DEVICE_FP)}\r\n"])
auth_cases = st.one_of(
    as_case(auth_texts, targets.check_auth),
    as_case(reply_texts, targets.check_auth_reply),
    as_case(link_texts, targets.check_link),
    as_case(sdp_texts, targets.check_answer_sdp),
)


@FUZZ
@given(auth_cases)
def test_viewer_auth_exchange(case: tuple[Any, Any]) -> None:
    ran("viewer_auth")
    text, check = case
    check(text)


# ----- WebSocket records

records = st.one_of(
    st.builds(Text, st.text(max_size=10)),
    st.builds(Binary, st.binary(max_size=10)),
    st.just(Close()),
    st.builds(Close, st.sampled_from([1000, 1001, 1011, 3000, 4999]), st.text(max_size=10)),
)
record_streams = st.lists(records, max_size=4).map(lambda rs: b"".join(encode(r) for r in rs))
websocket_data = st.one_of(
    st.binary(max_size=48),
    record_streams,
    mutated(st.sampled_from(targets.websocket_seeds()) | record_streams),
)


@FUZZ
@given(websocket_data, st.lists(st.integers(0, 1 << 16), max_size=4), st.booleans(),
       st.sampled_from([MAX_MESSAGE, 3, 16]))
def test_websocket_records(data: bytes, cuts: list[int], end: bool, max_message: int) -> None:
    ran("websocket")
    targets.check_websocket(data, cuts, end, max_message)


# ----- the counts

TEST_OF = {"frames": test_frame_decoder, "signaling": test_signaling_parser,
           "viewer_auth": test_viewer_auth_exchange, "websocket": test_websocket_records}


@pytest.mark.parametrize("target", TARGETS)
def test_each_target_ran_its_cases(target: str, request: pytest.FixtureRequest) -> None:
    """Runs after the targets (pytest keeps a module's order); a target not collected in this
    session (-k, a node id) is skipped, one that ran is held to the profile's count."""
    name = TEST_OF[target].__name__
    if not any(item.name == name for item in request.session.items):
        pytest.skip(f"{name} is not part of this run")
    assert COUNTS[target] >= REQUIRED, f"{target} ran {COUNTS[target]} cases, not {REQUIRED}"
