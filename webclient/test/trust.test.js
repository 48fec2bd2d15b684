// webclient/trust.js against the shared vectors (tests/vectors/auth.json, written by
// tests/vectors/generate_auth.py with Python's hashlib/hmac) and known answers of our own.
// Run: node --test webclient/test/

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  AuthError,
  FingerprintError,
  LinkError,
  authMac,
  authProblem,
  b64u,
  b64uDecode,
  checkPinned,
  encodeAuth,
  looksLikeLink,
  macInput,
  parseAuthReply,
  parseLink,
  sdpFingerprint,
  tokenKey,
} from "../trust.js";

const VECTORS = JSON.parse(readFileSync(new URL("../../tests/vectors/auth.json", import.meta.url), "utf8"));
const hex = (bytes) => Buffer.from(bytes).toString("hex");

// ----- the shared vectors

test("vectors: every link parses to its fields, fingerprint and key", async () => {
  assert.ok(VECTORS.links.length >= 3);
  for (const v of VECTORS.links) {
    const link = parseLink(v.link);
    const { fields } = v;
    assert.deepEqual(
      { v: "1", d: link.device, s: link.service, n: link.name, t: link.token },
      { v: fields.v, d: fields.d, s: fields.s, n: fields.n, t: fields.t },
      v.name,
    );
    assert.equal(link.fingerprint, v.fingerprint, v.name);
    assert.equal(link.signalUrl, v.signal_url, v.name);
    assert.equal(hex(await tokenKey(link.token)), v.key_hex, v.name);
  }
});

test("vectors: every invalid link is refused, with Python's words", () => {
  assert.ok(VECTORS.invalid_links.length >= 8);
  for (const v of VECTORS.invalid_links) {
    assert.throws(() => parseLink(v.link), (e) => e instanceof LinkError && e.message === v.error, v.name);
  }
});

test("vectors: MACs, their input and key", async () => {
  for (const v of VECTORS.macs) {
    assert.equal(macInput(v.viewer_fp, v.device_fp), v.input, v.name);
    assert.equal(hex(await tokenKey(v.token)), v.key_hex, v.name);
    assert.equal(await authMac(v.token, v.viewer_fp, v.device_fp), v.mac, v.name);
  }
});

test("vectors: SDP fingerprints, or the error", () => {
  for (const v of VECTORS.sdp) {
    if (v.error) {
      assert.throws(() => sdpFingerprint(v.sdp), (e) => e instanceof FingerprintError && e.message === v.error, v.name);
    } else {
      assert.equal(sdpFingerprint(v.sdp), v.fingerprint, v.name);
    }
  }
});

test("vectors: the auth message as the daemon expects it; auth-ok and auth-error read", async () => {
  const byName = Object.fromEntries(VECTORS.messages.map((m) => [m.name, m.text]));
  const mac = VECTORS.macs[0];
  assert.equal(encodeAuth("alice", await authMac(mac.token, mac.viewer_fp, mac.device_fp)), byName.auth);
  assert.deepEqual(parseAuthReply(byName["auth-ok"]), {
    viewer: "alice", service: "camera", expires: new Date("2030-01-02T03:04:05Z"), packed: false,
  });
  assert.deepEqual(parseAuthReply(byName["auth-ok, no expiry"]), {
    viewer: "alice", service: "camera", expires: null, packed: false,
  });
  // Packing (docs/protocol.md §1.1): asked for, agreed to.
  const signed = await authMac(mac.token, mac.viewer_fp, mac.device_fp);
  assert.equal(encodeAuth("alice", signed, { packed: true }), byName["auth, packed"]);
  assert.deepEqual(parseAuthReply(byName["auth-ok, packed"]), {
    viewer: "alice", service: "camera", expires: null, packed: true,
  });
  assert.throws(
    () => parseAuthReply(byName["auth-error"]),
    (e) => e instanceof AuthError && e.code === "revoked" &&
      e.message === "viewer alice was revoked at 2030-01-02T03:04:05Z",
  );
});

// ----- known answers computed independently (Python hashlib/hmac, one-off)

const DEVICE = "iagqyuphl22c5flgteck3lgiv7crbrex";

