// The proxied app looking for the viewer's secret: everything a same-origin page can read of
// the manager page that frames it. The test checks the share link's token is nowhere in it,
// and that the probe did see what is there (so it would have found a stored token).
/* eslint-disable no-empty */
"use strict";

function hexOf(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// JSON of anything found in storage: bytes as hex, certificates as what they expose.
function replacer(key, value) {
  if (value instanceof ArrayBuffer) return { hex: hexOf(value) };
  if (ArrayBuffer.isView(value)) return { hex: hexOf(value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength)) };
  if (typeof RTCCertificate !== "undefined" && value instanceof RTCCertificate) {
    return { certificate: value.getFingerprints(), expires: value.expires };
  }
  if (typeof CryptoKey !== "undefined" && value instanceof CryptoKey) {
    return { cryptoKey: value.algorithm, extractable: value.extractable };
  }
  return value;
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function dumpIndexedDB() {
  const out = {};
  for (const { name } of await indexedDB.databases()) {
    const db = await request(indexedDB.open(name));
    out[name] = {};
    for (const store of db.objectStoreNames) {
      const tx = db.transaction(store, "readonly").objectStore(store);
      out[name][store] = { keys: await request(tx.getAllKeys()), values: await request(tx.getAll()) };
    }
    db.close();
  }
  return out;
}

async function peek() {
  const seen = {};
  const look = (name, read) => {
    try {
      seen[name] = read();
    } catch (exc) {
      seen[name] = `error: ${exc.message}`;
    }
  };
  look("parentHref", () => parent.location.href);
  look("parentHash", () => parent.location.hash);
  look("ownHref", () => location.href);
  look("referrer", () => document.referrer);
  look("parentHistoryState", () => parent.history.state);
  look("navigationEntries", () => (parent.navigation ? parent.navigation.entries().map((e) => e.url) : "none"));
  look("activation", () => {
    const a = parent.navigation?.activation;
    return a ? [a.entry?.url ?? "", a.from?.url ?? ""] : [];
  });
  look("navigationTiming", () => parent.performance.getEntriesByType("navigation").map((e) => e.name));
  look("sessionStorage", () => ({ ...sessionStorage }));
  look("parentSessionStorage", () => ({ ...parent.sessionStorage }));
  look("localStorage", () => ({ ...localStorage }));
  look("managerState", () => JSON.parse(JSON.stringify(parent.__peerproxy, (k, v) =>
    ["relay", "link", "pc"].includes(k) ? undefined : v)));
  look("managerHtml", () => parent.document.documentElement.outerHTML);
  look("managerGlobals", () => Object.keys(parent).filter((k) => !(k in window)));
  try {
    seen.indexedDB = await dumpIndexedDB();
  } catch (exc) {
    seen.indexedDB = `error: ${exc.message}`;
  }
  const text = JSON.stringify(seen, replacer);
  document.getElementById("seen").textContent = text;
  window.seen = JSON.parse(text);
}

peek().finally(() => {
  window.peekDone = true;
});
