// webclient/ws-inject.js: where the WebSocket shim goes into a document, and CSP.
import assert from "node:assert/strict";
import { test } from "node:test";

import "../ws-inject.js"; // a classic script: defines globalThis.PeerproxyWsInject

const { injectionPoint, injector, allowShim, injectShim, shimTag } = globalThis.PeerproxyWsInject;
const bytes = (s) => new TextEncoder().encode(s);
const TAG = shimTag();
const SHIM = "http://pi--ha.localhost:8787/__peerproxy/app-shim.js";

function inject(html, final = true) {
  const b = Buffer.from(html);
  const point = injectionPoint(new Uint8Array(b), final);
  if (point === null || point < 0) return point;
  return Buffer.concat([b.subarray(0, point), Buffer.from(TAG), b.subarray(point)]).toString();
}

test("after <head>, whatever comes before it", () => {
  assert.equal(inject('<!doctype html><html lang="en"><head><meta charset="utf-8">'),
    `<!doctype html><html lang="en"><head>${TAG}<meta charset="utf-8">`);
  assert.equal(inject('\ufeff<!DOCTYPE html>\n<!-- <head> in a comment -->\n<HTML>\n<HEAD data-x="a>b">x'),
    `\ufeff<!DOCTYPE html>\n<!-- <head> in a comment -->\n<HTML>\n<HEAD data-x="a>b">${TAG}x`);
  assert.equal(inject("<?xml version='1.0'?><html><head>"), `<?xml version='1.0'?><html><head>${TAG}`);
});

test("before whatever implies the head, never before the doctype", () => {
  assert.equal(inject("<!doctype html><meta charset=utf-8><title>t</title>"),
    `<!doctype html>${TAG}<meta charset=utf-8><title>t</title>`);
  assert.equal(inject("<!doctype html><html><header>h</header>"), `<!doctype html><html>${TAG}<header>h</header>`);
  assert.equal(inject("<html><body>b"), `<html>${TAG}<body>b`);
  assert.equal(inject("  plain text"), `  ${TAG}plain text`);
  assert.equal(inject("<!doctype html>\n<script>app()</script>"), `<!doctype html>\n${TAG}<script>app()</script>`);
  assert.equal(inject(""), TAG);
});

test("waits for more bytes while undecided, gives up after 64 KiB", () => {
  assert.equal(injectionPoint(bytes("<!doctype html><hea"), false), -1);
  assert.equal(injectionPoint(bytes("<!-- long comment"), false), -1);
  assert.equal(injectionPoint(bytes('<html lang="e'), false), -1);
  assert.equal(injectionPoint(bytes("<!--" + "x".repeat(70 * 1024)), false), null);
});

async function run(chunks) {
  const stream = new ReadableStream({
    start(c) {
      for (const chunk of chunks) c.enqueue(bytes(chunk));
      c.close();
    },
  }).pipeThrough(injector(TAG));
  return new Response(stream).text();
}

test("the stream injector: split tags, one-byte chunks, unchanged rest", async () => {
  const html = "<!doctype html><html><head><title>x</title></head><body>" + "é".repeat(5000) + "</body>";
  const expected = html.replace("<head>", "<head>" + TAG);
  assert.equal(await run([html]), expected);
  assert.equal(await run([...html.slice(0, 200)].concat([html.slice(200)])), expected);
  assert.equal(await run(["<!doctype html><he", "ad>rest"]), `<!doctype html><head>${TAG}rest`);
  assert.equal(await run(["<!-- never closed"]), `<!-- never closed${TAG}`);
});

test("CSP: the shim's URL where URLs count, a nonce only under 'strict-dynamic'", () => {
  assert.deepEqual(allowShim("default-src 'self'", SHIM, "N"),
    { value: ` default-src 'self' ${SHIM}`, nonceUsed: false });
  assert.deepEqual(allowShim("img-src *; script-src 'unsafe-inline' https://cdn.example", SHIM, "N"),
    { value: `img-src *; script-src 'unsafe-inline' https://cdn.example ${SHIM}`, nonceUsed: false });
  assert.deepEqual(allowShim("script-src 'nonce-abc' 'strict-dynamic'; object-src 'none'", SHIM, "N"),
    { value: ` script-src 'nonce-abc' 'strict-dynamic' 'nonce-N'; object-src 'none'`, nonceUsed: true });
  // script-src-elem wins over script-src; no script directive: untouched; 'none': no scripts.
  assert.equal(allowShim("script-src 'self'; script-src-elem https://x", SHIM, "N").value,
    `script-src 'self'; script-src-elem https://x ${SHIM}`);
  assert.equal(allowShim("img-src 'self'", SHIM, "N").value, "img-src 'self'");
  assert.equal(allowShim("script-src 'none'", SHIM, "N").value, "script-src 'none'");
  // Two policies in one value: each gets what it needs.
  assert.equal(allowShim("script-src 'self', default-src https://a", SHIM, "N").value,
    ` script-src 'self' ${SHIM}, default-src https://a ${SHIM}`);
});

test("injectShim: HTML only; drops Content-Length; the nonce lands in the tag", async () => {
  const body = () => new Response("<html><head></head>").body;
  const json = new Headers({ "content-type": "application/json", "content-length": "19" });
  const same = body();
  assert.equal(injectShim(json, same, "http://o"), same);
  const html = new Headers({
    "content-type": "text/html; charset=utf-8",
    "content-length": "19",
    "content-security-policy": "script-src 'strict-dynamic' 'nonce-a'",
  });
  const out = await new Response(injectShim(html, body(), "http://o")).text();
  assert.equal(html.get("content-length"), null);
  const nonce = /'nonce-([^']+)'$/.exec(html.get("content-security-policy"))[1];
  assert.equal(out, `<html><head>${shimTag(nonce)}</head>`);
});
