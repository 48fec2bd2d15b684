// Putting the app shim (app-shim.js: WebSocket, downloads, no service worker) into the
// proxied app's HTML documents.
//
// A service worker never sees `new WebSocket()`, so the app's own `WebSocket` must be replaced
// before the app's scripts run: the worker inserts one classic, blocking
// `<script src="/__peerproxy/app-shim.js">` at the start of every HTML document it serves to
// the frame, and lets it through the document's Content-Security-Policy.
//
// Where (`injectionPoint`): right after `<head …>`, or, when the head is implied, right before
// the first thing that implies it (another tag, text) — never before the doctype (a script
// there switches the page to quirks mode) and never inside a comment. Only the first 64 KiB are
// scanned; a document that has not decided by then passes unchanged.
//
// CSP (`allowShim`): a policy whose script-src (or default-src) would block the script gets the
// script's exact URL as an extra source, or, under 'strict-dynamic' (which ignores URLs), a
// fresh nonce. Nothing else is widened, and 'unsafe-inline' keeps working (no nonce is added
// where the policy had none). `<meta http-equiv>` policies need nothing: the script comes
// before them.
//
// Classic script: the worker loads it with importScripts(); the node tests import it.
(function (root) {
  "use strict";

  const SHIM_PATH = "/__peerproxy/app-shim.js";
  const SCAN_LIMIT = 64 * 1024;
  const latin1 = new TextDecoder("latin1"); // byte-for-char: indexes stay byte offsets

  /**
   * Where to insert in the document's first bytes: a byte offset, `null` to give up (no place
   * within SCAN_LIMIT), or -1 when more bytes are needed (`final`: there are no more).
   */
  function injectionPoint(bytes, final = false) {
    const text = latin1.decode(bytes.subarray(0, SCAN_LIMIT));
    const more = () => (final ? text.length : bytes.length >= SCAN_LIMIT ? null : -1);
    let at = text.charCodeAt(0) === 0xef && text.startsWith("\xef\xbb\xbf") ? 3 : 0; // BOM
    for (;;) {
      while (at < text.length && /[\t\n\f\r ]/.test(text[at])) at += 1;
      if (at >= text.length) return more();
      if (text[at] !== "<") return at; // text: implies <head> (and <body>)
      const rest = text.slice(at, at + 10).toLowerCase();
      if (rest.startsWith("<!--")) {
        const end = text.indexOf("-->", at + 4);
        if (end < 0) return more();
        at = end + 3;
        continue;
      }
      if (rest.length < 6 && !final) return more(); // "<head" vs "<header" needs 6 chars
      const name = /^<([a-z][a-z0-9-]*)?/.exec(rest)?.[1] ?? "";
      if (rest.startsWith("<!") || rest.startsWith("<?") || name === "html" || name === "head") {
        const end = tagEnd(text, at);
        if (end < 0) return more();
        if (name === "head") return end;
        at = end; // doctype, <html …>, a processing instruction: keep looking
        continue;
      }
      return at; // any other tag (or "</", "<" + junk): the head is implied here
    }
  }

  /** The offset after the `>` closing the tag at `at` (quotes respected), or -1. */
  function tagEnd(text, at) {
    let quote = null;
    for (let i = at + 1; i < text.length; i++) {
      const c = text[i];
      if (quote) {
        if (c === quote) quote = null;
      } else if (c === '"' || c === "'") {
        quote = c;
      } else if (c === ">") {
        return i + 1;
      }
    }
    return -1;
  }

  /** The `<script>` tag to insert. */
  function shimTag(nonce = "") {
    return `<script src="${SHIM_PATH}"${nonce ? ` nonce="${nonce}"` : ""}></script>`;
  }

  /** A TransformStream that inserts `tag` at the injection point of an HTML byte stream. */
  function injector(tag) {
    const insert = new TextEncoder().encode(tag);
    let held = new Uint8Array(0);
    let done = false;
    const emit = (controller, bytes, final) => {
      const point = injectionPoint(bytes, final);
      if (point === -1) return false;
      done = true;
      if (point === null) {
        controller.enqueue(bytes);
        return true;
      }
      controller.enqueue(bytes.subarray(0, point));
      controller.enqueue(insert);
      if (point < bytes.length) controller.enqueue(bytes.subarray(point));
      return true;
    };
    return new TransformStream({
      transform(chunk, controller) {
        if (done) {
          controller.enqueue(chunk);
          return;
        }
        const joined = new Uint8Array(held.length + chunk.length);
        joined.set(held);
        joined.set(chunk, held.length);
        held = emit(controller, joined, false) ? new Uint8Array(0) : joined;
      },
      flush(controller) {
        if (!done) emit(controller, held, true);
      },
    });
  }

  const SCRIPT_DIRECTIVES = ["script-src-elem", "script-src", "default-src"];

  /**
   * One CSP header value (policies separated by ","), changed so that the shim at `shimUrl`
   * may run; `nonce` is used only under 'strict-dynamic'. Returns {value, nonceUsed}.
   */
  function allowShim(value, shimUrl, nonce) {
    let nonceUsed = false;
    const policies = value.split(",").map((policy) => {
      const directives = policy.split(";");
      const parsed = directives.map((d) => d.trim().split(/[\t\n\f\r ]+/).filter(Boolean));
      const index = SCRIPT_DIRECTIVES.map((name) =>
        parsed.findIndex((tokens) => tokens[0]?.toLowerCase() === name),
      ).find((i) => i >= 0);
      if (index === undefined) return policy; // nothing restricts scripts
      const sources = parsed[index].slice(1).map((s) => s.toLowerCase());
      if (sources.includes("'none'") && sources.length === 1) return policy; // no script runs at all
      if (sources.includes("'strict-dynamic'")) {
        nonceUsed = true;
        directives[index] = ` ${parsed[index].join(" ")} 'nonce-${nonce}'`;
      } else {
        directives[index] = ` ${parsed[index].join(" ")} ${shimUrl}`;
      }
      return directives.join(";");
    });
    return { value: policies.join(","), nonceUsed };
  }

  /** A fresh nonce (base64 of 16 random bytes). */
  function newNonce() {
    const bytes = new Uint8Array(16);
    root.crypto.getRandomValues(bytes);
    return btoa(String.fromCharCode(...bytes));
  }

  /**
   * For a frame document's response: `headers` (a Headers, changed in place) and its body stream
   * → the body to serve, with the shim inserted. Non-HTML bodies are returned unchanged.
   */
  function injectShim(headers, body, origin) {
    const type = (headers.get("content-type") || "").split(";")[0].trim().toLowerCase();
    if (type !== "text/html" || !body) return body;
    const csp = headers.get("content-security-policy");
    let nonce = "";
    if (csp) {
      const candidate = newNonce();
      const changed = allowShim(csp, origin + SHIM_PATH, candidate);
      headers.set("content-security-policy", changed.value);
      if (changed.nonceUsed) nonce = candidate;
    }
    headers.delete("content-length");
    return body.pipeThrough(injector(shimTag(nonce)));
  }

  root.PeerproxyWsInject = { SHIM_PATH, injectionPoint, injector, allowShim, shimTag, injectShim };
})(typeof self !== "undefined" ? self : globalThis);
