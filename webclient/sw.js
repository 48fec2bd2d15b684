// The service worker of one device+service origin. It forwards every request of the proxied
// app (the frame's navigations and everything the frame, its sub-frames and workers load) to
// the manager page, which owns the data channel (a worker has no WebRTC), and answers with a
// streamed Response as the device's bytes arrive. The manager's own page and files go to the
// network: top-level navigations (the manager at any path) and /__peerproxy/.
//
// The worker <-> page message protocol is described in relay.js.
/* global PeerproxyCookies, PeerproxyWsInject, PeerproxyEventStream, PeerproxyHttpCache */
"use strict";

importScripts(
  "/__peerproxy/cookies.js", "/__peerproxy/ws-inject.js", "/__peerproxy/event-stream.js",
  "/__peerproxy/http-cache.js",
);

const PREFIX = "/__peerproxy/";
const MAX_PIECE = 256 * 1024; // request-body bytes per message to the page (its credit: 1 MiB)
const RESPONSE_HIGH_WATER = 256 * 1024; // bytes the Response stream buffers before "consumed" pauses
// Consumed bytes reported to the page at once: it grants WINDOW per 256 KiB anyway, so one
// "consumed" per 16 KiB chunk only cost the page a task each. What stays unreported (< 64 KiB)
// plus the page's ungranted (< 256 KiB) leaves the device most of its 1 MiB window.
const ACK_BATCH = 64 * 1024;
const MANAGER_WAIT = 10_000;
const ACCEPT_WAIT = 5_000;
// How long a request waits for the sign-in dialog: Chromium ends a fetch event that has not
// answered in 5 minutes. Later, the app gets its 401 and the page reloads the frame on sign-in.
const SIGN_IN_WAIT = 240_000;
const NULL_BODY = new Set([101, 103, 204, 205, 304]);
const DECODABLE = new Set(["gzip", "deflate"]);
const httpCache = new PeerproxyHttpCache.HttpCache(); // the app's files (http-cache.js)

// The client's own files and the manager page (top-level documents) never need this worker:
// with these routes the browser fetches them without starting it or dispatching a fetch event
// (the Static Routing API, Chromium 123+; elsewhere the fetch handler lets them through).
self.addEventListener("install", (event) => {
  self.skipWaiting();
  if (!event.addRoutes || typeof URLPattern !== "function") return;
  const routes = [
    { condition: { urlPattern: new URLPattern({ pathname: `${PREFIX}*` }) }, source: "network" },
    { condition: { requestMode: "navigate", requestDestination: "document" }, source: "network" },
  ];
  event.waitUntil(
    event.addRoutes(routes)
      .catch(() => event.addRoutes(routes.slice(0, 1))) // no destination condition
      .catch((exc) => console.warn("peerproxy: no static routes:", exc)),
  );
});
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

// ----- managers: the pages that own a data channel to this origin's device+service

const managers = new Map(); // clientId -> MessagePort, most recently registered last
let managerArrived = [];

self.addEventListener("message", (event) => {
  const msg = event.data || {};
  const id = event.source && event.source.id;
  if (msg.type === "manager" && event.ports[0] && id) {
    managers.delete(id);
    managers.set(id, event.ports[0]);
    const waiters = managerArrived;
    managerArrived = [];
    for (const w of waiters) w();
  } else if (msg.type === "manager-gone" && id) {
    managers.delete(id);
  } else if (msg.type === "cookie-header" && event.ports[0]) {
    // The manager opens the app's WebSockets (wsbridge.js): their upgrade carries the jar's
    // cookies, and their Set-Cookie goes into it.
    const reply = event.ports[0];
    PeerproxyCookies.open().cookieHeader(new URL(msg.url))
      .then((cookie) => reply.postMessage({ cookie }), () => reply.postMessage({}));
  } else if (msg.type === "set-cookies" && event.ports[0]) {
    const reply = event.ports[0];
    PeerproxyCookies.open().store(new URL(msg.url), msg.headers)
      .then(() => reply.postMessage({}), () => reply.postMessage({}));
  }
});

