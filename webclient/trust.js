// Viewer access, sans-IO: the browser's copy of peerproxyd/trust/viewer_auth.py (docs/security.md
// 1.3 and 1.5). Share links, the DTLS fingerprint of an SDP, the channel-binding MAC and the
// auth messages. No DOM: the same module runs in the page and under `node --test`, which
// checks it against tests/vectors/auth.json (the error texts are Python's).
//
// Readings of the contract shared with the Python side through that file: K = sha256(UTF-8 of
// the b64u token text); a fingerprint's "SDP form" is the 95-character `AB:CD:…` value without
// the attribute name; SDP fingerprints are read case-insensitively and used in uppercase.

import { pyRepr, validDeviceId, validServiceName } from "./protocol.js";

export const LINK_VERSION = "1";
export const LINK_KEYS = ["v", "d", "s", "n", "t", "f"];
export const MAC_LABEL = "peerproxyd-auth-v1";
const VIEWER_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const HEX_PAIRS = /^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31}$/;
const MAX_AUTH_MESSAGE = 1024;
const utf8 = new TextEncoder();

// Saved at load, before any app code shares this page's origin (see manager.js).
const subtle = globalThis.crypto.subtle;

export class LinkError extends Error {
  name = "LinkError";
}

export class FingerprintError extends Error {
  name = "FingerprintError";
}

