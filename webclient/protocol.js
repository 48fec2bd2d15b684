// The peerproxyd packet protocol, sans-IO: the browser's copy of peerproxyd/protocol/.
//
// Bytes in (`receiveMessage`), events out, bytes to send (`dataToSend`). No DOM, no timers,
// no WebRTC: the same module runs in the page, in a worker and under `node --test`.
// The specification is docs/protocol.md; tests/vectors/protocol.json is binding.

export const HEADER_SIZE = 12;
export const MAX_MESSAGE_SIZE = 16 * 1024;
export const MAX_PAYLOAD = MAX_MESSAGE_SIZE - HEADER_SIZE; // 16372
export const INITIAL_WINDOW = 1024 * 1024;
export const MAX_WINDOW = 2 ** 31 - 1;
export const RECENTLY_CLOSED = 1024;

export const Flag = Object.freeze({
  HEADERS: 0x0001,
  FINAL: 0x0002,
  END_HEADERS: 0x0004,
  HEARTBEAT: 0x0008,
  ACK: 0x0010,
  RESET: 0x0020,
  WINDOW: 0x0040,
});
const KNOWN_FLAGS = 0x007f;
const CONTROL = Flag.HEARTBEAT | Flag.RESET | Flag.WINDOW;
const FLAG_NAMES = Object.entries(Flag).sort((a, b) => a[1] - b[1]);

export const ErrorCode = Object.freeze({
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  INTERNAL_ERROR: 2,
  FLOW_CONTROL_ERROR: 3,
  REFUSED_STREAM: 4,
  CANCEL: 5,
  HEADERS_TOO_LARGE: 6,
  UPSTREAM_ERROR: 7,
});

export const Kind = Object.freeze({
  HEADERS: "headers",
  BODY: "body",
  HEARTBEAT: "heartbeat",
  RESET: "reset",
  WINDOW: "window",
});

export const Role = Object.freeze({ CLIENT: "client", SERVER: "server" });

/** The peer broke a rule; `streamId` is the stream to reset (0: none). */
export class RemoteProtocolError extends Error {
  constructor(message, { code = ErrorCode.PROTOCOL_ERROR, streamId = 0 } = {}) {
    super(message);
    this.name = "RemoteProtocolError";
    this.code = code;
    this.streamId = streamId;
  }
}

/** We tried to send something the protocol does not allow (a bug on our side). */
export class LocalProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = "LocalProtocolError";
  }
}

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function bytesOf(data) {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return new Uint8Array(data);
}

// ----- frames (frames.py)

export class Frame {
  constructor(streamId, seq, flags, payload = new Uint8Array(0)) {
    this.streamId = streamId;
    this.seq = seq;
    this.flags = flags;
    this.payload = payload;
  }

  get kind() {
    if (this.flags & Flag.HEARTBEAT) return Kind.HEARTBEAT;
    if (this.flags & Flag.RESET) return Kind.RESET;
    if (this.flags & Flag.WINDOW) return Kind.WINDOW;
    if (this.flags & Flag.HEADERS) return Kind.HEADERS;
    return Kind.BODY;
  }

  get final() {
    return (this.flags & Flag.FINAL) !== 0;
  }

  get flagNames() {
    return FLAG_NAMES.filter(([, v]) => this.flags & v).map(([k]) => k);
  }

  /** The whole message: header and payload, in a fresh (transferable) buffer. */
  encode() {
    const out = new Uint8Array(HEADER_SIZE + this.payload.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, this.streamId);
    view.setUint16(4, this.payload.length);
    view.setUint32(6, this.seq);
    view.setUint16(10, this.flags);
    out.set(this.payload, HEADER_SIZE);
    return out;
  }

  static heartbeat(seq, { ack = false } = {}) {
    return new Frame(0, seq, Flag.HEARTBEAT | (ack ? Flag.ACK : 0));
  }

