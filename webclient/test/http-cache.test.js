// webclient/http-cache.js: the rules of the worker's HTTP cache (the Cache Storage side runs in
// Chromium: tests/test_browser.py, test_a_reload_revalidates_the_apps_files_in_the_worker).
import assert from "node:assert/strict";
import { test } from "node:test";

import "../http-cache.js"; // a classic script: defines globalThis.PeerproxyHttpCache

const { mode, storable, fresh, conditions, updated, directives, STORED_AT, MAX_BODY } =
  globalThis.PeerproxyHttpCache;
const URL_ = "http://pi--cam.localhost:8787/static/app.js";
const get = (init = {}) => new Request(URL_, init);
const headers = (fields) => new Headers(fields);

test("GETs use the cache by their cache mode; what the app made conditional or ranged does not", () => {
  assert.equal(mode(get()), "default");
  assert.equal(mode(get({ cache: "no-cache" })), "revalidate");
  assert.equal(mode(get({ cache: "reload" })), "reload");
  assert.equal(mode(get({ cache: "no-store" })), "bypass");
  assert.equal(mode(get({ cache: "force-cache" })), "force");
  assert.equal(mode(get({ headers: { "cache-control": "no-cache" } })), "revalidate");
  assert.equal(mode(get({ headers: { pragma: "no-cache" } })), "revalidate");
  assert.equal(mode(get({ headers: { "if-none-match": '"v1"' } })), "bypass");
  assert.equal(mode(get({ headers: { "if-modified-since": "Sat, 05 Dec 2026 10:00:00 GMT" } })), "bypass");
  assert.equal(mode(get({ headers: { range: "bytes=0-99" } })), "bypass");
  assert.equal(mode(get({ headers: { accept: "text/event-stream" } })), "bypass");
  assert.equal(mode(new Request(URL_, { method: "POST", body: "x" })), "bypass");
  assert.equal(mode(new Request(URL_, { method: "HEAD" })), "bypass");
});

test("only a 200 with a validator, no no-store, no Vary but Accept-Encoding, not a stream, not too big", () => {
  assert.equal(storable(200, headers({ etag: '"v1"' })), true);
  assert.equal(storable(200, headers({ "last-modified": "Sat, 05 Dec 2026 10:00:00 GMT" })), true);
  assert.equal(storable(200, headers({ etag: '"v1"', vary: "Accept-Encoding" })), true);
  assert.equal(storable(200, headers({ "content-type": "text/javascript" })), false); // no validator
  assert.equal(storable(206, headers({ etag: '"v1"', "content-range": "bytes 0-9/100" })), false);
  assert.equal(storable(404, headers({ etag: '"v1"' })), false);
  assert.equal(storable(200, headers({ etag: '"v1"', "cache-control": "private, no-store" })), false);
  assert.equal(storable(200, headers({ etag: '"v1"', vary: "Cookie" })), false);
  assert.equal(storable(200, headers({ etag: '"v1"', vary: "*" })), false);
  assert.equal(storable(200, headers({ etag: '"v1"', "content-type": "text/event-stream" })), false);
  assert.equal(storable(200, headers({ etag: '"v1"', "content-type": "multipart/x-mixed-replace; boundary=f" })), false);
  assert.equal(storable(200, headers({ etag: '"v1"', "content-length": String(MAX_BODY + 1) })), false);
  assert.equal(storable(200, headers({ etag: '"v1"', "content-length": String(MAX_BODY) })), true);
});

