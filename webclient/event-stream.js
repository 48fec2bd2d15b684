// Server-Sent Events through the worker: `Last-Event-ID` on an EventSource's reconnections.
//
// When an event stream ends (the server closed it, or it broke), the browser's EventSource
// reconnects and should send `Last-Event-ID: <the last id it saw>`, so the server resumes
// after it. Chromium (156) does send it over the network, but the request a service worker
// gets for that reconnection does not carry it (measured: tests/apps/test_streams.py), so
// through the worker the server would start over and the app would get events twice.
//
// So the worker keeps the last event id itself: it reads the ids of each text/event-stream
// response as it passes (`tracker`, the parsing rules of the HTML standard: an `id` field
// without NUL sets the id buffer, a blank line dispatches and makes it the last event id) and,
// on a request of the same client for the same URL that asks for text/event-stream without a
// Last-Event-ID (`lastEventId`), adds the one of the previous stream. Only when that stream
// ended by itself: a stream the reader cancelled (`es.close()`, the frame went away) is
// forgotten, so a new EventSource starts from the beginning as it would without the worker;
// so is one answered with anything but an event stream (204: the EventSource stops) other
// than an outage (the EventSource retries: the id is for that retry).
//
// Outages: without the worker, an EventSource whose connection breaks or cannot be made (the
// server is down) retries until it is back; it gives up for good only on an HTTP error
// status. Through the worker a body that errors, or the 502/503 of an outage (the link to the
// device, the device's to the app), would close it for good. So for event-stream requests
// (`isEventStreamRequest`) sw.js ends a broken stream normally and answers an outage with a
// network error (Response.error()): the EventSource retries, as it would without the worker.
//
// Classic script: the worker loads it with importScripts(); the node tests import it.
"use strict";

((root) => {
  const MAX_STREAMS = 64; // ids kept (oldest dropped): one per live EventSource is plenty
  const streams = new Map(); // `${clientId} ${url}` -> {id, ended}

  const key = (clientId, url) => `${clientId || ""} ${url}`;

  /** Whether `request` is an EventSource's (or asks for an event stream as one does). */
  function isEventStreamRequest(request) {
    return (request.headers.get("accept") || "").includes("text/event-stream");
  }

  /** The Last-Event-ID to add to `request` (a Request) of `clientId`, or null. */
  function lastEventId(clientId, request) {
    if (!isEventStreamRequest(request) || request.headers.has("last-event-id")) return null;
    const entry = streams.get(key(clientId, request.url));
    return entry && entry.ended && entry.id ? entry.id : null;
  }

  /**
   * A TransformStream (bytes in, same bytes out) that records the stream's last event id for
   * `clientId` + `url`, starting from `sent` (the Last-Event-ID the request carried).
   */
  function tracker(clientId, url, sent) {
    const k = key(clientId, url);
    streams.delete(k);
    while (streams.size >= MAX_STREAMS) streams.delete(streams.keys().next().value);
    const entry = { id: sent || "", ended: false };
    streams.set(k, entry);
    const decoder = new TextDecoder();
    let buffer = sent || ""; // the id buffer: becomes the last event id at each dispatch
    let partial = ""; // text after the last line break
    let lastWasCR = false;
    const lines = (text, final) => {
      let at = 0;
      if (lastWasCR && text.startsWith("\n")) at = 1; // the LF of a CRLF split across chunks
      lastWasCR = false;
      const out = [];
      const pattern = /\r\n|\r|\n/g;
      pattern.lastIndex = at;
      let start = at;
      let match;
      while ((match = pattern.exec(text))) {
        if (match[0] === "\r" && match.index === text.length - 1 && !final) lastWasCR = true;
        out.push(partial + text.slice(start, match.index));
        partial = "";
        start = match.index + match[0].length;
      }
      partial += text.slice(start);
      return out;
    };
    const field = (line) => {
      if (line === "") {
        entry.id = buffer; // dispatch
        return;
      }
      if (line.startsWith(":")) return; // a comment
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      if (name !== "id") return;
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (!value.includes("\0")) buffer = value;
    };
    return new TransformStream({
      transform(chunk, controller) {
        controller.enqueue(chunk);
        for (const line of lines(decoder.decode(chunk, { stream: true }), false)) field(line);
      },
      flush() {
        for (const line of lines(decoder.decode(), true)) field(line);
        entry.ended = true; // the browser will reconnect: it gets the id
      },
    });
  }

  /** The stream of `clientId` + `url` is over for good (cancelled by its reader, answered
   *  without an event stream): its id is not for a new one. */
  function forget(clientId, url) {
    streams.delete(key(clientId, url));
  }

  /** An upstream error ended the stream: the browser reconnects, as after a normal end. */
  function ended(clientId, url) {
    const entry = streams.get(key(clientId, url));
    if (entry) entry.ended = true;
  }

  root.PeerproxyEventStream = { isEventStreamRequest, lastEventId, tracker, forget, ended, streams };
})(typeof self !== "undefined" ? self : globalThis);
