// The signaling client: one WebSocket to the signaling server (peerproxyd/signaling/messages.py).
//
// The server greets with {"type":"hello","id"}; we send {"type":"offer","to":device,
// "payload":{"sdp","type"}} and trickle {"type":"candidate",...}; the device answers with
// {"type":"answer","from":device,...}. Errors: {"type":"error","code","message","ref","to"}.

export class SignalingError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "SignalingError";
    this.code = code;
  }
}

const OPEN_TIMEOUT = 10_000;

export class Signaling {
  /** `url`: ws(s)://host/ws. `onMessage(msg)` gets every message not taken by a waiter. */
  constructor(url, { onMessage = () => {}, onState = () => {} } = {}) {
    this.url = url;
    this.onMessage = onMessage;
    this.onState = onState;
    this.id = null;
    this.iceServers = null;
    this._ws = null;
    this._waiters = new Set();
    this._opening = null;
  }

  get connected() {
    return this._ws !== null && this._ws.readyState === WebSocket.OPEN && this.id !== null;
  }

  /** Resolve once connected and greeted; reuses the open socket. */
  ready() {
    if (this.connected) return Promise.resolve(this);
    if (!this._opening) {
      this._opening = this._open().finally(() => {
        this._opening = null;
      });
    }
    return this._opening;
  }

  _open() {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (exc) {
        reject(new SignalingError("unreachable", `cannot open ${this.url}: ${exc.message}`));
        return;
      }
      this._ws = ws;
      this.id = null;
      const timer = setTimeout(() => {
        ws.close();
        reject(new SignalingError("unreachable", "the signaling server did not answer"));
      }, OPEN_TIMEOUT);
      ws.onmessage = (event) => {
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch {
          return;
        }
        if (msg.type === "hello" && this.id === null) {
          this.id = msg.id;
          // The server may hand out ICE servers (STUN, TURN with per-peer credentials).
          this.iceServers = Array.isArray(msg.iceServers) ? msg.iceServers : null;
          clearTimeout(timer);
          this.onState(true);
          resolve(this);
          return;
        }
        this._dispatch(msg);
      };
      ws.onclose = () => {
        clearTimeout(timer);
        if (this._ws === ws) {
          this._ws = null;
          this.id = null;
          this.onState(false);
        }
        const error = new SignalingError("unreachable", "lost the connection to the signaling server");
        for (const waiter of [...this._waiters]) waiter.reject(error);
        reject(new SignalingError("unreachable", "cannot reach the signaling server"));
      };
    });
  }

  _dispatch(msg) {
    for (const waiter of [...this._waiters]) {
      if (waiter.match(msg)) return;
    }
    this.onMessage(msg);
  }

  send(msg) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
      throw new SignalingError("unreachable", "not connected to the signaling server");
    }
    this._ws.send(JSON.stringify(msg));
  }

  /**
   * Wait for the device's answer to our offer. Rejects with SignalingError for an error about
   * the offer (e.g. code "device-offline"), a "bye" from the device, or after `timeout` ms.
   */
  waitAnswer(device, timeout) {
    return new Promise((resolve, reject) => {
      const waiter = {
        match: (msg) => {
          if (msg.type === "answer" && msg.from === device) {
            done();
            resolve(msg.payload);
            return true;
          }
          if (msg.type === "error" && (msg.to === device || msg.ref === "offer")) {
            done();
            reject(new SignalingError(msg.code, msg.message));
            return true;
          }
          if (msg.type === "bye" && msg.from === device) {
            done();
            reject(new SignalingError("bye", msg.payload?.reason ?? "the device refused the connection"));
            return true;
          }
          return false;
        },
        reject: (error) => {
          done();
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        done();
        reject(new SignalingError("timeout", `${device} did not answer within ${timeout / 1000} s`));
      }, timeout);
      const done = () => {
        clearTimeout(timer);
        this._waiters.delete(waiter);
      };
      this._waiters.add(waiter);
    });
  }

  close() {
    const ws = this._ws;
    this._ws = null;
    this.id = null;
    if (ws) ws.close();
  }
}
