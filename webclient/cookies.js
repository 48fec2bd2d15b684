// The cookie jar of one device+service origin, kept by the service worker.
//
// A worker-made Response cannot set cookies (the Fetch API drops Set-Cookie) and requests it
// answers never get the browser's Cookie header, so the worker does what a browser does
// (RFC 6265bis): parse each Set-Cookie, keep the cookie, add `Cookie` to matching requests.
//
// Where cookies live:
// - Every cookie the device sets is kept here, persisted in IndexedDB (per origin, that is
//   per device+service). This jar is what requests carry.
// - Cookies that are not HttpOnly are also written to the browser's own cookie store for this
//   origin (Cookie Store API), so `document.cookie` inside the app sees them; the app's
//   scripts can change them or add their own there. For the paths the worker can read back
//   (Chromium lets a worker read only the cookies of its own script URL: Path=/), the
//   browser's store is the truth for those cookies; HttpOnly ones never leave this jar.
//   Without the Cookie Store API (not Chromium) scripts see no cookies.
//
// Classic script: the worker loads it with importScripts(); the node tests import it.
(function (root) {
  "use strict";

  const MAX_COOKIES = 180;
  const MAX_NAME_VALUE = 4096;
  const MAX_AGE_CAP = 400 * 24 * 3600 * 1000; // RFC 6265bis: at most 400 days
  const DB_NAME = "peerproxy-cookies";
  const STORE = "cookies";

  function trim(s) {
    return s.replace(/^[ \t]+|[ \t]+$/g, "");
  }

  /** RFC 6265 5.1.4 default-path of a request path. */
  function defaultPath(path) {
    if (!path.startsWith("/")) return "/";
    const last = path.lastIndexOf("/");
    return last <= 0 ? "/" : path.slice(0, last);
  }

  /** RFC 6265 5.1.4 path-match. */
  function pathMatches(requestPath, cookiePath) {
    if (requestPath === cookiePath) return true;
    if (!requestPath.startsWith(cookiePath)) return false;
    return cookiePath.endsWith("/") || requestPath[cookiePath.length] === "/";
  }

  /** RFC 6265 5.1.3 domain-match. */
  function domainMatches(host, domain) {
    if (host === domain) return true;
    return host.endsWith("." + domain) && !/^[\d.]+$|:/.test(host);
  }

  function parseDate(text) {
    const ms = Date.parse(text.replace(/-/g, " "));
    if (!Number.isNaN(ms)) return ms;
    const again = Date.parse(text);
    return Number.isNaN(again) ? null : again;
  }

  /**
   * One Set-Cookie header received for `url` (a URL) at `now` (ms): the cookie, or
   * {error} saying why a browser would ignore it. An expiry in the past means "delete".
   */
  function parseSetCookie(header, url, now) {
    const [pair, ...attrs] = header.split(";");
    const eq = pair.indexOf("=");
    const name = eq < 0 ? "" : trim(pair.slice(0, eq));
    const value = eq < 0 ? trim(pair) : trim(pair.slice(eq + 1));
    if (!name && !value) return { error: "empty cookie" };
    if (/[\x00-\x08\x0a-\x1f\x7f]/.test(name + value)) return { error: "control character" };
    if (name.length + value.length > MAX_NAME_VALUE) return { error: "too large" };
    const host = url.hostname.toLowerCase();
    const cookie = {
      name,
      value,
      domain: host,
      hostOnly: true,
      path: defaultPath(url.pathname),
      expires: null, // ms since the epoch; null: a session cookie
      secure: false,
      httpOnly: false,
      sameSite: "lax", // Lax by default, as Chromium
      sameSiteSet: false,
      created: now,
    };
    let maxAge = null;
    let expires = null;
    for (const attr of attrs) {
      const at = attr.indexOf("=");
      const key = trim(at < 0 ? attr : attr.slice(0, at)).toLowerCase();
      const val = at < 0 ? "" : trim(attr.slice(at + 1));
      if (key === "expires") {
        const ms = parseDate(val);
        if (ms !== null) expires = ms;
      } else if (key === "max-age") {
        if (/^-?\d+$/.test(val)) maxAge = Number(val);
      } else if (key === "domain") {
        let domain = val.toLowerCase().replace(/^\./, "");
        if (!domain) continue;
        if (!domainMatches(host, domain)) return { error: `domain ${domain} does not match ${host}` };
        // Accepted as a browser would, but this jar belongs to one origin: it stays here.
        cookie.domain = domain;
        cookie.hostOnly = domain === host;
      } else if (key === "path") {
        cookie.path = val.startsWith("/") ? val : defaultPath(url.pathname);
      } else if (key === "secure") {
        cookie.secure = true;
      } else if (key === "httponly") {
        cookie.httpOnly = true;
      } else if (key === "samesite") {
        const v = val.toLowerCase();
        cookie.sameSite = ["strict", "lax", "none"].includes(v) ? v : "lax";
        cookie.sameSiteSet = true;
      }
    }
    if (maxAge !== null) cookie.expires = maxAge <= 0 ? 0 : now + Math.min(maxAge * 1000, MAX_AGE_CAP);
    else if (expires !== null) cookie.expires = Math.min(expires, now + MAX_AGE_CAP);
    const secureOrigin = url.protocol === "https:" || host === "localhost" || host.endsWith(".localhost");
    if (cookie.secure && !secureOrigin) return { error: "Secure cookie from an insecure origin" };
    if (cookie.sameSite === "none" && !cookie.secure) return { error: "SameSite=None without Secure" };
    if (name.startsWith("__Secure-") && !cookie.secure) return { error: "__Secure- prefix without Secure" };
    if (name.startsWith("__Host-") && !(cookie.secure && cookie.hostOnly && cookie.path === "/")) {
      return { error: "__Host- prefix needs Secure, Path=/ and no Domain" };
    }
    return cookie;
  }

  function key(c) {
    return `${c.name}\u0000${c.domain}\u0000${c.path}`;
  }

  function expired(c, now) {
    return c.expires !== null && c.expires <= now;
  }

  /**
   * The cookies in memory, written through to `backend` ({load, put, remove}); `browser`
   * (optional) is the browser's own store for non-HttpOnly cookies ({get(url), set(c), remove(c)}).
   */
  class CookieJar {
    constructor(backend, browser = null) {
      this.backend = backend;
      this.browser = browser;
      this.cookies = new Map();
      this.ready = this._load();
    }

    async _load() {
      const now = Date.now();
      for (const c of await this.backend.load()) {
        if (expired(c, now)) await this.backend.remove(key(c));
        else this.cookies.set(key(c), c);
      }
    }

    /** Apply the Set-Cookie headers of a response to a request for `url`. */
    async store(url, headers, { now = Date.now() } = {}) {
      await this.ready;
      const results = [];
      for (const header of headers) {
        const cookie = parseSetCookie(header, url, now);
        results.push(cookie);
        if (cookie.error) continue;
        const k = key(cookie);
        const old = this.cookies.get(k);
        if (old) cookie.created = old.created; // RFC 6265 5.3 step 11.3
        const remove = expired(cookie, now);
        if (remove) {
          if (old) await this._delete(k);
        } else {
          this.cookies.set(k, cookie);
          await this.backend.put(cookie);
          await this._evict();
        }
        if (this.browser) {
          // Mirror for the app's scripts; an HttpOnly cookie replaces a visible one.
          if (remove || cookie.httpOnly) await this.browser.remove(cookie);
          else await this.browser.set(cookie);
        }
      }
      return results;
    }

    async _delete(k) {
      this.cookies.delete(k);
      await this.backend.remove(k);
    }

    async _evict() {
      if (this.cookies.size <= MAX_COOKIES) return;
      const oldest = [...this.cookies.values()].sort((a, b) => a.created - b.created);
      for (const c of oldest.slice(0, this.cookies.size - MAX_COOKIES)) await this._delete(key(c));
    }

    /** Cookies of this jar for a request to `url`, longest path first (RFC 6265 5.4). */
    async matching(url, { now = Date.now() } = {}) {
      await this.ready;
      const host = url.hostname.toLowerCase();
      const found = [];
      for (const c of [...this.cookies.values()]) {
        if (expired(c, now)) {
          await this._delete(key(c));
          continue;
        }
        if (c.hostOnly ? c.domain !== host : !domainMatches(host, c.domain)) continue;
        if (!pathMatches(url.pathname, c.path)) continue;
        found.push(c);
      }
      return found;
    }

    /** The Cookie header for a request to `url`: ours and the browser's, longest path first. */
    async cookieHeader(url, { now = Date.now() } = {}) {
      let all = await this.matching(url, { now });
      if (this.browser) {
        // Where the browser's store can be read, it is the truth for script-visible cookies.
        const theirs = (await this.browser.get()).filter((b) => pathMatches(url.pathname, b.path ?? "/"));
        all = all.filter((c) => c.httpOnly || !this.browser.visible(c.path));
        all.push(...theirs.filter((b) => !all.some((o) => o.name === b.name && o.path === b.path)));
      }
      const created = (c) => c.created ?? Number.MAX_SAFE_INTEGER; // the browser's: unknown, last
      all.sort((a, b) => (b.path?.length ?? 1) - (a.path?.length ?? 1) || created(a) - created(b));
      return all.map((c) => (c.name ? `${c.name}=${c.value}` : c.value)).join("; ");
    }
  }

  function memoryBackend(initial = []) {
    const items = new Map(initial.map((c) => [key(c), c]));
    return {
      items,
      async load() {
        return [...items.values()];
      },
      async put(c) {
        items.set(key(c), { ...c });
      },
      async remove(k) {
        items.delete(k);
      },
    };
  }

  function request(req) {
    return new Promise((resolve, reject) => {
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  function indexedDbBackend() {
    const opened = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(STORE);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    const store = async (mode) => (await opened).transaction(STORE, mode).objectStore(STORE);
    return {
      async load() {
        return request((await store("readonly")).getAll());
      },
      async put(c) {
        await request((await store("readwrite")).put(c, key(c)));
      },
      async remove(k) {
        await request((await store("readwrite")).delete(k));
      },
    };
  }

  /**
   * The browser's cookie store (Cookie Store API), for cookies the app's scripts may see.
   * Chromium lets a worker read only the cookies of its script URL (`workerPath`).
   */
  function browserStore(cookieStore, workerPath) {
    const normal = (path) => (path.endsWith("/") ? path : path + "/"); // as the API stores it
    return {
      visible(path) {
        return pathMatches(workerPath, normal(path)) || pathMatches(workerPath, path);
      },
      // Host-only, always: a Domain cookie in the browser's store would reach every other
      // device's origin under the same domain. For the same reason cookies with a domain
      // (planted by some app's script with `domain=`) are never sent.
      async get() {
        const list = await cookieStore.getAll();
        return list
          .filter((c) => !c.domain)
          .map((c) => ({ name: c.name, value: c.value, path: c.path ?? "/" }));
      },
      async set(c) {
        const options = { name: c.name, value: c.value, path: c.path, sameSite: c.sameSite };
        if (c.expires !== null) options.expires = c.expires;
        await cookieStore.set(options);
      },
      async remove(c) {
        await cookieStore.delete({ name: c.name, path: c.path });
      },
    };
  }

  let opened = null;

  /** The jar of this origin (one per worker). */
  function open() {
    if (!opened) {
      const browser = root.cookieStore ? browserStore(root.cookieStore, root.location.pathname) : null;
      opened = new CookieJar(indexedDbBackend(), browser);
    }
    return opened;
  }

  root.PeerproxyCookies = {
    CookieJar,
    parseSetCookie,
    pathMatches,
    defaultPath,
    memoryBackend,
    open,
  };
})(typeof self !== "undefined" ? self : globalThis);
