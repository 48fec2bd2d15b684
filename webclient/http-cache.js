// A private HTTP cache in the worker, for the app's files.
//
// A response the worker makes never enters Chromium's HTTP cache, so without this every
// reload of the app would fetch every file again over the data channel, where a browser
// talking to the app directly revalidates them (304) or uses them as they are while fresh
// (measured: bench/README.md, "Real apps"). So the worker keeps the app's GET responses that
// carry a validator (ETag or Last-Modified) in Cache Storage and does what a browser's private
// cache does (RFC 9111): a stored response still fresh by its Cache-Control max-age (or
// Expires) is answered without a round trip; otherwise the request goes with If-None-Match /
// If-Modified-Since and a 304 is answered from the copy, its headers updated (§4.3.4). A
// successful unsafe request (POST, PUT, PATCH, DELETE) drops the copy of its URL (§4.4).
//
// Not cached: documents (the frame's navigations: the worker puts the WebSocket shim into
// them), requests the app made conditional or ranged itself, responses without a validator,
// with `no-store`, a Vary on anything but Accept-Encoding, event streams and endless streams,
// and bodies over MAX_BODY bytes. The request's cache mode is honoured as a browser does
// (`no-store` bypasses, `reload` fetches and stores, `no-cache` always revalidates,
// `force-cache` takes any copy). Freshness is only what the response states: no heuristics.
//
// Classic script: the worker loads it with importScripts(); the node tests import it.
"use strict";

