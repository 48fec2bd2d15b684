// The manager's half of the app's WebSockets: each socket the shim (app-shim.js) opens in the
// app's frame arrives here as a MessagePort and becomes one WebSocket stream on the data
// channel (docs/protocol.md §12): a request head with `websocket: true`, a 101, then records
// both ways (wsrecords.js). The port protocol is described in app-shim.js.
//
// Backpressure: app -> device, records are written one at a time as the stream's window and the
// channel allow, and each one's size goes back to the shim ("sent") for bufferedAmount;
// device -> app, records are handed to the app as they complete and consumed at once (the
// WebSocket API has no receive backpressure), so at most one window plus one record is held.

import { ErrorCode } from "./protocol.js";
import { ABNORMAL, MAX_MESSAGE, NO_STATUS, RecordDecoder, RecordError, encodeRecord } from "./wsrecords.js";

/** Accept the shims' ports from same-origin frames; `relay` gives the link and the service. */
export function startWebSocketBridge(relay, { maxMessage = MAX_MESSAGE } = {}) {
  const sockets = new Set();
  addEventListener("message", (event) => {
    if (event.origin !== location.origin || event.data?.type !== "peerproxy-websocket") return;
    const port = event.ports[0];
    if (!port) return;
    const socket = new BridgedSocket(relay, port, maxMessage, () => sockets.delete(socket));
    sockets.add(socket);
  });
  return sockets;
}

/** The service worker's cookie jar, for the upgrade request (the worker owns the jar). */
async function askWorker(message) {
  try {
    const registration = await navigator.serviceWorker.ready;
    const { port1, port2 } = new MessageChannel();
    const answer = new Promise((resolve) => {
      port1.onmessage = (e) => resolve(e.data);
      setTimeout(() => resolve({}), 2000);
    });
    registration.active.postMessage(message, [port2]);
    return await answer;
  } catch {
    return {};
  }
}

class BridgedSocket {
  constructor(relay, port, maxMessage, onDone) {
    this.relay = relay;
    this.port = port;
    this.onDone = onDone;
    this.stream = null;
    this.opened = false; // the device answered 101
    this.closeSent = false; // our CLOSE (and FINAL) went out
    this.closeReceived = false; // the device's CLOSE arrived
    this.reported = false; // the shim got its "close"
    this.finished = false; // nothing more to do with the stream
    this.queue = []; // {data, size} | {close}
    this.writing = false;
    this.decoder = new RecordDecoder(maxMessage);
    this.protocols = [];
    port.onmessage = (e) => this._fromShim(e.data);
    // The frame's document is gone (Chromium tells a port when its partner is).
    port.addEventListener("close", () => this._cancel("the page went away"));
  }

  _fromShim(msg) {
    switch (msg.type) {
      case "open":
        this._open(msg).catch((exc) => this._fail(`websocket failed: ${exc.message}`));
        break;
      case "send":
        this.queue.push({ data: msg.data, size: msg.size });
        this._pump();
        break;
      case "close":
        if (!this.opened) {
          this._report({ code: ABNORMAL, reason: "", wasClean: false, error: true });
          this._cancel("closed before it opened");
        } else {
          this.queue.push({ close: msg.code == null ? { type: "close" } : { type: "close", code: msg.code, reason: msg.reason } });
          this._pump();
        }
        break;
      case "cancel":
        this._cancel("the page went away");
        break;
    }
  }

  async _open(msg) {
    const link = await this.relay.waitLink();
    if (this.finished) return;
    const url = new URL(msg.url);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    this.protocols = msg.protocols;
    const headers = [
      ["host", location.host],
      ["origin", location.origin],
      ["x-forwarded-proto", location.protocol === "https:" ? "https" : "http"],
      ["user-agent", navigator.userAgent],
      ["cache-control", "no-cache"],
      ["pragma", "no-cache"],
    ];
    if (navigator.languages?.length) headers.push(["accept-language", navigator.languages.join(",")]);
    if (msg.protocols.length) headers.push(["sec-websocket-protocol", msg.protocols.join(", ")]);
    // Basic credentials of this tab for the path, as browsers send them on the upgrade.
    const authorization = this.relay.credentials.forPath(msg.target);
    if (authorization) headers.push(["authorization", authorization]);
    const { cookie } = await askWorker({ type: "cookie-header", url: url.href });
    if (cookie) headers.push(["cookie", cookie]);
    if (this.finished) return;
    const head = { method: "GET", target: msg.target, headers, service: this.relay.service, websocket: true };
    const stream = link.request(head, { endStream: false });
    this.stream = stream;
    stream.onHead = (response, end) => this._onHead(response, end, url);
    stream.onData = (data, end) => this._onData(data, end);
    stream.onError = (error) => this._fail(error.message);
  }

