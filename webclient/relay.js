// The page's half of the service-worker bridge: requests arrive from sw.js over a MessagePort,
// travel over the PeerLink, and the answer goes back over the same port.
//
// Per request, over its own MessageChannel port (ArrayBuffers are transferred, never copied):
//   worker -> page  {type:"body", chunk}  {type:"body-end"}  {type:"consumed", bytes}  {type:"cancel"}
//   page -> worker  {type:"accepted"}  {type:"credit", bytes}  {type:"body-stop"}
//                   {type:"head", status, headers, authorization, basicRealm}
//                   {type:"data", chunk, offset, end}  {type:"error", status, message}
// A data message's bytes are `chunk` from `offset` on: the whole data-channel message is
// transferred as it arrived (its 12-byte header before `offset`), never copied.
// Request bodies come in chunks of at most 256 KiB (sw.js MAX_PIECE), only as far as "credit"
// allows;
// response bytes are acknowledged with "consumed" once the worker's stream hands them on, and
// only then does the device get more WINDOW. Memory per stream stays near INITIAL_WINDOW.
//
// Basic auth (basicauth.js): a request with `basicAuth: true` carries this tab's credentials
// for its path, if any ("head" says which, as `authorization`); a 401 with a Basic challenge
// comes with its realm as `basicRealm`, and the worker may then ask the page for credentials
// over the manager port ({type:"basic-auth", realm, target, sent}, signin.js).

import { BasicCredentials, basicRealm } from "./basicauth.js";
import { ErrorCode } from "./protocol.js";

export const BODY_CREDIT = 1024 * 1024; // request-body bytes the worker may have in flight to us
const REQUEST_WAIT = 30_000; // how long a request waits for a connection before 503

export class Relay {
  /**
   * `service`: the device's service name. `describeOutage()` says why there is no link.
   * `onResponse(info)` sees each response head ({target, status, headers, destination}).
   */
  constructor(service, { describeOutage = () => "not connected", onResponse = () => {} } = {}) {
    this.service = service;
    this.describeOutage = describeOutage;
    this.onResponse = onResponse;
    this.link = null;
    this.requests = 0;
    this.credentials = new BasicCredentials(); // this tab's Basic credentials, memory only
    this._linkWaiters = [];
  }

  setLink(link) {
    this.link = link;
    if (link) {
      const waiters = this._linkWaiters;
      this._linkWaiters = [];
      for (const w of waiters) w.resolve(link);
    }
  }

  /** The link, once there is one (rejects after REQUEST_WAIT ms without). */
  waitLink() {
    return this._waitLink();
  }

  _waitLink() {
    if (this.link && !this.link.closed) return Promise.resolve(this.link);
    return new Promise((resolve, reject) => {
      const waiter = { resolve: (l) => (clearTimeout(timer), resolve(l)) };
      const timer = setTimeout(() => {
        this._linkWaiters = this._linkWaiters.filter((w) => w !== waiter);
        reject(new Error(this.describeOutage()));
      }, REQUEST_WAIT);
      this._linkWaiters.push(waiter);
    });
  }

  /** One request from the worker: `msg` = {method, target, headers, hasBody, destination, basicAuth}. */
  async handle(msg, port) {
    this.requests += 1;
    port.postMessage({ type: "accepted" });
    let link;
    try {
      link = await this._waitLink();
    } catch (exc) {
      port.postMessage({ type: "error", status: 503, message: exc.message });
      port.close();
      return;
    }
    const authorization = msg.basicAuth ? this.credentials.forPath(msg.target) : null;
    const headers = authorization ? [...msg.headers, ["authorization", authorization]] : msg.headers;
    const head = { method: msg.method, target: msg.target, headers, service: this.service };
    let stream;
    try {
      stream = link.request(head, { endStream: !msg.hasBody });
    } catch (exc) {
      port.postMessage({ type: "error", status: 503, message: exc.message });
      port.close();
      return;
    }
    new Exchange(this, msg, port, stream).start(authorization);
  }
}

class Exchange {
  constructor(relay, msg, port, stream) {
    this.relay = relay;
    this.msg = msg;
    this.port = port;
    this.stream = stream;
    this.headSent = false;
    this.finished = false;
    this.body = msg.hasBody ? [] : null; // chunks from the worker not yet written
    this.bodyEnded = false;
    this.writing = false;
  }

  start(authorization) {
    const { port, stream } = this;
    stream.onHead = (head, end) => {
      this.headSent = true;
      this.relay.onResponse({ target: this.msg.target, destination: this.msg.destination, ...head });
      const realm = head.status === 401 ? basicRealm(head.headers) : null;
      port.postMessage({ type: "head", status: head.status, headers: head.headers, authorization, basicRealm: realm });
      if (end) this._finish({ type: "data", chunk: new ArrayBuffer(0), end: true });
    };
    stream.onData = (data, end) => {
      // `data` views the tail of the channel message's own buffer (protocol.js does not copy
      // payloads): transfer that buffer. Anything else (a view that stops short) is copied.
      let chunk = data.buffer;
      let offset = data.byteOffset;
      if (offset + data.byteLength !== chunk.byteLength) {
        chunk = data.slice().buffer;
        offset = 0;
      }
      const message = { type: "data", chunk, offset, end };
      if (end) this._finish(message, [chunk]);
      else port.postMessage(message, [chunk]);
    };
    stream.onError = (error) => {
      if (this.finished) return;
      // The device answered before the request body was all sent: stop sending, not an error.
      if (error.code === ErrorCode.NO_ERROR && this.headSent && stream.ended) return;
      this.body = null;
      port.postMessage({ type: "body-stop" });
      this._finish({ type: "error", status: this.headSent ? 0 : 502, message: error.message });
    };
    port.onmessage = (e) => this._fromWorker(e.data);
    if (this.body) port.postMessage({ type: "credit", bytes: BODY_CREDIT });
  }

  _fromWorker(msg) {
    switch (msg.type) {
      case "body":
        if (this.body) {
          this.body.push(new Uint8Array(msg.chunk));
          this._pump();
        }
        break;
      case "body-end":
        this.bodyEnded = true;
        this._pump();
        break;
      case "consumed":
        this.stream.consumed(msg.bytes);
        break;
      case "cancel":
        this.finished = true;
        this.stream.reset(ErrorCode.CANCEL, "the browser cancelled the request");
        this.port.close();
        break;
    }
  }

  /** Write the worker's body chunks one at a time, giving credit back as each one leaves. */
  async _pump() {
    if (this.writing || !this.body) return;
    this.writing = true;
    try {
      while (this.body && (this.body.length || this.bodyEnded)) {
        const chunk = this.body.shift();
        const end = this.bodyEnded && this.body.length === 0;
        if (!chunk && !end) break;
        await this.stream.write(chunk ?? new Uint8Array(0), { end });
        if (chunk) this.port.postMessage({ type: "credit", bytes: chunk.length });
        if (end) {
          this.body = null;
          break;
        }
      }
    } catch {
      // The stream failed: its onError tells the worker.
      this.body = null;
    } finally {
      this.writing = false;
    }
  }

  _finish(message, transfer = []) {
    if (this.finished) return;
    this.finished = true;
    this.port.postMessage(message, transfer);
    this.port.close();
  }
}