const KAT = {
  token: "Xn7oe8wcAD3CGi2tl9VxaWf7cchUS5IGkcsTtKqZKko", // b64u(sha256("kat token"))
  viewerFp: "18:53:78:7E:54:3D:32:3D:63:C1:30:B2:C5:6F:D3:8B:9D:B8:C4:7F:3F:AE:06:D6:32:A4:A8:EC:B6:3E:2D:4D",
  deviceFp: "74:55:45:C9:B6:BB:FB:F5:7D:85:FB:ED:BF:9A:A7:51:E0:F7:07:05:10:9C:90:62:49:7B:AB:85:60:51:A2:F9",
  deviceF: "dFVFyba7-_V9hfvtv5qnUeD3BwUQnJBiSXurhWBRovk",
  keyHex: "23abfcae4a1e5a49f322ccbc193188573c0229e1664a952926f012c9d2fe21e9",
  mac: "E869MkI1_wE0-PLpNm7t1ZeDw6V3SI0SrBVEP0I1xiY",
};

test("known answer: K = sha256(token text), HMAC-SHA256 over the two SDP-form fingerprints", async () => {
  assert.equal(hex(await tokenKey(KAT.token)), KAT.keyHex);
  assert.equal(await authMac(KAT.token, KAT.viewerFp, KAT.deviceFp), KAT.mac);
  assert.notEqual(await authMac(KAT.token, KAT.deviceFp, KAT.viewerFp), KAT.mac);
});

test("a test-harness link: localhost with a port, the device origin of the tests", () => {
  const link = parseLink(
    `http://iagqyuphl22c5flgteck3lgiv7crbrex--camera.localhost:8787/#v=1&d=iagqyuphl22c5flgteck3lgiv7crbrex&s=camera&n=alice&t=${KAT.token}&f=${KAT.deviceF}`,
  );
  assert.deepEqual(link, {
    scheme: "http", host: "localhost:8787", device: "iagqyuphl22c5flgteck3lgiv7crbrex", service: "camera", name: "alice",
    token: KAT.token, fingerprint: KAT.deviceFp, signalUrl: "ws://localhost:8787/ws",
  });
  // Percent-encoding and '+' are form-urlencoded; keys in any order.
  const encoded = parseLink(
    `https://iagqyuphl22c5flgteck3lgiv7crbrex--camera.x.y/#n=al%69ce&f=${KAT.deviceF}&v=1&s=camera&d=iagqyuphl22c5flgteck3lgiv7crbrex&t=${KAT.token}`,
  );
  assert.equal(encoded.name, "alice");
});

test("broken links say what is wrong", () => {
  const base = `https://iagqyuphl22c5flgteck3lgiv7crbrex--camera.x.y/#v=1&d=iagqyuphl22c5flgteck3lgiv7crbrex&s=camera&n=alice&t=${KAT.token}&f=${KAT.deviceF}`;
  const cases = [
    [base.replace("&d=iagqyuphl22c5flgteck3lgiv7crbrex&s=camera", ""), "link lacks d, s"],
    [base + "&junk", "link fragment is not key=value pairs joined by &"],
    [base.replace("n=alice", "n=%E0%A4%A"), "link fragment is not key=value pairs joined by &"],
    [base.replace("https://", "https://u:p@"), "link must not contain a user name or password"],
    [base.replace("d=iagqyuphl22c5flgteck3lgiv7crbrex", "d=Test_Pi"), "link d is not a device id: 'Test_Pi'"],
    [base.replace("s=camera", "s=ca--m"), "link s is not a service name: 'ca--m'"],
    [base.replace("n=alice", `n=${"a".repeat(65)}`), `invalid viewer name '${"a".repeat(65)}' (1-64 characters of A-Z a-z 0-9 . _ -)`],
    [base.replace(KAT.token, KAT.token.slice(0, -1) + "+"), "link t must be base64url of 32 bytes"],
    [base.replace(KAT.deviceF, KAT.deviceF.slice(0, -1) + "l"), "link f must be base64url of 32 bytes"],
    ["no url at all", "not a URL: Invalid URL"],
  ];
  for (const [link, error] of cases) {
    assert.throws(() => parseLink(link), (e) => e instanceof LinkError && e.message === error, link);
  }
});