/** An auth-error from the device (or `bad-auth` for a reply we cannot read). */
export class AuthError extends Error {
  name = "AuthError";
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// ----- encodings

export function b64u(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The `size` bytes that `text` (base64url, no padding) encodes; null if it is not that. */
export function b64uDecode(text, size) {
  if (typeof text !== "string" || text.length !== Math.floor((size * 4 + 2) / 3)) return null;
  if (!/^[A-Za-z0-9_-]*$/.test(text)) return null;
  let binary;
  try {
    binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  } catch {
    return null;
  }
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return bytes.length === size && b64u(bytes) === text ? bytes : null;
}

export function validViewerName(name) {
  return typeof name === "string" && VIEWER_NAME.test(name);
}

// ----- fingerprints

/** `AB:CD:…`: uppercase hex pairs joined by `:`, as WebRTC writes them in SDP. */
export function fingerprintSdpForm(bytes) {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0").toUpperCase()).join(":");
}

/**
 * The SDP form of the SDP's one `a=fingerprint:sha-256` line (other hash functions are
 * ignored); FingerprintError if there is not exactly one, or it is malformed.
 */
export function sdpFingerprint(sdp) {
  const found = [];
  for (const raw of String(sdp).split(/\r\n|\r|\n/)) {
    const line = raw.trim();
    if (!line.toLowerCase().startsWith("a=fingerprint:")) continue;
    const rest = line.slice("a=fingerprint:".length).trim();
    const space = rest.indexOf(" ");
    const algorithm = space < 0 ? rest : rest.slice(0, space);
    if (algorithm.toLowerCase() === "sha-256") found.push(space < 0 ? "" : rest.slice(space + 1).trim());
  }
  if (!found.length) throw new FingerprintError("the SDP has no a=fingerprint:sha-256 line");
  if (found.length > 1) {
    throw new FingerprintError(
      `the SDP has ${found.length} a=fingerprint:sha-256 lines; exactly one is required`,
    );
  }
  if (!HEX_PAIRS.test(found[0])) {
    throw new FingerprintError(`malformed sha-256 fingerprint in the SDP: ${pyRepr(found[0].slice(0, 120))}`);
  }
  return found[0].toUpperCase();
}

/** The viewer's check of the answer (1.5 step 1): FingerprintError unless it is the pinned one. */
export function checkPinned(sdp, pinned) {
  const got = sdpFingerprint(sdp);
  if (got !== pinned) {
    const error = new FingerprintError(
      `the device's identity does not match the link: its DTLS fingerprint is ${got}, ` +
        `the link pins ${pinned}`,
    );
    error.got = got;
    error.pinned = pinned;
    throw error;
  }
  return got;
}

// ----- share links (1.3)

function parseFragment(fragment) {
  const values = new Map();
  for (const pair of fragment.split("&")) {
    const at = pair.indexOf("=");
    if (at < 0) throw new LinkError("link fragment is not key=value pairs joined by &");
    let key;
    let value;
    try {
      const decode = (s) => decodeURIComponent(s.replace(/\+/g, " "));
      key = decode(pair.slice(0, at));
      value = decode(pair.slice(at + 1));
    } catch {
      throw new LinkError("link fragment is not key=value pairs joined by &");
    }
    if (values.has(key)) throw new LinkError(`link repeats ${key}`);
    values.set(key, value);
  }
  return values;
}

/** Whether a URL fragment (`#…` or without `#`) is meant as a share link's, even a broken one. */
export function looksLikeLink(hash) {
  const fragment = String(hash).replace(/^#/, "");
  if (!fragment) return false;
  return fragment.split("&").some((pair) => LINK_KEYS.includes(pair.split("=")[0]));
}

/**
 * Read a share link: {scheme, host, device, service, name, token, fingerprint (SDP form),
 * signalUrl}, where `host` is the signaling host (the link's host without its first label,
 * with `:port`). LinkError saying what is wrong.
 */
export function parseLink(text) {
  let url;
  try {
    url = new URL(String(text).trim());
  } catch (exc) {
    throw new LinkError(`not a URL: ${exc.message}`);
  }
  const scheme = url.protocol.replace(/:$/, "");
  if (scheme !== "http" && scheme !== "https") {
    throw new LinkError(`link scheme must be http or https, got ${pyRepr(scheme)}`);
  }
  if (url.username || url.password) throw new LinkError("link must not contain a user name or password");
  const fragment = url.hash.replace(/^#/, "");
  if (!fragment) throw new LinkError("link has no #fragment with the viewer's credentials");
  const values = parseFragment(fragment);
  const missing = LINK_KEYS.filter((k) => !values.has(k));
  if (missing.length) throw new LinkError(`link lacks ${missing.join(", ")}`);
  const v = values.get("v");
  if (v !== LINK_VERSION) {
    throw new LinkError(`unsupported link version ${pyRepr(v)} (expected ${LINK_VERSION})`);
  }
  const [device, service, name, token] = ["d", "s", "n", "t"].map((k) => values.get(k));
  if (!validDeviceId(device)) throw new LinkError(`link d is not a device id: ${pyRepr(device)}`);
  if (!validServiceName(service)) throw new LinkError(`link s is not a service name: ${pyRepr(service)}`);
  if (!validViewerName(name)) {
    throw new LinkError(`invalid viewer name ${pyRepr(name)} (1-64 characters of A-Z a-z 0-9 . _ -)`);
  }
  if (!b64uDecode(token, 32)) throw new LinkError("link t must be base64url of 32 bytes");
  const fingerprint = b64uDecode(values.get("f"), 32);
  if (!fingerprint) throw new LinkError("link f must be base64url of 32 bytes");
  const prefix = `${device}--${service}.`;
  const host = url.hostname;
  if (!host.startsWith(prefix) || host.length === prefix.length) {
    throw new LinkError(`link host must start with ${pyRepr(prefix)}, got ${pyRepr(host)}`);
  }
  const signalHost = host.slice(prefix.length) + (url.port ? `:${url.port}` : "");
  return {
    scheme,
    host: signalHost,
    device,
    service,
    name,
    token,
    fingerprint: fingerprintSdpForm(fingerprint),
    signalUrl: `${scheme === "https" ? "wss" : "ws"}://${signalHost}/ws`,
  };
}

// ----- the MAC (1.5 step 2)

/** K = sha256(token): the MAC key (the daemon's viewer store keeps it in hex). */
export async function tokenKey(token) {
  return new Uint8Array(await subtle.digest("SHA-256", utf8.encode(token)));
}

/** The exact text the MAC covers; both fingerprints in SDP form. */
export function macInput(viewerFp, deviceFp) {
  return `${MAC_LABEL}\n${viewerFp}\n${deviceFp}`;
}

/** b64u(HMAC-SHA256(K, "peerproxyd-auth-v1\n" + VIEWER_FP + "\n" + DEVICE_FP)). */
export async function authMac(token, viewerFp, deviceFp) {
  // Not extractable: the raw key never becomes a JavaScript value again.
  const key = await subtle.importKey("raw", await tokenKey(token), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  return b64u(new Uint8Array(await subtle.sign("HMAC", key, utf8.encode(macInput(viewerFp, deviceFp)))));
}

// ----- messages (1.5 steps 2 and 3)

/** `packed`: ask for packed messages (docs/protocol.md §1.1; the key is written only when true). */
export function encodeAuth(viewer, mac, { packed = false } = {}) {
  return JSON.stringify({ type: "auth", v: 1, viewer, mac, ...(packed ? { packed: true } : {}) });
}

/**
 * The device's answer to our auth: {viewer, service, expires: Date | null, packed} for auth-ok
 * (`packed`: the device agreed to packed messages); throws
 * the AuthError of an auth-error, or AuthError `bad-auth` for anything else.
 */
export function parseAuthReply(message) {
  const bad = (text) => new AuthError("bad-auth", text);
  if (typeof message !== "string") throw bad("expected a text auth-ok or auth-error, got a binary message");
  if (message.length > MAX_AUTH_MESSAGE) throw bad(`auth message longer than ${MAX_AUTH_MESSAGE} bytes`);
  let obj;
  try {
    obj = JSON.parse(message);
  } catch {
    throw bad("auth message is not JSON");
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) throw bad("auth message must be a JSON object");
  if (obj.type === "auth-error") {
    if (typeof obj.code !== "string" || typeof obj.message !== "string") {
      throw bad("auth-error lacks a code or message");
    }
    throw new AuthError(obj.code.slice(0, 64), obj.message.slice(0, 500));
  }
  if (obj.type !== "auth-ok") throw bad(`expected auth-ok or auth-error, got ${pyRepr(obj.type)}`);
  if (typeof obj.viewer !== "string" || typeof obj.service !== "string") {
    throw bad("auth-ok lacks viewer or service");
  }
  let expires = null;
  if (obj.expires !== null && obj.expires !== undefined) {
    // ISO 8601 with a zone, as the daemon writes it (2030-01-02T03:04:05Z).
    const zoned = typeof obj.expires === "string" && /(Z|[+-]\d\d:?\d\d)$/i.test(obj.expires);
    expires = zoned ? new Date(obj.expires) : new Date(NaN);
    if (Number.isNaN(expires.getTime())) {
      throw bad(`auth-ok expires is not an ISO 8601 time: ${pyRepr(obj.expires)}`);
    }
  }
  return { viewer: obj.viewer, service: obj.service, expires, packed: obj.packed === true };
}

// ----- what the page says about each refusal

/**
 * The page's words for an auth refusal: {phase, message, detail, retry}. `retry` is true only
 * where waiting can help (a full device); every other refusal stays until a new link is opened.
 */
export function authProblem(error, { service, name }) {
  // The device id (32 characters) is in the page's title already: "the device" reads better.
  const newLink = `Ask the device's owner for a new link (peerproxyd share --service ${service} --name …).`;
  switch (error.code) {
    case "unauthorized":
      return {
        phase: "unauthorized",
        message: "The device does not accept this link.",
        detail: `No viewer “${name}” with this key. The link may be mistyped or replaced by a newer one. ${newLink}`,
        retry: false,
      };
    case "revoked":
      return { phase: "revoked", message: `Access for “${name}” was revoked.`, detail: newLink, retry: false };
    case "expired":
      return { phase: "expired", message: `This link for “${name}” has expired.`, detail: newLink, retry: false };
    case "wrong-service": // ours: auth-ok named another service than this page's (manager.js)
      return {
        phase: "unauthorized",
        message: `This link does not open “${service}”.`,
        detail: `${error.message}. ${newLink}`,
        retry: false,
      };
    case "too-many-peers":
      return {
        phase: "full",
        message: "The device is serving as many viewers as it can.",
        detail: "Retrying…",
        retry: true,
      };
    default:
      return {
        phase: "unauthorized",
        message: `The device refused the viewer: ${error.message}`,
        detail: `(${error.code}) ${newLink}`,
        retry: false,
      };
  }
}