  static reset(streamId, code, reason = "") {
    // Cut at a character boundary: a split character would make the reason invalid UTF-8.
    let data = utf8.encode(reason);
    if (data.length > MAX_PAYLOAD - 2) {
      let end = MAX_PAYLOAD - 2;
      while (end > 0 && (data[end] & 0xc0) === 0x80) end--;
      data = data.subarray(0, end);
    }
    const payload = new Uint8Array(2 + data.length);
    new DataView(payload.buffer).setUint16(0, code);
    payload.set(data, 2);
    return new Frame(streamId, 0, Flag.RESET, payload);
  }

  static window(streamId, increment) {
    const payload = new Uint8Array(4);
    new DataView(payload.buffer).setUint32(0, increment);
    return new Frame(streamId, 0, Flag.WINDOW, payload);
  }

  /** [code, reason] of a RESET message. */
  resetFields() {
    const view = new DataView(this.payload.buffer, this.payload.byteOffset, this.payload.length);
    return [view.getUint16(0), strictUtf8.decode(this.payload.subarray(2))];
  }

  windowIncrement() {
    const view = new DataView(this.payload.buffer, this.payload.byteOffset, this.payload.length);
    return view.getUint32(0);
  }
}

function hex4(n) {
  return "0x" + n.toString(16).padStart(4, "0");
}

/**
 * Decode and check one whole data-channel message; throw RemoteProtocolError if invalid.
 * The frame's payload is a view of `data` (not a copy): a data channel hands each message a
 * buffer of its own, so a receiver may pass that buffer on (relay.js transfers it).
 */
export function parseFrame(data) {
  const bytes = bytesOf(data);
  const n = bytes.length;
  checkSize(bytes);
  const view = new DataView(bytes.buffer, bytes.byteOffset, n);
  const streamId = view.getUint32(0);
  const length = view.getUint16(4);
  const seq = view.getUint32(6);
  const flags = view.getUint16(10);
  const fail = (message) => new RemoteProtocolError(message, { streamId });
  if (length !== n - HEADER_SIZE) {
    throw fail(
      `payload length field ${length} does not match the ${n - HEADER_SIZE} payload bytes present`,
    );
  }
  if (flags & ~KNOWN_FLAGS) throw fail(`unknown flags ${hex4(flags & ~KNOWN_FLAGS)}`);
  const frame = new Frame(streamId, seq, flags, bytes.subarray(HEADER_SIZE));
  const problem = combinationProblem(frame);
  if (problem) throw fail(problem);
  return frame;
}

/** Checks 1 and 2 of docs/protocol.md §2.1, on a whole message. */
function checkSize(bytes) {
  const n = bytes.length;
  if (n < HEADER_SIZE) {
    throw new RemoteProtocolError(`message length ${n} is less than the 12-byte header`);
  }
  if (n > MAX_MESSAGE_SIZE) {
    const streamId = new DataView(bytes.buffer, bytes.byteOffset, n).getUint32(0);
    throw new RemoteProtocolError(`message length ${n} exceeds the maximum of ${MAX_MESSAGE_SIZE}`, { streamId });
  }
}

/**
 * Encoded frames (Uint8Array) joined, in order, into packed messages: a new message whenever
 * the next frame would take the current one past MAX_MESSAGE_SIZE (docs/protocol.md §1.1).
 */
export function packMessages(frames) {
  const messages = [];
  let batch = [];
  let size = 0;
  const close = () => messages.push(batch.length === 1 ? batch[0] : concat(batch, size));
  for (const frame of frames) {
    if (batch.length && size + frame.length > MAX_MESSAGE_SIZE) {
      close();
      batch = [];
      size = 0;
    }
    batch.push(frame);
    size += frame.length;
  }
  if (batch.length) close();
  return messages;
}

/**
 * The frames of a packed message, in order, each for parseFrame. Where the rest of the message
 * cannot be read, throws RemoteProtocolError after yielding the frames before it. The last
 * frame is a view of the message's buffer (relay.js may transfer that buffer); frames before
 * it are copies, so a transfer cannot take their bytes away.
 */
