// webclient/event-stream.js: the last event id of streams passing the worker.
import assert from "node:assert/strict";
import { test } from "node:test";

import "../event-stream.js"; // a classic script: defines globalThis.PeerproxyEventStream

const { lastEventId, tracker, forget, ended, isEventStreamRequest } = globalThis.PeerproxyEventStream;
const URL_ = "http://pi--cam.localhost:8787/events";
const sse = (extra = {}) => new Request(URL_, { headers: { accept: "text/event-stream", ...extra } });

/** Pass `chunks` (strings) through a tracker; the bytes that came out. */
async function pass(client, chunks, { sent, cancel = false } = {}) {
  const bytes = chunks.map((c) => new TextEncoder().encode(c));
  const source = new ReadableStream({
    pull(controller) {
      if (bytes.length) controller.enqueue(bytes.shift());
      else if (!cancel) controller.close();
    },
  });
  const reader = source.pipeThrough(tracker(client, URL_, sent)).getReader();
  const out = [];
  for (let i = 0; i < chunks.length; i += 1) out.push((await reader.read()).value);
  if (cancel) await reader.cancel();
  else assert.equal((await reader.read()).done, true);
  return Buffer.concat(out).toString();
}

test("the id of the last dispatched event, for the next request of the same client and URL", async () => {
  const text = "retry: 300\n\nid: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: not dispatched\n";
  assert.equal(await pass("c1", [text.slice(0, 20), text.slice(20)]), text); // bytes unchanged
  assert.equal(lastEventId("c2", sse()), null); // another client
  assert.equal(lastEventId("c1", new Request(URL_)), null); // not an event-stream request
  assert.equal(lastEventId("c1", sse({ "last-event-id": "7" })), null); // the app's own
  assert.equal(lastEventId("c1", sse()), "2");
  assert.equal(lastEventId("c1", sse()), "2"); // again, for a retry after an outage
  forget("c1", URL_); // answered with something else than an event stream (204)
  assert.equal(lastEventId("c1", sse()), null);
  assert.equal(isEventStreamRequest(sse()), true);
  assert.equal(isEventStreamRequest(new Request(URL_, { headers: { accept: "*/*" } })), false);
});

test("line breaks (CRLF split across chunks, CR), comments, fields without value, NUL", async () => {
  await pass("c3", ["id: 5\r", "\ndata: x\r", "\n\r\n", ": comment\rid:6\r\r"]);
  assert.equal(lastEventId("c3", sse()), "6");
  await pass("c4", ["id: 8\n\nid: a\0b\n\n"]);
  assert.equal(lastEventId("c4", sse()), "8"); // an id with NUL is ignored
  await pass("c5", ["id: 8\n\nid\n\n"]);
  assert.equal(lastEventId("c5", sse()), null); // `id` alone resets it: no header
  await pass("c6", ["data: é\nid: ü\n\n"]);
  assert.equal(lastEventId("c6", sse()), "ü");
});

test("a resumed stream starts from the id the request carried", async () => {
  await pass("c7", ["data: no id here\n\n"], { sent: "41" });
  assert.equal(lastEventId("c7", sse()), "41");
});

test("a stream the reader cancelled is forgotten; an upstream error still resumes", async () => {
  await pass("c8", ["id: 1\n\n"], { cancel: true });
  forget("c8", URL_); // what sw.js does in its stream's cancel()
  assert.equal(lastEventId("c8", sse()), null);
  // Still open (no flush): not ended, so not given out...
  const reader = new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode("id: 4\n\n")); } })
    .pipeThrough(tracker("c9", URL_)).getReader();
  await reader.read();
  ended("c9", URL_); // ...until the worker says it broke
  assert.equal(lastEventId("c9", sse()), "4");
});