test("looksLikeLink: our fragment, even broken, and not an app's", () => {
  for (const yes of ["#v=1&d=x", "t=abc", "#n=alice", "#f"]) assert.ok(looksLikeLink(yes), yes);
  for (const no of ["", "#", "#section-2", "#/route?a=1", "#tab=settings"]) assert.ok(!looksLikeLink(no), no);
});

test("b64u round trips and refuses what is not exactly `size` bytes", () => {
  const bytes = Uint8Array.from({ length: 32 }, (_, i) => 255 - i);
  assert.deepEqual(b64uDecode(b64u(bytes), 32), bytes);
  assert.equal(b64uDecode(b64u(bytes) + "=", 32), null);
  assert.equal(b64uDecode(b64u(bytes.subarray(1)), 32), null);
  assert.equal(b64uDecode("A".repeat(42) + "B", 32), null); // non-canonical trailing bits
  assert.equal(b64uDecode(undefined, 32), null);
});

test("checkPinned: the answer's fingerprint must be the link's", () => {
  const sdp = (fp) => `v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=fingerprint:sha-256 ${fp}\r\n`;
  assert.equal(checkPinned(sdp(KAT.deviceFp.toLowerCase()), KAT.deviceFp), KAT.deviceFp);
  assert.throws(
    () => checkPinned(sdp(KAT.viewerFp), KAT.deviceFp),
    (e) => e instanceof FingerprintError &&
      e.message === `the device's identity does not match the link: its DTLS fingerprint is ${KAT.viewerFp}, ` +
        `the link pins ${KAT.deviceFp}`,
  );
  assert.throws(() => checkPinned("v=0\r\n", KAT.deviceFp), FingerprintError);
});

test("parseAuthReply refuses what is not an auth-ok or auth-error", () => {
  const cases = [
    [new ArrayBuffer(3), "expected a text auth-ok or auth-error, got a binary message"],
    ["{", "auth message is not JSON"],
    ["[1]", "auth message must be a JSON object"],
    ["null", "auth message must be a JSON object"],
    ['{"type":"hello"}', "expected auth-ok or auth-error, got 'hello'"],
    ['{"type":"auth-error","code":1,"message":"x"}', "auth-error lacks a code or message"],
    ['{"type":"auth-ok","viewer":"a"}', "auth-ok lacks viewer or service"],
    ['{"type":"auth-ok","viewer":"a","service":"s","expires":"2030-01-02T03:04:05"}',
      "auth-ok expires is not an ISO 8601 time: '2030-01-02T03:04:05'"],
    ['{"type":"auth-ok","viewer":"a","service":"s","expires":5}', "auth-ok expires is not an ISO 8601 time: 5"],
    [JSON.stringify({ type: "auth-ok", pad: "x".repeat(1100) }), "auth message longer than 1024 bytes"],
  ];
  for (const [message, error] of cases) {
    assert.throws(
      () => parseAuthReply(message),
      (e) => e instanceof AuthError && e.code === "bad-auth" && e.message === error,
      String(message).slice(0, 60),
    );
  }
  assert.deepEqual(
    parseAuthReply('{"type":"auth-ok","viewer":"a","service":"s","expires":"2030-01-02T03:04:05+02:00"}').expires,
    new Date("2030-01-02T01:04:05Z"),
  );
});

test("authProblem: final refusals do not retry, a full device does", () => {
  const who = { device: "iagqyuphl22c5flgteck3lgiv7crbrex", service: "camera", name: "alice" };
  const phases = Object.fromEntries(
    ["unauthorized", "revoked", "expired", "too-many-peers", "bad-auth"].map((code) => {
      const p = authProblem(new AuthError(code, "why"), who);
      return [code, [p.phase, p.retry]];
    }),
  );
  assert.deepEqual(phases, {
    unauthorized: ["unauthorized", false],
    revoked: ["revoked", false],
    expired: ["expired", false],
    "too-many-peers": ["full", true],
    "bad-auth": ["unauthorized", false],
  });
  assert.equal(authProblem(new AuthError("revoked", "x"), who).message, "Access for “alice” was revoked.");
});
