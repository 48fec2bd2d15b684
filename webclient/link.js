// PeerLink: the thin IO shell between one RTCDataChannel and one ProxyConnection (the browser's
// peerproxyd/tunnel/channel.py). Messages from the channel go to the protocol; its events go to the
// streams; whatever it wants to send goes out on the channel.
//
// Backpressure has two levels, as in the daemon: per stream the device's WINDOW credit, per
// channel the data channel's bufferedAmount (writers wait for "bufferedamountlow").
//
// With packed messages (docs/protocol.md §1.1) what is written within one task goes out
// together, packed, from one microtask: no timer, so no added latency.

import { ErrorCode, ProxyConnection, Role } from "./protocol.js";

export const HIGH_WATER = 1024 * 1024; // writers pause above this many bytes queued on the channel
export const LOW_WATER = 256 * 1024; // ... and resume at this many
const MAX_WRITE = 256 * 1024; // body bytes handed to the protocol per write step

export class StreamError extends Error {
  constructor(message, { code = null, remote = false } = {}) {
    super(message);
    this.name = "StreamError";
    this.code = code;
    this.remote = remote;
  }
}

/** One request/response exchange. Set onHead/onData/onError before the first await. */
export class LinkStream {
  constructor(link, id) {
    this.id = id;
    this._link = link;
    this.onHead = () => {};
    this.onData = () => {};
    this.onError = () => {};
    this.error = null;
    this.head = null;
    this.ended = false;
    this._writable = null;
  }

  // ----- fed by the link
  _fail(error) {
    if (this.error) return;
    this.error = error;
    this._wake();
    this.onError(error);
  }

  _wake() {
    const w = this._writable;
    this._writable = null;
    if (w) w();
  }

  // ----- used by the relay
  /** The receiver passed `size` body bytes on: the device may send that much more. */
  consumed(size) {
    this._link.conn.consumed(this.id, size);
    this._link.flush();
  }

  /** Send body bytes as the window and the channel allow; `end` sends FINAL after them. */
  async write(bytes, { end = false } = {}) {
    let view = bytes;
    while (view.length || end) {
      if (this.error) throw this.error;
      const conn = this._link.conn;
      if (!conn.isOpen(this.id)) throw new StreamError(`stream ${this.id} is closed`);
      const window = conn.sendWindow(this.id);
      if (view.length && window === 0) {
        await new Promise((resolve) => {
          this._writable = resolve;
        });
        continue;
      }
      const step = view.subarray(0, Math.min(window, MAX_WRITE));
      view = view.subarray(step.length);
      const last = end && !view.length;
      conn.sendBody(this.id, step, { endStream: last });
      this._link.flush();
      if (last) end = false;
      await this._link.drain();
    }
  }

  /** Abort both ways (no-op once the stream is gone). */
  reset(code = ErrorCode.CANCEL, reason = "") {
    this._link.conn.resetStream(this.id, code, reason);
    this._link.flush();
    this._link.streams.delete(this.id);
    this._fail(new StreamError(`stream ${this.id} cancelled`, { code }));
  }
}

export class PeerLink {
  /**
   * `channel`: an open RTCDataChannel, past the viewer's auth (access.js). `onClose(reason)`
   * is called once, when the channel closes or the device stays silent past `heartbeatTimeout`
   * ms. `onText(text)` gets the device's text messages (an auth-error when it ends the session).
   * `packed`: the device agreed to packed messages (its auth-ok said so).
   */
  constructor(
    channel,
    {
      heartbeatInterval = 2000, heartbeatTimeout = 10000, onClose = () => {}, onText = null,
      packed = false,
    } = {},
  ) {
    this.channel = channel;
    this.onText = onText;
    this.conn = new ProxyConnection(Role.CLIENT, {}, { packed });
    this._sendSoon = false;
    this.streams = new Map();
    this.onClose = onClose;
    this.closed = false;
    this.closeReason = null;
    this.rtt = null; // ms, from the last answered heartbeat
    this.dropped = 0;
    this.bytesIn = 0;
    this.bytesOut = 0;
    this._lastReceived = performance.now();
    this._heartbeatSent = new Map();
    this._lowWaiters = [];
    channel.binaryType = "arraybuffer";
    channel.bufferedAmountLowThreshold = LOW_WATER;
    channel.addEventListener("message", (e) => this._onMessage(e.data));
    channel.addEventListener("bufferedamountlow", () => this._wakeLow());
    channel.addEventListener("close", () => this.close("the data channel closed"));
    this._timer = setInterval(() => this._tick(heartbeatTimeout), heartbeatInterval);
    this._tick(heartbeatTimeout);
  }