export function* splitMessage(data) {
  const bytes = bytesOf(data);
  const n = bytes.length;
  checkSize(bytes);
  const view = new DataView(bytes.buffer, bytes.byteOffset, n);
  let offset = 0;
  while (offset < n) {
    const left = n - offset;
    if (left < HEADER_SIZE) {
      throw new RemoteProtocolError(`frame at offset ${offset}: ${left} bytes are less than the 12-byte header`);
    }
    const length = view.getUint16(offset + 4);
    if (HEADER_SIZE + length > left) {
      throw new RemoteProtocolError(
        `frame at offset ${offset}: payload length field ${length} runs past the end of the ${n}-byte message`,
        { streamId: view.getUint32(offset) },
      );
    }
    const end = offset + HEADER_SIZE + length;
    yield end === n ? bytes.subarray(offset) : bytes.slice(offset, end);
    offset = end;
  }
}

function combinationProblem(frame) {
  const f = frame.flags;
  const exclusive = [Flag.HEARTBEAT, Flag.RESET, Flag.WINDOW, Flag.HEADERS].filter((k) => f & k);
  if (exclusive.length > 1) return `conflicting flags ${hex4(f)}`;
  if (f & Flag.ACK && !(f & Flag.HEARTBEAT)) return "ACK is only valid with HEARTBEAT";
  if (f & CONTROL && f & (Flag.FINAL | Flag.END_HEADERS)) {
    return "FINAL and END_HEADERS are not valid on control messages";
  }
  if (f & Flag.END_HEADERS && !(f & Flag.HEADERS)) return "END_HEADERS is only valid with HEADERS";
  if (f & Flag.HEADERS && f & Flag.FINAL && !(f & Flag.END_HEADERS)) {
    return "FINAL on HEADERS requires END_HEADERS";
  }
  const kind = frame.kind;
  if (kind === Kind.HEARTBEAT) {
    if (frame.streamId !== 0) return "HEARTBEAT must use stream 0";
    if (frame.payload.length) return "HEARTBEAT must have an empty payload";
    return null;
  }
  if (frame.streamId === 0) return "stream 0 is reserved for HEARTBEAT";
  if ((kind === Kind.RESET || kind === Kind.WINDOW) && frame.seq !== 0) {
    return "sequence number must be 0 on RESET and WINDOW";
  }
  if (kind === Kind.RESET) {
    if (frame.payload.length < 2) return "RESET payload must hold at least a 2-byte error code";
    try {
      strictUtf8.decode(frame.payload.subarray(2));
    } catch {
      return "RESET reason is not valid UTF-8";
    }
  }
  if (kind === Kind.WINDOW) {
    if (frame.payload.length !== 4) return "WINDOW payload must be exactly 4 bytes";
    if (frame.windowIncrement() === 0) return "WINDOW increment must not be 0";
  }
  return null;
}

// ----- heads (heads.py)

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const FORBIDDEN_IN_VALUE = /[\r\n\0]/;
const LONE_SURROGATE = /[\ud800-\udfff]/u; // with /u, a valid pair is one code point: no match
const FORBIDDEN_IN_TARGET = /[\x00-\x20\x7f#\ud800-\udfff]/u;
// peerproxyd/names.py: a device id is 32 characters of lowercase base32 (derived from the
// device key, docs/security.md 1.1); a service name at most 29, so that both fit one DNS label.
const SERVICE_NAME = /^[a-z0-9]([a-z0-9-]{0,27}[a-z0-9])?$/;
const DEVICE_ID = /^[a-z2-7]{32}$/;
const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

/** A head is malformed; the connection resets its stream with the message. */
export class HeadError extends Error {}

export function validServiceName(name) {
  return typeof name === "string" && SERVICE_NAME.test(name) && !name.includes("--");
}

export function validDeviceId(id) {
  return typeof id === "string" && DEVICE_ID.test(id);
}

/** Python's repr() of a JSON value, for error texts that quote one (docs/protocol.md §4). */
export function pyRepr(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") {
    return Number.isInteger(value) ? String(value) : String(value).replace(/^(-?\d+)$/, "$1.0");
  }
  if (Array.isArray(value)) return "[" + value.map(pyRepr).join(", ") + "]";
  if (typeof value === "object") {
    return "{" + Object.entries(value).map(([k, v]) => `${pyRepr(k)}: ${pyRepr(v)}`).join(", ") + "}";
  }
  const s = String(value);
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const cp = ch.codePointAt(0);
    if (ch === "\\" || ch === quote) out += "\\" + ch;
    else if (ch === "\t") out += "\\t";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (cp < 0x20 || cp === 0x7f) out += "\\x" + cp.toString(16).padStart(2, "0");
    else if (cp < 0x7f) out += ch;
    else if (NOT_PRINTABLE.test(ch) || (cp >= 0xd800 && cp <= 0xdfff)) {
      if (cp <= 0xff) out += "\\x" + cp.toString(16).padStart(2, "0");
      else if (cp <= 0xffff) out += "\\u" + cp.toString(16).padStart(4, "0");
      else out += "\\U" + cp.toString(16).padStart(8, "0");
    } else out += ch;
  }
  return out + quote;
}