((root) => {
  const CACHE_NAME = "peerproxy-http-1";
  const MAX_BODY = 8 * 1024 * 1024; // bytes of one stored body (decoded)
  const MAX_ENTRIES = 1000; // the oldest stored are dropped beyond this
  const TRIM_EVERY = 50; // stores between two trims (listing the keys costs one object each)
  const STORED_AT = "x-peerproxy-stored-at"; // ms since the epoch, on the stored copy
  const CONDITIONAL = ["if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"];
  const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
  const STREAMS = new Set(["text/event-stream", "multipart/x-mixed-replace"]);
  // Headers a 304 does not replace on the stored copy (they describe the stored body).
  const KEEP_ON_304 = new Set(["content-length", "content-encoding", "content-range", "transfer-encoding"]);

  /** Cache-Control directives: lowercase name -> value (string) or true. */
  function directives(value) {
    const out = new Map();
    for (const part of (value || "").split(",")) {
      const [name, ...rest] = part.split("=");
      const key = name.trim().toLowerCase();
      if (!key) continue;
      out.set(key, rest.length ? rest.join("=").trim().replace(/^"(.*)"$/, "$1") : true);
    }
    return out;
  }

  /** How `request` (a Request, the app's) may use the cache: "bypass", "reload" (fetch, then
   *  store), "revalidate" (a copy only after a 304), "default" or "force" (any copy). */
  function mode(request) {
    if (request.method !== "GET" || request.mode === "navigate") return "bypass";
    if (request.headers.has("range") || CONDITIONAL.some((h) => request.headers.has(h))) return "bypass";
    if ((request.headers.get("accept") || "").includes("text/event-stream")) return "bypass";
    switch (request.cache) {
      case "no-store":
        return "bypass";
      case "reload":
        return "reload";
      case "no-cache":
        return "revalidate";
      case "force-cache":
      case "only-if-cached":
        return "force";
      default:
        return directives(request.headers.get("cache-control")).has("no-cache") ||
          /no-cache/i.test(request.headers.get("pragma") || "")
          ? "revalidate"
          : "default";
    }
  }

  /** Whether a response (its status and Headers, as the app will get them) may be stored. */
  function storable(status, headers) {
    if (status !== 200) return false;
    if (!headers.has("etag") && !headers.has("last-modified")) return false;
    if (directives(headers.get("cache-control")).has("no-store")) return false;
    const vary = (headers.get("vary") || "").split(",").map((v) => v.trim().toLowerCase()).filter(Boolean);
    if (vary.some((v) => v !== "accept-encoding")) return false; // "*" included
    if (headers.has("content-range")) return false;
    const type = (headers.get("content-type") || "").split(";")[0].trim().toLowerCase();
    if (STREAMS.has(type)) return false;
    const length = Number(headers.get("content-length") ?? 0);
    return !(length > MAX_BODY);
  }

  /** Whether a stored copy (its Headers, with STORED_AT) is fresh at `now` (ms). */
  function fresh(headers, now) {
    const cc = directives(headers.get("cache-control"));
    if (cc.has("no-cache")) return false;
    const storedAt = Number(headers.get(STORED_AT));
    if (!Number.isFinite(storedAt)) return false;
    const age = Math.max(0, (now - storedAt) / 1000) + (Number(headers.get("age")) || 0);
    let lifetime = null;
    if (cc.has("max-age")) {
      lifetime = Number.parseInt(cc.get("max-age"), 10);
    } else if (headers.has("expires")) {
      const expires = Date.parse(headers.get("expires"));
      const date = Date.parse(headers.get("date") || "") || storedAt;
      lifetime = Number.isFinite(expires) ? (expires - date) / 1000 : 0;
    }
    return Number.isFinite(lifetime) && lifetime !== null && age < lifetime;
  }

  /** The conditional request headers for a stored copy: [[name, value], ...]. */
  function conditions(headers) {
    const out = [];
    if (headers.has("etag")) out.push(["if-none-match", headers.get("etag")]);
    if (headers.has("last-modified")) out.push(["if-modified-since", headers.get("last-modified")]);
    return out;
  }

  /** The stored copy's Headers updated by a 304's (`fresher`: Headers), stamped `now`. */
  function updated(stored, fresher, now) {
    const headers = new Headers(stored);
    for (const name of new Set(fresher.keys())) {
      if (KEEP_ON_304.has(name) || name === STORED_AT) continue;
      headers.delete(name);
      for (const [n, v] of fresher) if (n === name) headers.append(n, v);
    }
    headers.set(STORED_AT, String(now));
    return headers;
  }

  /** `body` (a stream) cut off with an error past MAX_BODY bytes, so Cache.put refuses it. */
  function bounded(body) {
    let seen = 0;
    return body.pipeThrough(
      new TransformStream({
        transform(chunk, controller) {
          seen += chunk.byteLength;
          if (seen > MAX_BODY) controller.error(new RangeError("too large to cache"));
          else controller.enqueue(chunk);
        },
      }),
    );
  }

  /** Shown to the app: the stored copy without our stamp. */
  function forApp(response, headers = response.headers) {
    const shown = new Headers(headers);
    shown.delete(STORED_AT);
    return new Response(response.body, { status: response.status, statusText: response.statusText, headers: shown });
  }

  class HttpCache {
    constructor(storage = root.caches) {
      this.storage = storage;
      this.opened = null;
      this.stored = 0;
    }

    _cache() {
      this.opened ??= this.storage.open(CACHE_NAME);
      return this.opened;
    }

    /** The stored copy for `url`: {response, fresh} or null. */
    async lookup(url, now = Date.now()) {
      const response = await (await this._cache()).match(url);
      return response ? { response, fresh: fresh(response.headers, now) } : null;
    }

    /** Keep `status`/`headers`/`body` (a stream) for `url`; resolves when written or refused. */
    async store(url, status, headers, body, now = Date.now()) {
      const stamped = new Headers(headers);
      stamped.set(STORED_AT, String(now));
      const cache = await this._cache();
      try {
        await cache.put(url, new Response(bounded(body), { status, headers: stamped }));
      } catch {
        await cache.delete(url); // too large, or the body broke: nothing half-stored
        return;
      }
      // The first store of this worker's life, then every TRIM_EVERY-th: at most
      // MAX_ENTRIES + TRIM_EVERY entries, however often the worker is restarted.
      if (this.stored++ % TRIM_EVERY === 0) await this.trim(cache);
    }

    /** Drop the oldest entries beyond MAX_ENTRIES (keys() lists them oldest first). */
    async trim(cache) {
      const keys = await cache.keys();
      for (const old of keys.slice(0, Math.max(0, keys.length - MAX_ENTRIES))) await cache.delete(old);
    }

    /** After a 304: the stored copy with its headers updated, also in the cache. */
    async revalidated(url, copy, fresher, now = Date.now()) {
      const headers = updated(copy.headers, fresher, now);
      const [forUs, forCache] = copy.body ? copy.body.tee() : [null, null];
      const cache = await this._cache();
      const kept = cache.put(url, new Response(forCache, { status: copy.status, headers })).catch(() => {});
      return { response: forApp(new Response(forUs, { status: copy.status, headers })), kept };
    }

    /** A successful unsafe request to `url` makes its copy stale for good. */
    async invalidate(url) {
      await (await this._cache()).delete(url);
    }
  }

  root.PeerproxyHttpCache = {
    HttpCache, mode, storable, fresh, conditions, updated, directives, forApp,
    UNSAFE, MAX_BODY, STORED_AT, MAX_ENTRIES, TRIM_EVERY,
  };
})(typeof self !== "undefined" ? self : globalThis);
