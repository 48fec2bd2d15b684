// The app shim: the first script of every HTML document of the proxied app (the service worker
// inserts it, ws-inject.js). It makes the document's browser APIs that a service worker cannot
// see travel through the data channel as well:
//
// - WebSocket: `window.WebSocket` becomes a class of the same API whose connections to the
//   app's own origin travel over the data channel: each one hands a MessagePort to the
//   connection manager (the top page, wsbridge.js), which carries it as a WebSocket stream
//   (docs/protocol.md §12). WebSockets to other origins are the browser's own.
// - Downloads: Chromium fetches an `<a download>` link past the service worker, from the
//   network, where the signaling server would answer with the manager page. Such a click is
//   taken over: the file is fetched through the worker and saved from a blob: URL; the
//   manager's bar shows progress and failures (`peerproxy-download` messages).
// - Service workers: the origin's worker is the client's (sw.js). An app's own registration
//   would replace it (same scope) or fail on a script the network answers with the manager
//   page, and an app that unregisters its workers would cut itself off. So the app sees a
//   browser without service workers (`"serviceWorker" in navigator` is false), which every
//   app must handle (private windows of Firefox have none).
//
// WebSocket messages, per socket, over its port:
//   shim -> manager  {type:"open", url, target, protocols}  {type:"send", data, size}
//                    {type:"close", code, reason}  {type:"cancel"}
//   manager -> shim  {type:"open", protocol}  {type:"message", data}  {type:"sent", bytes}
//                    {type:"close", code, reason, wasClean, error}
// Not covered: WebSockets, downloads and service workers of the app's own workers, and of
// about:blank/srcdoc frames.
(function () {
  "use strict";

  const Real = window.WebSocket;
  if (!Real || window.top === window || Real.__peerproxy) return; // no manager above us
  let manager;
  try {
    if (window.top.location.origin !== location.origin) return;
    manager = window.top;
  } catch {
    return; // a cross-origin top: not our manager page
  }

  const CONNECTING = 0;
  const OPEN = 1;
  const CLOSING = 2;
  const CLOSED = 3;
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const utf8 = new TextEncoder();
  const live = new Set();

  const syntaxError = (message) => new DOMException(message, "SyntaxError");

  /** The ws:/wss: URL, and whether it is this document's own origin. */
  function resolve(url) {
    let parsed;
    try {
      parsed = new URL(String(url), document.baseURI);
    } catch {
      throw syntaxError(`Failed to construct 'WebSocket': The URL '${url}' is invalid.`);
    }
    if (parsed.protocol === "http:") parsed.protocol = "ws:";
    else if (parsed.protocol === "https:") parsed.protocol = "wss:";
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
      throw syntaxError(`Failed to construct 'WebSocket': The URL's scheme must be either 'http', 'https', 'ws', or 'wss'. '${parsed.protocol.slice(0, -1)}' is not allowed.`);
    }
    parsed.hash = "";
    const asHttp = new URL(parsed.href);
    asHttp.protocol = parsed.protocol === "wss:" ? "https:" : "http:";
    return { url: parsed.href, own: asHttp.origin === location.origin, target: parsed.pathname + parsed.search };
  }

  function checkProtocols(protocols) {
    const list = protocols === undefined ? [] : typeof protocols === "string" ? [protocols] : [...protocols].map(String);
    const seen = new Set();
    for (const p of list) {
      if (!TOKEN.test(p) || seen.has(p)) {
        throw syntaxError(`Failed to construct 'WebSocket': The subprotocol '${p}' is invalid.`);
      }
      seen.add(p);
    }
    return list;
  }

  const handlers = new WeakMap();

  class WebSocket extends EventTarget {
    constructor(url, protocols = undefined) {
      if (!new.target) throw new TypeError("Failed to construct 'WebSocket': Please use the 'new' operator.");
      const where = resolve(url);
      if (!where.own) return new Real(url, protocols);
      const list = checkProtocols(protocols);
      super();
      this._url = where.url;
      this._state = CONNECTING;
      this._protocol = "";
      this._buffered = 0;
      this._binaryType = "blob";
      this._origin = new URL(where.url).origin;
      handlers.set(this, {});
      const { port1, port2 } = new MessageChannel();
      this._port = port1;
      port1.onmessage = (e) => this._fromManager(e.data);
      manager.postMessage({ type: "peerproxy-websocket" }, location.origin, [port2]);
      port1.postMessage({ type: "open", url: where.url, target: where.target, protocols: list });
      live.add(this);
    }

    get url() { return this._url; }
    get readyState() { return this._state; }
    get bufferedAmount() { return this._buffered; }
    get protocol() { return this._protocol; }
    get extensions() { return ""; }
    get binaryType() { return this._binaryType; }
    set binaryType(value) {
      if (value === "blob" || value === "arraybuffer") this._binaryType = value;
    }

    send(data) {
      if (this._state === CONNECTING) {
        throw new DOMException("Failed to execute 'send' on 'WebSocket': Still in CONNECTING state.", "InvalidStateError");
      }
      let message;
      let size;
      let transfer = [];
      if (typeof data === "string" || !(data instanceof Blob || data instanceof ArrayBuffer || ArrayBuffer.isView(data))) {
        message = String(data);
        size = utf8.encode(message).length;
      } else if (data instanceof Blob) {
        message = data;
        size = data.size;
      } else {
        const view = ArrayBuffer.isView(data)
          ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
          : new Uint8Array(data);
        message = view.slice().buffer; // the app may reuse its buffer
        size = message.byteLength;
        transfer = [message];
      }
      this._buffered += size;
      if (this._state !== OPEN) return; // after close(): counted, never sent (as browsers do)
      this._port.postMessage({ type: "send", data: message, size }, transfer);
    }

    close(code = undefined, reason = undefined) {
      if (code !== undefined && !(code === 1000 || (code >= 3000 && code <= 4999))) {
        throw new DOMException(`Failed to execute 'close' on 'WebSocket': The close code must be either 1000, or between 3000 and 4999. ${code} is neither.`, "InvalidAccessError");
      }
      const text = reason === undefined ? "" : String(reason);
      if (utf8.encode(text).length > 123) {
        throw syntaxError("Failed to execute 'close' on 'WebSocket': The close reason must not be greater than 123 UTF-8 bytes.");
      }
      if (this._state === CLOSING || this._state === CLOSED) return;
      this._state = CLOSING;
      this._port.postMessage({ type: "close", code: code ?? null, reason: text });
    }

    _fromManager(msg) {
      switch (msg.type) {
        case "open":
          if (this._state !== CONNECTING) return;
          this._state = OPEN;
          this._protocol = msg.protocol || "";
          this.dispatchEvent(new Event("open"));
          break;
        case "message": {
          if (this._state !== OPEN) return; // a message after close() is dropped, as browsers do
          let data = msg.data;
          if (typeof data !== "string" && this._binaryType === "blob") data = new Blob([data]);
          this.dispatchEvent(new MessageEvent("message", { data, origin: this._origin }));
          break;
        }
        case "sent":
          this._buffered = Math.max(0, this._buffered - msg.bytes);
          break;
        case "close":
          if (this._state === CLOSED) return;
          this._state = CLOSED;
          live.delete(this);
          this._port.close();
          if (msg.error) this.dispatchEvent(new Event("error"));
          this.dispatchEvent(new CloseEvent("close", { code: msg.code, reason: msg.reason || "", wasClean: !!msg.wasClean }));
          break;
      }
    }

    static [Symbol.hasInstance](value) {
      return Function.prototype[Symbol.hasInstance].call(WebSocket, value) || value instanceof Real;
    }
  }

  for (const [name, value] of Object.entries({ CONNECTING, OPEN, CLOSING, CLOSED })) {
    Object.defineProperty(WebSocket, name, { value, enumerable: true });
    Object.defineProperty(WebSocket.prototype, name, { value, enumerable: true });
  }
  // onopen, onmessage, onerror, onclose: one listener each, calling whatever is set now.
  for (const type of ["open", "message", "error", "close"]) {
    Object.defineProperty(WebSocket.prototype, "on" + type, {
      configurable: true,
      enumerable: true,
      get() {
        return handlers.get(this)?.[type] ?? null;
      },
      set(fn) {
        const own = handlers.get(this);
        if (!own) return;
        if (!(type in own)) {
          this.addEventListener(type, (event) => {
            const current = own[type];
            if (typeof current === "function") current.call(this, event);
          });
        }
        own[type] = typeof fn === "function" ? fn : null;
      },
    });
  }
  Object.defineProperty(WebSocket.prototype, Symbol.toStringTag, { value: "WebSocket" });
  Object.defineProperty(WebSocket, "__peerproxy", { value: true });

  // The document is going away (navigation in the frame): its sockets go with it.
  window.addEventListener("pagehide", () => {
    for (const ws of live) ws._port.postMessage({ type: "cancel" });
  });

  Object.defineProperty(window, "WebSocket", { value: WebSocket, writable: true, configurable: true });

  // ----- service workers: none for the app (see the top of this file)
  try {
    delete Navigator.prototype.serviceWorker;
  } catch {
    // not configurable here: leave it
  }

  // ----- downloads
  const realClick = HTMLAnchorElement.prototype.click;
  const say = (msg) => manager.postMessage({ type: "peerproxy-download", ...msg }, location.origin);

  /** The URL of an `<a download>` that Chromium would fetch past the worker, or null. */
  function ownDownload(a) {
    if (!(a instanceof HTMLAnchorElement) || !a.hasAttribute("download") || !a.href) return null;
    const url = new URL(a.href, document.baseURI);
    return url.origin === location.origin && url.protocol === location.protocol ? url : null;
  }

  /** The file name of a response: Content-Disposition's, else the URL's last segment. */
  function fileName(response, url) {
    const disposition = response.headers.get("content-disposition") || "";
    const star = /filename\*\s*=\s*(?:UTF-8|utf-8)''([^;]+)/.exec(disposition);
    const plain = /filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))/.exec(disposition);
    try {
      if (star) return decodeURIComponent(star[1].trim());
    } catch {
      // a malformed escape: try the plain name
    }
    if (plain) return (plain[1] ?? plain[2]).replace(/\\(.)/g, "$1");
    return decodeURIComponent(url.pathname.split("/").pop() || "") || "download";
  }

  async function download(url, name) {
    const shown = name || url.pathname.split("/").pop() || url.pathname;
    say({ state: "started", name: shown, url: url.href });
    try {
      const response = await fetch(url, { credentials: "include" });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`.trim());
      const blob = await response.blob();
      const href = URL.createObjectURL(blob);
      const a = document.createElement("a");
      a.href = href;
      a.download = name || fileName(response, url);
      realClick.call(a);
      setTimeout(() => URL.revokeObjectURL(href), 60_000);
      say({ state: "done", name: a.download, url: url.href, bytes: blob.size });
    } catch (exc) {
      say({ state: "failed", name: shown, url: url.href, message: String(exc.message || exc) });
    }
  }

  // Capture phase on the window: also sees clicks dispatched without bubbling (Home
  // Assistant's fileDownload) and clicks inside open shadow roots.
  window.addEventListener("click", (event) => {
    if (event.defaultPrevented) return;
    const a = event.composedPath().find((node) => node instanceof HTMLAnchorElement);
    const url = a && ownDownload(a);
    if (!url) return;
    event.preventDefault();
    if (!event.cancelable) {
      // A synthetic `new MouseEvent("click")` cannot be cancelled: take the anchor's href
      // away until its activation (which runs inside this dispatch) has passed.
      const href = a.getAttribute("href");
      a.removeAttribute("href");
      queueMicrotask(() => a.setAttribute("href", href));
    }
    download(url, a.getAttribute("download"));
  }, true);
  // An anchor never added to the document gets no event on the window: take its click() too.
  HTMLAnchorElement.prototype.click = function click() {
    const url = !this.isConnected && ownDownload(this);
    if (!url) return realClick.call(this);
    download(url, this.getAttribute("download"));
  };
})();