/** A live manager's port: the newest registered whose window still exists. */
async function managerPort() {
  const deadline = Date.now() + MANAGER_WAIT;
  let asked = false;
  while (Date.now() < deadline) {
    for (const id of [...managers.keys()].reverse()) {
      if (await self.clients.get(id)) return { id, port: managers.get(id) };
      managers.delete(id);
    }
    if (!asked) {
      // This worker may have been restarted and lost its ports: ask the pages again.
      asked = true;
      const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      for (const w of windows) if (w.frameType === "top-level") w.postMessage({ type: "need-port" });
    }
    await new Promise((resolve) => {
      managerArrived.push(resolve);
      setTimeout(resolve, 500);
    });
  }
  return null;
}

// ----- which requests belong to the app

async function shouldProxy(event) {
  const request = event.request;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return false; // other origins: the network
  if (url.pathname.startsWith(PREFIX)) return false; // the client's own files
  if (request.mode === "navigate") return request.destination !== "document";
  if (!event.clientId) return true;
  const client = await self.clients.get(event.clientId);
  // The manager page itself (top level) loads only /__peerproxy/; anything else it fetches
  // is not the app's. Frames and workers are the app's.
  return !(client && client.type === "window" && client.frameType === "top-level");
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin || url.pathname.startsWith(PREFIX)) return;
  if (event.request.mode === "navigate" && event.request.destination === "document") return;
  event.respondWith(
    shouldProxy(event).then((yes) => (yes ? proxy(event) : fetch(event.request))),
  );
});

// ----- one request

function requestHeaders(request, url) {
  const headers = [];
  for (const [name, value] of request.headers) headers.push([name, value]);
  const has = (name) => headers.some(([n]) => n === name);
  headers.push(["host", url.host]);
  headers.push(["x-forwarded-proto", url.protocol === "https:" ? "https" : "http"]);
  if (!has("user-agent")) headers.push(["user-agent", self.navigator.userAgent]);
  if (!has("accept-language") && self.navigator.languages?.length) {
    headers.push(["accept-language", self.navigator.languages.join(",")]);
  }
  headers.push(["accept-encoding", "gzip, deflate"]);
  const referrer = request.referrer;
  if (referrer && /^https?:/.test(referrer) && !has("referer")) headers.push(["referer", referrer]);
  if (!["GET", "HEAD"].includes(request.method) && !has("origin")) {
    headers.push(["origin", self.location.origin]);
  }
  return headers;
}

function errorResponse(status, message) {
  const text = `<!doctype html><meta charset="utf-8"><title>peerproxyd: ${status}</title>` +
    `<body style="font:15px system-ui,sans-serif;margin:2rem;color:#333">` +
    `<h1 style="font-size:1.2rem">The device could not be reached</h1>` +
    `<p>${message.replace(/[<&>]/g, (c) => `&#${c.charCodeAt(0)};`)}</p>`;
  return new Response(text, {
    status,
    headers: { "content-type": "text/html; charset=utf-8", "x-peerproxy-error": "1" },
  });
}

/** Headers of the device's response as the browser may see them; the jar takes Set-Cookie. */
function responseHeaders(raw, { frame, decode }) {
  const headers = new Headers();
  for (const [name, value] of raw) {
    const lower = name.toLowerCase();
    if (lower === "set-cookie" || lower === "set-cookie2") continue;
    if (decode && (lower === "content-encoding" || lower === "content-length")) continue;
    if (frame && lower === "x-frame-options") {
      // The app runs in our frame, in its own origin, under a manager page that may not be
      // framed itself (frame-ancestors 'none'): DENY would only block the app's own page.
      if (value.trim().toLowerCase() === "deny") headers.append(name, "SAMEORIGIN");
      else headers.append(name, value);
      continue;
    }
    if (frame && lower === "content-security-policy") {
      headers.append(name, value.replace(/frame-ancestors\s+'none'/gi, "frame-ancestors 'self'"));
      continue;
    }
    try {
      headers.append(name, value);
    } catch {
      // a header value the Fetch API refuses: drop it
    }
  }
  return headers;
}

