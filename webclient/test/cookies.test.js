// webclient/cookies.js: Set-Cookie parsing and matching as a browser does (RFC 6265bis).
import assert from "node:assert/strict";
import { test } from "node:test";

import "../cookies.js"; // a classic script: defines globalThis.PeerproxyCookies

const { CookieJar, parseSetCookie, pathMatches, memoryBackend } = globalThis.PeerproxyCookies;
const ORIGIN = "http://test-pi--camera.localhost:8787";
const url = (path) => new URL(ORIGIN + path);
const NOW = Date.UTC(2026, 10, 23, 12, 0, 0);

test("attributes: path, Max-Age over Expires, HttpOnly, Secure, SameSite", () => {
  const c = parseSetCookie(
    "sid=abc; Path=/app; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Max-Age=60; HttpOnly; Secure; SameSite=Strict",
    url("/login"), NOW);
  assert.equal(c.name, "sid");
  assert.equal(c.value, "abc");
  assert.equal(c.path, "/app");
  assert.equal(c.expires, NOW + 60_000);
  assert.equal(c.httpOnly, true);
  assert.equal(c.secure, true);
  assert.equal(c.sameSite, "strict");
  assert.equal(c.hostOnly, true);
  assert.equal(parseSetCookie("a=1; Expires=Tue, 01 Jun 2027 07:28:00 GMT", url("/"), NOW).expires,
    Date.UTC(2027, 5, 1, 7, 28, 0));
  assert.equal(parseSetCookie("a=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT", url("/"), NOW).expires,
    NOW + 400 * 86400_000); // capped at 400 days
  assert.equal(parseSetCookie("a=1; expires=Thu, 01-Jan-1970 00:00:00 GMT", url("/"), NOW).expires, 0);
  assert.equal(parseSetCookie("a=1", url("/a/b/c"), NOW).path, "/a/b");
  assert.equal(parseSetCookie("a=1; Path=relative", url("/a/b"), NOW).path, "/a");
  assert.equal(parseSetCookie("a=1", url("/"), NOW).sameSite, "lax");
  assert.equal(parseSetCookie("a=1; Max-Age=999999999", url("/"), NOW).expires, NOW + 400 * 86400_000);
});

test("cookies a browser would refuse", () => {
  const refused = (header) => parseSetCookie(header, url("/"), NOW).error;
  assert.match(refused("a=1; Domain=example.com"), /does not match/);
  assert.match(refused("a=1; SameSite=None"), /SameSite=None without Secure/);
  assert.match(refused("__Secure-a=1"), /__Secure-/);
  assert.match(refused("__Host-a=1; Secure; Path=/x"), /__Host-/);
  assert.match(refused("__Host-a=1; Secure; Path=/; Domain=localhost"), /__Host-/);
  assert.equal(refused("__Host-a=1; Secure; Path=/"), undefined);
  assert.equal(refused("a=1; Domain=.localhost"), undefined); // a parent domain of the origin
  assert.match(parseSetCookie("a=1; Secure", new URL("http://pi--cam.example.net/"), NOW).error, /insecure/);
});

test("path-match", () => {
  assert.ok(pathMatches("/api/x", "/api"));
  assert.ok(pathMatches("/api", "/api"));
  assert.ok(pathMatches("/api/", "/api/"));
  assert.ok(!pathMatches("/apix", "/api"));
  assert.ok(!pathMatches("/", "/api"));
});