  _onHead(response, end, url) {
    const cookies = response.headers.filter(([n]) => n.toLowerCase() === "set-cookie").map(([, v]) => v);
    if (cookies.length) askWorker({ type: "set-cookies", url: url.href, headers: cookies });
    const chosen = response.headers.find(([n]) => n.toLowerCase() === "sec-websocket-protocol")?.[1] ?? "";
    if (response.status !== 101 || end || (chosen && !this.protocols.includes(chosen))) {
      const why = response.status === 101 ? "an invalid upgrade" : `status ${response.status}`;
      this._report({ code: ABNORMAL, reason: "", wasClean: false, error: true });
      this._cancel(`refused: ${why}`);
      return;
    }
    this.opened = true;
    this.port.postMessage({ type: "open", protocol: chosen });
    this._pump(); // sends that raced the 101 (none: the shim sends only once open)
  }

  _onData(data, end) {
    if (this.finished) return;
    let records;
    try {
      records = this.decoder.feed(data);
      if (end) this.decoder.end();
    } catch (exc) {
      if (!(exc instanceof RecordError)) throw exc;
      this.stream.reset(ErrorCode.PROTOCOL_ERROR, exc.message);
      return; // the reset's onError reports it
    }
    this.stream.consumed(data.length);
    for (const record of records) {
      if (record.type === "text") {
        if (!this.reported) this.port.postMessage({ type: "message", data: record.text });
      } else if (record.type === "binary") {
        if (this.reported) continue;
        const copy = record.data.slice().buffer;
        this.port.postMessage({ type: "message", data: copy }, [copy]);
      } else {
        this._closedByDevice(record);
      }
    }
  }

  /** The device's CLOSE: either the answer to ours, or its own close, which we answer. */
  _closedByDevice(record) {
    this.closeReceived = true;
    this._report({ code: record.code ?? NO_STATUS, reason: record.reason ?? "", wasClean: true });
    if (this.closeSent) {
      this._finish();
      return;
    }
    // What the app still had queued is never sent; the answer carries the device's code.
    this.queue = [{ close: record.code === undefined ? { type: "close" } : { type: "close", code: record.code } }];
    this._pump();
  }

  /** Write queued messages in order, one at a time. */
  async _pump() {
    if (this.writing || !this.opened) return;
    this.writing = true;
    try {
      while (this.queue.length && !this.finished) {
        const item = this.queue.shift();
        if (item.close) {
          if (this.closeSent) continue;
          this.closeSent = true;
          await this.stream.write(encodeRecord(item.close), { end: true });
          if (this.closeReceived) this._finish();
          continue;
        }
        if (this.closeSent || this.closeReceived) continue;
        const data = item.data instanceof Blob ? new Uint8Array(await item.data.arrayBuffer()) : item.data;
        const record = typeof data === "string" ? { type: "text", text: data } : { type: "binary", data };
        await this.stream.write(encodeRecord(record));
        if (!this.reported) this.port.postMessage({ type: "sent", bytes: item.size });
      }
    } catch {
      // the stream failed: its onError reports it
    } finally {
      this.writing = false;
    }
  }

  _cancel(why) {
    if (this.finished) return;
    if (this.stream && !this.stream.error) this.stream.reset(ErrorCode.CANCEL, why);
    this._finish();
  }

  _fail(message) {
    if (this.finished) return;
    console.warn("peerproxy: websocket:", message);
    this._report({ code: ABNORMAL, reason: "", wasClean: false, error: true });
    this._finish();
  }

  _report(close) {
    if (this.reported) return;
    this.reported = true;
    this.port.postMessage({ type: "close", ...close });
  }

  _finish() {
    if (this.finished) return;
    this.finished = true;
    this.queue = [];
    this.port.close();
    this.onDone();
  }
}