/** Ask the manager for Basic credentials (signin.js): {authorization} or {cancel: true}. */
function askSignIn(manager, question) {
  const { port1, port2 } = new MessageChannel();
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ cancel: true }), SIGN_IN_WAIT);
    port1.onmessage = (e) => {
      clearTimeout(timer);
      resolve(e.data || { cancel: true });
      port1.close();
    };
    port1.addEventListener("close", () => resolve({ cancel: true })); // the page went away
    manager.port.postMessage({ type: "basic-auth", ...question, wait: SIGN_IN_WAIT }, [port2]);
  });
}

async function proxy(event) {
  const request = event.request;
  const url = new URL(request.url);
  const target = url.pathname + url.search;
  // An EventSource retries after a network error, but gives up for good on an error status
  // (HTML standard): outages (ours, the device's 502/503/504) are network errors for it.
  const eventSource = PeerproxyEventStream.isEventStreamRequest(request);
  const outage = (status, message) => (eventSource ? Response.error() : errorResponse(status, message));
  // An EventSource's reconnection reaches a worker without its Last-Event-ID (event-stream.js).
  const resumeFrom = PeerproxyEventStream.lastEventId(event.clientId, request);
  // tracked: a text/event-stream response whose ids event-stream.js tracks (set below)
  const events = { clientId: event.clientId, url: request.url, tracked: false };
  // Every request of the app is same-site (same origin, made inside our frame), so SameSite
  // never withholds a cookie here; credentials: "omit" does.
  const useCookies = request.credentials !== "omit";
  const jar = PeerproxyCookies.open();
  // Kept as a Blob (browser-managed, may live on disk), so a request can be sent again.
  let body = null;
  if (!["GET", "HEAD"].includes(request.method)) {
    const blob = await request.blob();
    if (blob.size) body = blob;
  }
  const frame = request.mode === "navigate";
  // The worker's HTTP cache (http-cache.js): a fresh copy answers at once; a stale one makes
  // the request conditional, and a 304 is answered from it.
  const cacheMode = PeerproxyHttpCache.mode(request);
  let copy = null;
  if (cacheMode !== "bypass" && cacheMode !== "reload") {
    try {
      const found = await httpCache.lookup(request.url);
      if (found && (cacheMode === "force" || (cacheMode === "default" && found.fresh))) {
        return PeerproxyHttpCache.forApp(found.response);
      }
      copy = found?.response ?? null;
    } catch (exc) {
      console.warn("peerproxy: HTTP cache unavailable:", exc);
    }
  }
  // HTTP Basic auth, as a browser does it (basicauth.js): the page adds this tab's credentials
  // for the path; a 401 with a Basic challenge asks the page (its sign-in dialog) and the
  // request goes again with what the user gave. Not for requests without credentials, nor
  // when the app set its own Authorization.
  const basicAuth = useCookies && !request.headers.has("authorization");
  let authorization = null; // from the dialog
  let exchange;
  let answer;
  for (;;) {
    const manager = await managerPort();
    if (!manager) return outage(503, "The peerproxyd page that holds the connection is not open.");
    const headers = requestHeaders(request, url);
    if (resumeFrom !== null) headers.push(["last-event-id", resumeFrom]);
    if (useCookies) {
      try {
        const cookie = await jar.cookieHeader(url);
        if (cookie) headers.push(["cookie", cookie]);
      } catch (exc) {
        console.warn("peerproxy: cookie jar unavailable:", exc);
      }
    }
    if (authorization) headers.push(["authorization", authorization]);
    if (copy) headers.push(...PeerproxyHttpCache.conditions(copy.headers));
    const msg = {
      type: "fetch",
      method: request.method,
      target,
      headers,
      hasBody: body !== null,
      destination: request.destination,
      basicAuth: basicAuth && !authorization,
    };
    exchange = send(event, manager, msg, body, events);
    answer = await exchange.head;
    if (answer.type === "error") {
      return outage(answer.status || 502, answer.message);
    }
    // Before the Response goes out, so the app's scripts already see the new cookies.
    const setCookies = answer.headers.filter(([n]) => n.toLowerCase() === "set-cookie").map(([, v]) => v);
    if (setCookies.length && useCookies) {
      try {
        await jar.store(url, setCookies);
      } catch (exc) {
        console.warn("peerproxy: could not store cookies:", exc);
      }
    }
    if (answer.status !== 401 || !basicAuth || answer.basicRealm == null) break;
    const sent = authorization ?? answer.authorization ?? null;
    const reply = await askSignIn(manager, { realm: answer.basicRealm, target, sent });
    if (!reply.authorization) break; // Cancel: the app gets the 401
    exchange.stream.cancel().catch(() => {});
    authorization = reply.authorization;
  }
  event.waitUntil(exchange.finished);
  if (PeerproxyHttpCache.UNSAFE.has(request.method) && answer.status < 400) {
    event.waitUntil(httpCache.invalidate(request.url).catch(() => {}));
  }
  if (copy && answer.status === 304) {
    exchange.stream.cancel().catch(() => {});
    const fresher = responseHeaders(answer.headers, { frame: false, decode: false });
    const { response, kept } = await httpCache.revalidated(request.url, copy, fresher);
    event.waitUntil(kept);
    return response;
  }

  const encoding = (answer.headers.find(([n]) => n.toLowerCase() === "content-encoding")?.[1] || "")
    .trim().toLowerCase();
  const decode = DECODABLE.has(encoding);
  const status = answer.status;
  const init = { status, headers: responseHeaders(answer.headers, { frame, decode }) };
  const stream = exchange.stream;
  if (eventSource && status >= 502 && status <= 504 && init.headers.has("x-peerproxy-error")) {
    stream.cancel().catch(() => {}); // the daemon could not reach the app: retry, as above
    return Response.error();
  }
  if (NULL_BODY.has(status) || request.method === "HEAD") {
    stream.cancel().catch(() => {});
    if (status < 200) init.status = 502; // no interim responses through a worker
    return new Response(null, init);
  }
  if (status >= 300 && status < 400 && init.headers.has("location")) {
    // Relative Locations resolve against the request, as the network would.
    init.headers.set("location", new URL(init.headers.get("location"), url).href);
  }
  let bodyStream = decode ? stream.pipeThrough(new DecompressionStream(encoding)) : stream;
  const type = (init.headers.get("content-type") || "").split(";")[0].trim().toLowerCase();
  if (type === "text/event-stream" && status === 200) {
    events.tracked = true;
    const sent = exchange.sentHeaders.find(([n]) => n === "last-event-id")?.[1];
    bodyStream = bodyStream.pipeThrough(PeerproxyEventStream.tracker(event.clientId, request.url, sent));
  } else if (eventSource) {
    PeerproxyEventStream.forget(event.clientId, request.url);
  }
  if (frame && (decode || !encoding)) {
    // The app's documents get the WebSocket shim as their first script (ws-inject.js).
    bodyStream = PeerproxyWsInject.injectShim(init.headers, bodyStream, self.location.origin);
  }
  if (cacheMode !== "bypass" && PeerproxyHttpCache.storable(status, init.headers)) {
    const [toApp, toCache] = bodyStream.tee();
    bodyStream = toApp;
    event.waitUntil(httpCache.store(request.url, status, init.headers, toCache).catch(() => {}));
  }
  return new Response(bodyStream, init);
}