test("fresh only by what the response states: max-age (minus Age), Expires, never with no-cache", () => {
  const at = Date.UTC(2026, 11, 5, 10, 0, 0);
  const stored = (fields) => headers({ ...fields, [STORED_AT]: String(at) });
  assert.equal(fresh(stored({ "cache-control": "max-age=60" }), at + 59_000), true);
  assert.equal(fresh(stored({ "cache-control": "max-age=60" }), at + 61_000), false);
  assert.equal(fresh(stored({ "cache-control": "public, max-age=60", age: "30" }), at + 31_000), false);
  assert.equal(fresh(stored({ "cache-control": "max-age=31536000, immutable" }), at + 86_400_000), true);
  assert.equal(fresh(stored({ "cache-control": "no-cache, max-age=60" }), at + 1_000), false);
  assert.equal(fresh(stored({ etag: '"v1"' }), at + 1_000), false); // no heuristics
  const date = new Date(at).toUTCString();
  const expires = new Date(at + 120_000).toUTCString();
  assert.equal(fresh(stored({ date, expires }), at + 100_000), true);
  assert.equal(fresh(stored({ date, expires }), at + 130_000), false);
  assert.equal(fresh(stored({ date, expires: "0" }), at + 1_000), false);
  assert.equal(fresh(headers({ "cache-control": "max-age=60" }), at), false); // not stamped
});

test("a stored copy's validators make the request conditional", () => {
  const lm = "Sat, 05 Dec 2026 10:00:00 GMT";
  assert.deepEqual(conditions(headers({ etag: '"v1"', "last-modified": lm })), [
    ["if-none-match", '"v1"'],
    ["if-modified-since", lm],
  ]);
  assert.deepEqual(conditions(headers({ "content-type": "text/css" })), []);
});

test("a 304 updates the stored headers but not those that describe the stored body", () => {
  const stored = headers({
    etag: '"v1"', "cache-control": "max-age=0", "content-length": "1234", "content-type": "text/css",
    [STORED_AT]: "1",
  });
  const fresher = headers({ etag: '"v1"', "cache-control": "max-age=600", "content-length": "0", date: "x" });
  const out = updated(stored, fresher, 5000);
  assert.equal(out.get("cache-control"), "max-age=600");
  assert.equal(out.get("content-length"), "1234");
  assert.equal(out.get("content-type"), "text/css");
  assert.equal(out.get("date"), "x");
  assert.equal(out.get(STORED_AT), "5000");
});

test("Cache-Control directives: names case-insensitive, quoted values unquoted", () => {
  const d = directives('Max-Age="60", no-cache, private');
  assert.equal(d.get("max-age"), "60");
  assert.equal(d.get("no-cache"), true);
  assert.equal(d.has("private"), true);
  assert.equal(directives(null).size, 0);
});

/** Cache Storage as the worker sees it, kept in a Map (keys in insertion order, like Cache). */
class MapCaches {
  constructor() {
    this.entries = new Map();
    this.listed = 0;
    const entries = this.entries;
    const self = this;
    this.cache = {
      async put(url, response) { entries.delete(url); entries.set(url, await response.arrayBuffer()); },
      async delete(url) { return entries.delete(url); },
      async keys() { self.listed += 1; return [...entries.keys()]; },
      async match(url) { return entries.has(url) ? new Response(entries.get(url)) : undefined; },
    };
  }
  async open() { return this.cache; }
}

test("the cache keeps at most MAX_ENTRIES + TRIM_EVERY entries and lists its keys once per TRIM_EVERY stores", async () => {
  const { HttpCache, MAX_ENTRIES, TRIM_EVERY } = globalThis.PeerproxyHttpCache;
  const caches = new MapCaches();
  const body = () => new Response("x").body;
  let cache = new HttpCache(caches);
  let largest = 0;
  const stores = MAX_ENTRIES + 3 * TRIM_EVERY;
  for (let i = 0; i < stores; i++) {
    await cache.store(`${URL_}?${i}`, 200, headers({ etag: '"v"' }), body());
    largest = Math.max(largest, caches.entries.size);
  }
  assert.ok(largest <= MAX_ENTRIES + TRIM_EVERY, `${largest} entries`);
  assert.equal(caches.listed, Math.ceil(stores / TRIM_EVERY));
  assert.ok(await cache.lookup(`${URL_}?${stores - 1}`), "the newest stay");
  assert.equal(await cache.lookup(`${URL_}?0`), null, "the oldest go");
  // A restarted worker (a new HttpCache) trims on its first store.
  cache = new HttpCache(caches);
  await cache.store(`${URL_}?new`, 200, headers({ etag: '"v"' }), body());
  assert.equal(caches.entries.size, MAX_ENTRIES);
});