  // ----- inbound
  _onMessage(data) {
    this._lastReceived = performance.now();
    if (typeof data === "string") {
      if (this.onText) this.onText(data);
      else this.dropped += 1;
      return;
    }
    this.bytesIn += data.byteLength;
    const events = this.conn.receiveMessage(data);
    for (const event of events) this._dispatch(event);
    // Only now: a packed message may finish a stream in its first frames' events already.
    for (const event of events) {
      if (event.type === "ResponseReceived" || event.type === "DataReceived") {
        this._releaseIfDone(event.streamId);
      }
    }
    this.flush();
  }

  _dispatch(event) {
    const stream = this.streams.get(event.streamId);
    switch (event.type) {
      case "ResponseReceived":
        if (stream) {
          stream.head = event.head;
          stream.ended = event.endStream;
          stream.onHead(event.head, event.endStream);
        }
        break;
      case "DataReceived":
        if (stream) {
          stream.ended = event.endStream;
          stream.onData(event.data, event.endStream);
        }
        break;
      case "StreamReset":
        if (stream) {
          this.streams.delete(event.streamId);
          const who = event.remote ? "the device" : "us";
          stream._fail(
            new StreamError(`stream reset by ${who}: ${event.reason || "code " + event.code}`, {
              code: event.code,
              remote: event.remote,
            }),
          );
        }
        break;
      case "WindowUpdated":
        if (stream) stream._wake();
        break;
      case "HeartbeatAcked": {
        const sent = this._heartbeatSent.get(event.seq);
        if (sent !== undefined) {
          this.rtt = performance.now() - sent;
          this._heartbeatSent.delete(event.seq);
        }
        break;
      }
      case "MessageDropped":
        this.dropped += 1;
        console.warn("peerproxy: dropped a message:", event.reason);
        break;
    }
  }

  _releaseIfDone(streamId) {
    if (!this.conn.isOpen(streamId)) this.streams.delete(streamId);
  }

  // ----- outbound
  /** Send what the protocol queued: at once, or (packed) from one microtask per task. */
  flush() {
    if (!this.conn.packed) {
      this.sendQueued();
    } else if (!this._sendSoon) {
      this._sendSoon = true;
      queueMicrotask(() => this.sendQueued());
    }
  }

  sendQueued() {
    this._sendSoon = false;
    const messages = this.conn.dataToSend();
    if (this.closed || this.channel.readyState !== "open") return;
    for (const m of messages) {
      this.bytesOut += m.length;
      this.channel.send(m);
    }
  }

  /** Wait while the channel holds more than HIGH_WATER bytes unsent. */
  async drain() {
    while (!this.closed && this.channel.bufferedAmount > HIGH_WATER) {
      await new Promise((resolve) => this._lowWaiters.push(resolve));
    }
    if (this.closed) throw new StreamError(this.closeReason ?? "the connection closed");
  }

  _wakeLow() {
    const waiters = this._lowWaiters;
    this._lowWaiters = [];
    for (const w of waiters) w();
  }

  /** Send a request head; returns the stream to write the body to and read the answer from. */
  request(head, { endStream = false } = {}) {
    if (this.closed) throw new StreamError(this.closeReason ?? "the connection closed");
    const id = this.conn.openStream(head, { endStream });
    const stream = new LinkStream(this, id);
    this.streams.set(id, stream);
    this.flush();
    return stream;
  }

  // ----- liveness
  _tick(timeout) {
    if (this.closed) return;
    const silent = performance.now() - this._lastReceived;
    if (silent > timeout) {
      this.close(`the device was silent for ${(silent / 1000).toFixed(1)} s`);
      return;
    }
    const seq = this.conn.heartbeat();
    this._heartbeatSent.clear();
    this._heartbeatSent.set(seq, performance.now());
    this.flush();
  }

  /** The link is over: fail every stream (their relays answer with errors). */
  close(reason = "closed") {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    clearInterval(this._timer);
    this._wakeLow();
    const streams = [...this.streams.values()];
    this.streams.clear();
    for (const s of streams) s._fail(new StreamError(`connection lost: ${reason}`));
    try {
      this.channel.close();
    } catch {
      // already closed
    }
    this.onClose(reason);
  }
}