/**
 * One exchange with the page: `fetchMessage` and `body` (a Blob or null) go out;
 * {head, stream, finished}: the page's "head" or "error" message, the response body as it
 * arrives (acknowledged as its reader takes it), and when the exchange is over.
 */
function send(event, manager, fetchMessage, body, events) {
  const { port1: port, port2 } = new MessageChannel();
  let settleHead;
  const head = new Promise((resolve) => {
    settleHead = resolve;
  });
  let accepted = false;
  let controller = null;
  let enqueued = 0;
  let acked = 0;
  let done;
  const finished = new Promise((resolve) => {
    done = resolve;
  });
  let credit = 0;
  let creditArrived = null;
  let bodyStopped = false;
  let ended = false; // the page said all it had to say on this port

  const report = () => {
    if (!controller) return;
    const queued = Math.max(0, RESPONSE_HIGH_WATER - (controller.desiredSize ?? 0));
    const consumed = enqueued - Math.min(queued, enqueued);
    if (consumed - acked >= ACK_BATCH) {
      port.postMessage({ type: "consumed", bytes: consumed - acked });
      acked = consumed;
    }
  };
  const stream = new ReadableStream(
    {
      start(c) {
        controller = c;
      },
      pull() {
        report();
      },
      cancel() {
        if (events.tracked) PeerproxyEventStream.forget(events.clientId, events.url);
        port.postMessage({ type: "cancel" });
        bodyStopped = true;
        done();
      },
    },
    new ByteLengthQueuingStrategy({ highWaterMark: RESPONSE_HIGH_WATER }),
  );

  port.onmessage = (e) => {
    const msg = e.data;
    switch (msg.type) {
      case "accepted":
        accepted = true;
        break;
      case "credit":
        credit += msg.bytes;
        if (creditArrived) creditArrived();
        break;
      case "body-stop":
        bodyStopped = true;
        if (creditArrived) creditArrived();
        break;
      case "head":
        settleHead(msg);
        break;
      case "data": {
        const bytes = new Uint8Array(msg.chunk, msg.offset ?? 0); // relay.js: from offset on
        if (bytes.length) {
          enqueued += bytes.length;
          try {
            controller.enqueue(bytes);
          } catch {
            // the reader went away (cancel was sent)
          }
        }
        if (msg.end) {
          ended = true;
          bodyStopped = true;
          try {
            controller.close();
          } catch {
            // already cancelled
          }
          done();
        }
        break;
      }
      case "error":
        ended = true;
        bodyStopped = true;
        if (events.tracked) PeerproxyEventStream.ended(events.clientId, events.url);
        settleHead(msg);
        try {
          // A broken event stream ends as if the server had closed it: the EventSource
          // reconnects (an errored body would close it for good; event-stream.js).
          if (events.tracked) controller.close();
          else controller.error(new TypeError(`peerproxyd: ${msg.message}`));
        } catch {
          // already closed
        }
        done();
        break;
    }
  };
  // The page went away (reload, tab closed) in the middle of the exchange (Chromium 123+
  // tells a port when its partner is gone).
  port.addEventListener("close", () => {
    if (ended) return;
    ended = true;
    bodyStopped = true;
    if (events.tracked) PeerproxyEventStream.ended(events.clientId, events.url);
    if (creditArrived) creditArrived();
    settleHead({ type: "error", status: 502, message: "the viewer page went away" });
    try {
      if (events.tracked) controller.close();
      else controller.error(new TypeError("peerproxyd: the viewer page went away"));
    } catch {
      // already closed
    }
    done();
  });
  manager.port.postMessage(fetchMessage, [port2]);

  if (body) {
    event.waitUntil(
      (async () => {
        const reader = body.stream().getReader();
        for (;;) {
          const { value, done: last } = await reader.read();
          if (last || bodyStopped) break;
          // The blob's chunks go as they are (transferred); the page splits them into
          // messages. Only a chunk that shares its buffer or is too big is copied out.
          const whole = value.byteOffset === 0 && value.byteLength === value.buffer.byteLength;
          for (let at = 0; at < value.length && !bodyStopped; at += MAX_PIECE) {
            const piece = whole && value.length <= MAX_PIECE ? value : value.slice(at, at + MAX_PIECE);
            while (credit < piece.length && !bodyStopped) {
              await new Promise((resolve) => {
                creditArrived = resolve;
              });
              creditArrived = null;
            }
            if (bodyStopped) break;
            credit -= piece.length;
            port.postMessage({ type: "body", chunk: piece.buffer }, [piece.buffer]);
          }
        }
        reader.cancel().catch(() => {});
        if (!bodyStopped) port.postMessage({ type: "body-end" });
      })(),
    );
  }

  // A manager that no longer exists never accepts: give up on it rather than hang.
  const acceptTimer = setTimeout(() => {
    if (!accepted) {
      managers.delete(manager.id);
      settleHead({ type: "error", status: 503, message: "the connection manager did not answer" });
    }
  }, ACCEPT_WAIT);
  head.then(() => clearTimeout(acceptTimer));
  return { head, stream, finished, sentHeaders: fetchMessage.headers };
}