function checkHeaders(raw) {
  if (!Array.isArray(raw)) throw new HeadError("headers must be a list of [name, value] pairs");
  const pairs = [];
  for (const item of raw) {
    if (!Array.isArray(item) || item.length !== 2 || !item.every((x) => typeof x === "string")) {
      throw new HeadError("headers must be a list of [name, value] pairs");
    }
    const [name, value] = item;
    if (!TOKEN.test(name)) throw new HeadError(`invalid header name ${pyRepr(name)}`);
    if (FORBIDDEN_IN_VALUE.test(value)) {
      throw new HeadError(`header ${pyRepr(name)} has CR, LF or NUL in its value`);
    }
    if (LONE_SURROGATE.test(value)) {
      throw new HeadError(`header ${pyRepr(name)} has a lone surrogate in its value`);
    }
    pairs.push([name, value]);
  }
  return pairs;
}

function decodeObject(block, keys) {
  let obj;
  try {
    obj = JSON.parse(strictUtf8.decode(block));
  } catch (exc) {
    if (exc instanceof RangeError) throw new HeadError("header block is nested too deeply");
    throw new HeadError(`header block is not UTF-8 JSON: ${exc.message}`);
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new HeadError("header block must be a JSON object");
  }
  const missing = keys.filter((k) => !Object.hasOwn(obj, k)).sort();
  if (missing.length) throw new HeadError(`header block lacks ${missing.join(", ")}`);
  return obj;
}

/**
 * {method, target, headers: [[name, value], ...], service, websocket?} as the compact JSON
 * block; `websocket` (docs/protocol.md §12) is written only when true.
 */
export function encodeRequestHead(head) {
  const obj = {
    method: head.method,
    target: head.target,
    headers: head.headers ?? [],
    service: head.service,
  };
  if (head.websocket) obj.websocket = true;
  return utf8.encode(JSON.stringify(obj));
}

export function decodeRequestHead(block) {
  const obj = decodeObject(block, ["method", "target", "headers", "service"]);
  const { method, target, service } = obj;
  if (typeof method !== "string" || !TOKEN.test(method)) {
    throw new HeadError(`invalid method ${pyRepr(method)}`);
  }
  if (
    typeof target !== "string" ||
    !target.startsWith("/") ||
    target.startsWith("//") ||
    FORBIDDEN_IN_TARGET.test(target)
  ) {
    throw new HeadError(`target ${pyRepr(target)} is not in origin-form`);
  }
  if (!validServiceName(service)) throw new HeadError(`invalid service name ${pyRepr(service)}`);
  const head = { method, target, headers: checkHeaders(obj.headers), service };
  if (Object.hasOwn(obj, "websocket")) {
    if (obj.websocket !== true) throw new HeadError("websocket must be true");
    if (method !== "GET") throw new HeadError("a websocket stream must use GET");
    head.websocket = true;
  }
  return head;
}