test("the jar: store, replace, expire, delete, Cookie header order", async () => {
  const backend = memoryBackend();
  const jar = new CookieJar(backend);
  await jar.store(url("/login"), ["session=s1; Path=/; HttpOnly", "scoped=x; Path=/api", "short=1; Max-Age=10"], { now: NOW });
  assert.equal(await jar.cookieHeader(url("/"), { now: NOW }), "session=s1; short=1");
  assert.equal(await jar.cookieHeader(url("/api/echo"), { now: NOW }), "scoped=x; session=s1; short=1");
  // After Max-Age the cookie is gone, from memory and from storage.
  assert.equal(await jar.cookieHeader(url("/"), { now: NOW + 11_000 }), "session=s1");
  assert.equal(backend.items.size, 2);
  // Same name, domain and path: replaced, creation time kept.
  await jar.store(url("/"), ["session=s2; Path=/; HttpOnly"], { now: NOW + 20_000 });
  assert.equal(await jar.cookieHeader(url("/"), { now: NOW + 20_000 }), "session=s2");
  assert.equal([...jar.cookies.values()].find((c) => c.name === "session").created, NOW);
  // Max-Age=0 deletes; so does an Expires in the past.
  await jar.store(url("/"), ["session=; Path=/; Max-Age=0", "scoped=; Path=/api; Expires=Thu, 01 Jan 1970 00:00:00 GMT"], { now: NOW + 30_000 });
  assert.equal(await jar.cookieHeader(url("/api/x"), { now: NOW + 30_000 }), "");
  assert.equal(backend.items.size, 0);
  // Another origin's host never matches (the jar is per origin anyway).
  await jar.store(url("/"), ["a=1"], { now: NOW });
  assert.equal(await jar.cookieHeader(new URL("http://other--svc.localhost:8787/"), { now: NOW }), "");
});

test("persisted: a new jar over the same storage has the cookies", async () => {
  const backend = memoryBackend();
  await new CookieJar(backend).store(url("/"), ["keep=1; Max-Age=3600; HttpOnly"]);
  assert.equal(await new CookieJar(backend).cookieHeader(url("/")), "keep=1");
});

test("with the browser's store: all cookies in the jar, visible ones mirrored", async () => {
  // A fake of the Cookie Store API as Chromium behaves for a worker at /__peerproxy/sw.js:
  // only Path=/ (and /__peerproxy/) cookies can be read back.
  const store = new Map();
  const readable = (path) => path === "/" || path === "/__peerproxy/";
  const browser = {
    visible: readable,
    async get() {
      return [...store.values()].filter((c) => readable(c.path));
    },
    async set(c) {
      store.set(`${c.name}|${c.path}`, { name: c.name, value: c.value, path: c.path });
    },
    async remove(c) {
      store.delete(`${c.name}|${c.path}`);
    },
  };
  const jar = new CookieJar(memoryBackend(), browser);
  await jar.store(url("/login"), ["session=s; HttpOnly; Path=/", "theme=dark; Path=/", "scoped=x; Path=/api"], { now: NOW });
  assert.deepEqual([...store.keys()].sort(), ["scoped|/api", "theme|/"]);
  assert.equal(jar.cookies.size, 3);
  assert.equal(await jar.cookieHeader(url("/"), { now: NOW }), "session=s; theme=dark");
  // Path=/api cannot be read back: the jar's copy is sent.
  assert.equal(await jar.cookieHeader(url("/api/x"), { now: NOW }), "scoped=x; session=s; theme=dark");
  // The app's script changes and adds Path=/ cookies: the browser's values win.
  store.set("theme|/", { name: "theme", value: "light", path: "/" });
  store.set("jsset|/", { name: "jsset", value: "1", path: "/" });
  assert.equal(await jar.cookieHeader(url("/"), { now: NOW }), "session=s; theme=light; jsset=1");
  // ...and deletes one: not sent any more, though the jar still holds the device's copy.
  store.delete("theme|/");
  assert.equal(await jar.cookieHeader(url("/"), { now: NOW }), "session=s; jsset=1");
  // An HttpOnly cookie replaces a visible one of the same name and path, and the reverse.
  await jar.store(url("/"), ["jsset=hidden; Path=/; HttpOnly"], { now: NOW });
  assert.equal(store.has("jsset|/"), false);
  assert.equal(await jar.cookieHeader(url("/"), { now: NOW }), "session=s; jsset=hidden");
  await jar.store(url("/"), ["session=; Max-Age=0; Path=/", "jsset=; Max-Age=0; Path=/"], { now: NOW });
  assert.equal(await jar.cookieHeader(url("/"), { now: NOW }), "");
});
