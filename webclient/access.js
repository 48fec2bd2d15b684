// Viewer access in the page: this tab's credential, made from the share link, and the auth
// exchange at the start of every data channel (docs/security.md 1.3, 1.5; the pure parts are
// trust.js).
//
// Where the secret lives, and why. The proxied app runs in this page's origin (its frame needs
// allow-same-origin to be served by the worker; see README.md "Isolation"), so it can read
// everything the page keeps in sessionStorage, IndexedDB, history state or `window`, and it can
// patch this page's globals. So the token itself is never stored and never outlives the first
// moments of the visit:
//
//   1. the fragment is read and removed from the address bar before anything else runs (no app
//      frame exists yet);
//   2. the page makes its own DTLS certificate for this visit (RTCPeerConnection
//      .generateCertificate) and, since the device's fingerprint is pinned by the link, computes
//      the one MAC this certificate will ever need, MAC(K, our fingerprint, the pinned one);
//   3. the token and K are dropped. Every peer connection of the visit (reconnects included) uses
//      that certificate, so the precomputed MAC is right for each of them;
//   4. the page loads itself again without the fragment (location.replace): the first
//      document's navigation timing entry keeps the URL it was loaded with, token included, and
//      no API removes it (performance.getEntriesByType("navigation")[0].name).
//
// What is kept is {certificate, MAC, name, pinned fingerprint}: in memory, and in IndexedDB
// under a per-tab id held in sessionStorage, so that a reload of this tab reconnects. The app
// can read that record, but it is no credential anywhere else: the MAC is bound to the
// certificate's fingerprint, and an RTCCertificate's private key never leaves the browser. A
// token in sessionStorage, by contrast, would let the app hand the link's power to anyone.

import { authMac, encodeAuth, looksLikeLink, parseAuthReply, parseLink } from "./trust.js";

const DB_NAME = "peerproxyd-viewer";
const STORE = "credentials";
const TAB_KEY = "peerproxyd-tab";
const CERTIFICATE_LIFETIME = 30 * 24 * 3600 * 1000; // ms; a tab open longer needs the link again

/** There is no usable link: `kind` "nolink" (none at all) or "badlink" (with what is wrong). */
export class NoCredential extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "NoCredential";
    this.kind = kind;
  }
}

/**
 * Take the share link out of the address bar (history.replaceState) and return its full URL,
 * or null if the fragment is not a link's (an app's own fragment stays, for the frame).
 * Synchronous: called before the page does anything else.
 */
export function takeLinkFromAddressBar() {
  if (!looksLikeLink(location.hash)) return null;
  const href = location.href;
  history.replaceState(history.state, "", location.pathname + location.search);
  return href;
}

function certificateFingerprint(certificate) {
  const fp = certificate.getFingerprints().find((f) => f.algorithm.toLowerCase() === "sha-256");
  if (!fp) throw new Error("this browser's DTLS certificate has no sha-256 fingerprint");
  return fp.value.toUpperCase();
}

/** The credential for a link URL: a fresh certificate and the MAC for it; the token is not kept. */
async function credentialFromLink(href, target) {
  let link;
  try {
    link = parseLink(href);
  } catch (exc) {
    throw new NoCredential("badlink", exc.message);
  }
  if (link.device !== target.device || link.service !== target.service) {
    throw new NoCredential("badlink", `the link is for ${link.device}--${link.service}, not this address`);
  }
  const certificate = await RTCPeerConnection.generateCertificate({
    name: "ECDSA",
    namedCurve: "P-256",
    expires: CERTIFICATE_LIFETIME,
  });
  const viewerFp = certificateFingerprint(certificate);
  return {
    device: link.device,
    service: link.service,
    name: link.name,
    pinned: link.fingerprint,
    certificate,
    viewerFp,
    mac: await authMac(link.token, viewerFp, link.fingerprint),
  };
}

// ----- the per-tab record (IndexedDB; best effort: without it a reload needs the link again)

function tabId() {
  let id = sessionStorage.getItem(TAB_KEY);
  if (!id) {
    id = crypto.randomUUID();
    sessionStorage.setItem(TAB_KEY, id);
  }
  return id;
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function openStore(mode) {
  const open = indexedDB.open(DB_NAME, 1);
  open.onupgradeneeded = () => open.result.createObjectStore(STORE);
  const db = await request(open);
  return { db, store: db.transaction(STORE, mode).objectStore(STORE) };
}

async function saveRecord(credential) {
  const { db, store } = await openStore("readwrite");
  try {
    await request(store.put(credential, tabId()));
    // Forget the records whose certificate has expired (closed tabs of earlier visits).
    const keys = await request(store.getAllKeys());
    const records = await request(store.getAll());
    records.forEach((r, i) => {
      if (!(r?.certificate?.expires > Date.now())) store.delete(keys[i]);
    });
  } finally {
    db.close();
  }
}

async function loadRecord() {
  const id = sessionStorage.getItem(TAB_KEY);
  if (!id) return null;
  const { db, store } = await openStore("readonly");
  try {
    return (await request(store.get(id))) ?? null;
  } finally {
    db.close();
  }
}

/**
 * This tab's credential for `target` ({device, service}): the one saved by an earlier load of
 * this tab, or, given `linkHref` (a link just taken from the address bar), a new one. With a
 * link it saves the credential and reloads the page (step 4 above) and returns null: the next
 * document carries on. NoCredential if there is none.
 */
export async function loadCredential(linkHref, target) {
  if (linkHref) {
    const credential = await credentialFromLink(linkHref, target);
    try {
      await saveRecord(credential);
    } catch (exc) {
      // No storage: carry on in this document rather than not at all.
      console.warn("peerproxy: cannot keep the credential (a reload will need the link):", exc);
      return credential;
    }
    location.replace(location.href);
    return null;
  }
  const saved = await loadRecord().catch(() => null);
  if (saved && saved.device === target.device && saved.service === target.service) {
    if (saved.certificate.expires > Date.now()) return saved;
    throw new NoCredential("nolink", "This visit's access key has expired: open the share link again.");
  }
  throw new NoCredential("nolink", "This address needs a share link.");
}

/**
 * The auth exchange on a just-opened channel: send `auth` (the first message, text; it asks
 * for packed messages) and resolve with the device's auth-ok ({viewer, service, expires,
 * packed}); reject with its AuthError,
 * or an Error if the channel closes or stays silent for `timeout` ms. Settles before the next
 * message is dispatched, so a PeerLink attached right after sees every later message.
 */
export function authenticate(channel, credential, timeout) {
  return new Promise((resolve, reject) => {
    const settle = (fn, value) => {
      clearTimeout(timer);
      channel.removeEventListener("message", onMessage);
      channel.removeEventListener("close", onClose);
      fn(value);
    };
    const onMessage = (event) => {
      try {
        settle(resolve, parseAuthReply(event.data));
      } catch (exc) {
        settle(reject, exc);
      }
    };
    const onClose = () => settle(reject, new Error("the device closed the channel before answering the viewer's key"));
    const timer = setTimeout(
      () => settle(reject, new Error(`the device did not answer the viewer's key within ${timeout / 1000} s`)),
      timeout,
    );
    channel.addEventListener("message", onMessage);
    channel.addEventListener("close", onClose);
    channel.send(encodeAuth(credential.name, credential.mac, { packed: true }));
  });
}