/** {status, headers} as the compact JSON block. */
export function encodeResponseHead(head) {
  return utf8.encode(JSON.stringify({ status: head.status, headers: head.headers ?? [] }));
}

export function decodeResponseHead(block) {
  const obj = decodeObject(block, ["status", "headers"]);
  const { status } = obj;
  if (!Number.isInteger(status) || status < 100 || status > 599) {
    throw new HeadError(`invalid status ${pyRepr(status)}`);
  }
  return { status, headers: checkHeaders(obj.headers) };
}

// ----- stream states (state.py): the only place transitions are defined

export const HalfState = Object.freeze({
  IDLE: "idle",
  HEADERS: "headers",
  BODY: "body",
  CLOSED: "closed",
});
const Input = Object.freeze({
  HEADERS: "HEADERS",
  END_HEADERS: "END_HEADERS",
  BODY: "BODY",
  FINAL: "FINAL",
});
const TRANSITIONS = new Map([
  ["idle/HEADERS", HalfState.HEADERS],
  ["idle/END_HEADERS", HalfState.BODY],
  ["headers/HEADERS", HalfState.HEADERS],
  ["headers/END_HEADERS", HalfState.BODY],
  ["body/BODY", HalfState.BODY],
  ["body/FINAL", HalfState.CLOSED],
]);

function nextState(state, input) {
  return TRANSITIONS.get(`${state}/${input}`) ?? null;
}

function inputsOf(frame) {
  let first;
  if (frame.kind === Kind.HEADERS) {
    first = frame.flags & Flag.END_HEADERS ? Input.END_HEADERS : Input.HEADERS;
  } else first = Input.BODY;
  return frame.final ? [first, Input.FINAL] : [first];
}

// ----- the connection (connection.py)

export const DEFAULT_LIMITS = Object.freeze({
  maxStreams: 128,
  maxHeaderBytes: 64 * 1024,
  reorderWindow: 64,
});

class Stream {
  constructor(id) {
    this.id = id;
    this.recv = HalfState.IDLE;
    this.send = HalfState.IDLE;
    this.nextSeq = 0;
    this.finalSeq = null;
    this.pending = new Map();
    this.headerParts = [];
    this.headerBytes = 0;
    this.sendSeq = 0;
    this.sendWindow = INITIAL_WINDOW;
    this.recvWindow = INITIAL_WINDOW;
    this.unacked = 0;
  }

  get done() {
    return this.recv === HalfState.CLOSED && this.send === HalfState.CLOSED;
  }
}

function concat(parts, total) {
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * The protocol state of one data channel, with no IO.
 *
 * Events are plain objects: {type: "ResponseReceived", streamId, head, endStream},
 * {type: "RequestReceived", ...}, {type: "DataReceived", streamId, data, endStream},
 * {type: "StreamReset", streamId, code, reason, remote}, {type: "WindowUpdated", streamId,
 * increment}, {type: "HeartbeatAcked", seq}, {type: "MessageDropped", reason}.
 */
export class ProxyConnection {
  /** `packed`: both ends agreed to packed messages (docs/protocol.md §1.1). */
  constructor(role = Role.CLIENT, limits = {}, { packed = false } = {}) {
    this.role = role;
    this.limits = { ...DEFAULT_LIMITS, ...limits };
    this.packed = packed;
    this._streams = new Map();
    this._outbox = [];
    this._nextId = 1;
    this._highestRemote = 0;
    this._closed = [];
    this._closedSet = new Set();
    this._heartbeatSeq = 0;
  }

  // ----- inspection
  get openStreams() {
    return this._streams.size;
  }

  isOpen(streamId) {
    return this._streams.has(streamId);
  }

  sendWindow(streamId) {
    return this._streams.get(streamId)?.sendWindow ?? 0;
  }

  /** Messages to send, one data-channel message each (Uint8Array with its own buffer): one
   * frame each, or packed frames if `packed`. */
  dataToSend() {
    const out = this._outbox;
    this._outbox = [];
    return this.packed && out.length > 1 ? packMessages(out) : out;
  }

  // ----- receiving
  /** Process one message; never throws for bad input. A packed message's frames are processed
   * in order, each as its own message; an unreadable rest is reported after them. */
  receiveMessage(data) {
    if (!this.packed) return this._receiveOne(data);
    const events = [];
    try {
      for (const frame of splitMessage(data)) events.push(...this._receiveOne(frame));
    } catch (exc) {
      if (!(exc instanceof RemoteProtocolError)) throw exc;
      events.push(...this._failStream(exc));
    }
    return events;
  }

  _receiveOne(data) {
    try {
      return this._receiveFrame(parseFrame(data));
    } catch (exc) {
      if (exc instanceof RemoteProtocolError) return this._failStream(exc);
      throw exc;
    }
  }

  _receiveFrame(frame) {
    const kind = frame.kind;
    if (kind === Kind.HEARTBEAT) {
      if (frame.flags & Flag.ACK) return [{ type: "HeartbeatAcked", seq: frame.seq }];
      this._emit(Frame.heartbeat(frame.seq, { ack: true }));
      return [];
    }
    let stream = this._streams.get(frame.streamId);
    if (kind === Kind.RESET) {
      if (!stream) return [];
      const [code, reason] = frame.resetFields();
      this._forget(stream);
      return [{ type: "StreamReset", streamId: stream.id, code, reason, remote: true }];
    }
    if (!stream) {
      if (kind === Kind.WINDOW || this._isStale(frame.streamId)) return [];
      const refused = this._openRemote(frame.streamId);
      if (refused) return [refused];
      stream = this._streams.get(frame.streamId);
    }
    if (kind === Kind.WINDOW) {
      const increment = frame.windowIncrement();
      stream.sendWindow += increment;
      if (stream.sendWindow > MAX_WINDOW) {
        throw new RemoteProtocolError(`WINDOW overflows stream ${stream.id}'s send window`, {
          code: ErrorCode.FLOW_CONTROL_ERROR,
          streamId: stream.id,
        });
      }
      return [{ type: "WindowUpdated", streamId: stream.id, increment }];
    }
    const events = [];
    for (const ready of this._reorder(stream, frame)) events.push(...this._deliver(stream, ready));
    if (stream.done) this._forget(stream);
    return events;
  }

  _isStale(streamId) {
    if (this.role === Role.CLIENT) {
      if (streamId < this._nextId) return true;
      throw new RemoteProtocolError(`stream ${streamId} was never opened`, { streamId });
    }
    if (this._closedSet.has(streamId)) return true;
    if (streamId < this._highestRemote) {
      throw new RemoteProtocolError(`stream id ${streamId} reused`, { streamId });
    }
    return false;
  }

  _openRemote(streamId) {
    this._highestRemote = streamId;
    const stream = new Stream(streamId);
    if (this._streams.size >= this.limits.maxStreams) {
      const reason = `too many concurrent streams (limit ${this.limits.maxStreams})`;
      this._emit(Frame.reset(streamId, ErrorCode.REFUSED_STREAM, reason));
      this._forget(stream);
      return { type: "StreamReset", streamId, code: ErrorCode.REFUSED_STREAM, reason, remote: false };
    }
    this._streams.set(streamId, stream);
    return null;
  }

  _reorder(stream, frame) {
    const seq = frame.seq;
    const fail = (message) => new RemoteProtocolError(message, { streamId: stream.id });
    const window = this.limits.reorderWindow;
    if (seq < stream.nextSeq || stream.pending.has(seq)) {
      throw fail(`duplicate sequence number ${seq} on stream ${stream.id}`);
    }
    if (seq >= stream.nextSeq + window) {
      throw fail(
        `sequence number ${seq} on stream ${stream.id} is beyond the reorder window` +
          ` (next expected ${stream.nextSeq}, window ${window})`,
      );
    }
    if (stream.finalSeq !== null && seq > stream.finalSeq) {
      throw fail(`sequence number ${seq} on stream ${stream.id} follows FINAL`);
    }
    if (frame.final) {
      for (const s of stream.pending.keys()) {
        if (s > seq) throw fail(`FINAL at sequence number ${seq} on stream ${stream.id} is not last`);
      }
      stream.finalSeq = seq;
    }
    if (seq !== stream.nextSeq) {
      stream.pending.set(seq, frame);
      return [];
    }
    const ready = [frame];
    stream.nextSeq += 1;
    while (stream.pending.has(stream.nextSeq)) {
      ready.push(stream.pending.get(stream.nextSeq));
      stream.pending.delete(stream.nextSeq);
      stream.nextSeq += 1;
    }
    return ready;
  }

  _deliver(stream, frame) {
    for (const input of inputsOf(frame)) {
      const state = nextState(stream.recv, input);
      if (state === null) {
        throw new RemoteProtocolError(
          `${input} not allowed on stream ${stream.id} in state ${stream.recv}`,
          { streamId: stream.id },
        );
      }
      stream.recv = state;
    }
    if (frame.kind === Kind.HEADERS) {
      stream.headerParts.push(frame.payload);
      stream.headerBytes += frame.payload.length;
      if (stream.headerBytes > this.limits.maxHeaderBytes) {
        throw new RemoteProtocolError(
          `header block on stream ${stream.id} exceeds ${this.limits.maxHeaderBytes} bytes`,
          { code: ErrorCode.HEADERS_TOO_LARGE, streamId: stream.id },
        );
      }
      if (!(frame.flags & Flag.END_HEADERS)) return [];
      const block = concat(stream.headerParts, stream.headerBytes);
      stream.headerParts = [];
      stream.headerBytes = 0;
      try {
        if (this.role === Role.SERVER) {
          const head = decodeRequestHead(block);
          if (head.websocket && frame.final) {
            throw new HeadError("a websocket stream must not end its request with the head");
          }
          return [{ type: "RequestReceived", streamId: stream.id, head, endStream: frame.final }];
        }
        const head = decodeResponseHead(block);
        return [{ type: "ResponseReceived", streamId: stream.id, head, endStream: frame.final }];
      } catch (exc) {
        if (exc instanceof HeadError) {
          throw new RemoteProtocolError(exc.message, { streamId: stream.id });
        }
        throw exc;
      }
    }
    const size = frame.payload.length;
    if (size > stream.recvWindow) {
      throw new RemoteProtocolError(
        `stream ${stream.id} sent ${size} bytes with a window of ${stream.recvWindow}`,
        { code: ErrorCode.FLOW_CONTROL_ERROR, streamId: stream.id },
      );
    }
    stream.recvWindow -= size;
    return [{ type: "DataReceived", streamId: stream.id, data: frame.payload, endStream: frame.final }];
  }

  _failStream(exc) {
    const streamId = exc.streamId;
    if (streamId === 0) return [{ type: "MessageDropped", reason: exc.message }];
    if (
      !this._streams.has(streamId) &&
      (this.role === Role.CLIENT || this._closedSet.has(streamId))
    ) {
      return [{ type: "MessageDropped", reason: exc.message }];
    }
    this._emit(Frame.reset(streamId, exc.code, exc.message));
    const stream = this._streams.get(streamId) ?? new Stream(streamId);
    this._highestRemote = Math.max(this._highestRemote, streamId);
    this._forget(stream);
    return [{ type: "StreamReset", streamId, code: exc.code, reason: exc.message, remote: false }];
  }

  // ----- sending
  /** Client: start a request; returns its new stream id. */
  openStream(head, { endStream = false } = {}) {
    if (this.role !== Role.CLIENT) throw new LocalProtocolError("only the client opens streams");
    const stream = new Stream(this._nextId);
    this._nextId += 1;
    this._streams.set(stream.id, stream);
    this._sendHead(stream, encodeRequestHead(head), endStream);
    return stream.id;
  }

  /** Server: answer a request. */
  sendResponse(streamId, head, { endStream = false } = {}) {
    if (this.role !== Role.SERVER) throw new LocalProtocolError("only the server sends responses");
    this._sendHead(this._stream(streamId), encodeResponseHead(head), endStream);
  }

  /** Body bytes (at most sendWindow()), split into messages; FINAL if endStream. */
  sendBody(streamId, data, { endStream = false } = {}) {
    const stream = this._stream(streamId);
    const bytes = bytesOf(data);
    if (bytes.length > stream.sendWindow) {
      throw new LocalProtocolError(
        `${bytes.length} bytes exceed stream ${streamId}'s window of ${stream.sendWindow}`,
      );
    }
    stream.sendWindow -= bytes.length;
    const count = Math.max(1, Math.ceil(bytes.length / MAX_PAYLOAD));
    for (let i = 0; i < count; i++) {
      const chunk = bytes.subarray(i * MAX_PAYLOAD, (i + 1) * MAX_PAYLOAD);
      const final = endStream && i === count - 1;
      this._sendFrame(stream, final ? Flag.FINAL : 0, chunk);
    }
  }

  endStream(streamId) {
    this.sendBody(streamId, new Uint8Array(0), { endStream: true });
  }

  /** Abort a stream both ways; a no-op for a stream that is already gone. */
  resetStream(streamId, code = ErrorCode.CANCEL, reason = "") {
    const stream = this._streams.get(streamId);
    if (!stream) return;
    this._emit(Frame.reset(streamId, code, reason));
    this._forget(stream);
  }

  /** The application passed `size` received body bytes on: grant the peer more. */
  consumed(streamId, size) {
    const stream = this._streams.get(streamId);
    if (!stream || size <= 0) return;
    stream.unacked += size;
    if (stream.unacked >= INITIAL_WINDOW / 4 && stream.recv !== HalfState.CLOSED) {
      this._emit(Frame.window(streamId, stream.unacked));
      stream.recvWindow += stream.unacked;
      stream.unacked = 0;
    }
  }

  /** Queue a HEARTBEAT; the peer answers with HeartbeatAcked(seq). */
  heartbeat() {
    this._heartbeatSeq = (this._heartbeatSeq + 1) % 2 ** 32;
    this._emit(Frame.heartbeat(this._heartbeatSeq));
    return this._heartbeatSeq;
  }

  // ----- internals
  _stream(streamId) {
    const stream = this._streams.get(streamId);
    if (!stream) throw new LocalProtocolError(`stream ${streamId} is not open`);
    return stream;
  }

  _sendHead(stream, block, endStream) {
    const count = Math.max(1, Math.ceil(block.length / MAX_PAYLOAD));
    for (let i = 0; i < count; i++) {
      let flags = Flag.HEADERS;
      if (i === count - 1) flags |= Flag.END_HEADERS | (endStream ? Flag.FINAL : 0);
      this._sendFrame(stream, flags, block.subarray(i * MAX_PAYLOAD, (i + 1) * MAX_PAYLOAD));
    }
  }

  _sendFrame(stream, flags, payload) {
    const frame = new Frame(stream.id, stream.sendSeq, flags, payload);
    for (const input of inputsOf(frame)) {
      const state = nextState(stream.send, input);
      if (state === null) {
        throw new LocalProtocolError(
          `cannot send ${input} on stream ${stream.id} in state ${stream.send}`,
        );
      }
      stream.send = state;
    }
    stream.sendSeq += 1;
    this._emit(frame);
    if (stream.done) this._forget(stream);
  }

  _emit(frame) {
    this._outbox.push(frame.encode());
  }

  _forget(stream) {
    this._streams.delete(stream.id);
    if (this._closed.length === RECENTLY_CLOSED) this._closedSet.delete(this._closed.shift());
    this._closed.push(stream.id);
    this._closedSet.add(stream.id);
  }
}

/** Look a header up by name, case-insensitively: the first value, or null. */
export function getHeader(headers, name) {
  const lower = name.toLowerCase();
  for (const [k, v] of headers) if (k.toLowerCase() === lower) return v;
  return null;
}
