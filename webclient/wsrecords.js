// WebSocket records, sans-IO: the browser's copy of peerproxyd/protocol/websocket.py.
//
// A WebSocket rides one stream; each direction's body is a byte stream of records
//   type (u8) | length (u32, big-endian) | payload
// TEXT 0x01, BINARY 0x02, CLOSE 0x08 (empty, or u16 code + UTF-8 reason). docs/protocol.md §12
// is the specification and tests/vectors/websocket.json is binding (error texts included).
// Records here: {type: "text", text} | {type: "binary", data: Uint8Array} | {type: "close", code?, reason?}.

export const RecordType = Object.freeze({ TEXT: 0x01, BINARY: 0x02, CLOSE: 0x08 });
export const PREFIX_SIZE = 5;
export const MAX_MESSAGE = 16 * 1024 * 1024;
export const MAX_CLOSE_REASON = 123;
export const NO_STATUS = 1005;
export const ABNORMAL = 1006;
const RESERVED_CLOSE_CODES = new Set([1004, 1005, 1006, 1015]);
const KNOWN = new Set(Object.values(RecordType));

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** The peer broke a record rule: reset the stream with PROTOCOL_ERROR and this message. */
export class RecordError extends Error {
  constructor(message) {
    super(message);
    this.name = "RecordError";
  }
}

export function validCloseCode(code) {
  return Number.isInteger(code) && code >= 1000 && code <= 4999 && !RESERVED_CLOSE_CODES.has(code);
}

function bytesOf(data) {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return new Uint8Array(data);
}

/** The 5-byte prefix of a record whose payload is `length` bytes. */
export function encodePrefix(type, length) {
  const out = new Uint8Array(PREFIX_SIZE);
  out[0] = type;
  new DataView(out.buffer).setUint32(1, length);
  return out;
}

/** One record, prefix included, in a fresh buffer. Throws RangeError for a CLOSE that may not be sent. */
export function encodeRecord(record) {
  let type;
  let payload;
  switch (record.type) {
    case "text":
      type = RecordType.TEXT;
      payload = utf8.encode(record.text);
      break;
    case "binary":
      type = RecordType.BINARY;
      payload = bytesOf(record.data);
      break;
    case "close": {
      type = RecordType.CLOSE;
      if (record.code == null) {
        if (record.reason) throw new RangeError("a CLOSE without a code has no reason");
        payload = new Uint8Array(0);
        break;
      }
      if (!validCloseCode(record.code)) throw new RangeError(`invalid websocket close code ${record.code}`);
      const reason = utf8.encode(record.reason ?? "");
      if (reason.length > MAX_CLOSE_REASON) {
        throw new RangeError(`websocket close reason over ${MAX_CLOSE_REASON} bytes`);
      }
      payload = new Uint8Array(2 + reason.length);
      new DataView(payload.buffer).setUint16(0, record.code);
      payload.set(reason, 2);
      break;
    }
    default:
      throw new TypeError(`unknown record type ${record.type}`);
  }
  const out = new Uint8Array(PREFIX_SIZE + payload.length);
  out.set(encodePrefix(type, payload.length));
  out.set(payload, PREFIX_SIZE);
  return out;
}

/** Reassembles one direction's records. feed()/end() throw RecordError; then it is unusable. */
export class RecordDecoder {
  constructor(maxMessage = MAX_MESSAGE) {
    this.maxMessage = maxMessage;
    this.closed = null; // the CLOSE record, once received
    this._chunks = []; // unread bytes, in order
    this._size = 0;
    this._need = null; // {type, length} of the record being assembled
  }

  /** Bytes held for an incomplete record. */
  get buffered() {
    return this._size;
  }

  feed(data) {
    const bytes = bytesOf(data);
    if (bytes.length) {
      this._chunks.push(bytes);
      this._size += bytes.length;
    }
    const out = [];
    for (;;) {
      if (this._need === null) {
        if (this.closed && this._size) throw new RecordError("websocket record after close");
        if (this._size < PREFIX_SIZE) return out;
        const prefix = this._take(PREFIX_SIZE);
        const type = prefix[0];
        const length = new DataView(prefix.buffer, prefix.byteOffset).getUint32(1);
        if (!KNOWN.has(type)) {
          throw new RecordError(`unknown websocket record type 0x${type.toString(16).padStart(2, "0")}`);
        }
        if (length > this.maxMessage) {
          throw new RecordError(`websocket message of ${length} bytes exceeds ${this.maxMessage}`);
        }
        if (type === RecordType.CLOSE && length > 2 + MAX_CLOSE_REASON) {
          throw new RecordError(`websocket close reason over ${MAX_CLOSE_REASON} bytes`);
        }
        this._need = { type, length };
      }
      if (this._size < this._need.length) return out;
      const { type, length } = this._need;
      this._need = null;
      out.push(this._record(type, this._take(length)));
    }
  }

  /** The first `n` buffered bytes, removed from the buffer (a fresh copy unless one chunk holds them). */
  _take(n) {
    this._size -= n;
    const first = this._chunks[0];
    if (first && first.length >= n) {
      if (first.length === n) this._chunks.shift();
      else this._chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const chunk = this._chunks[0];
      const step = Math.min(chunk.length, n - at);
      out.set(chunk.subarray(0, step), at);
      at += step;
      if (step === chunk.length) this._chunks.shift();
      else this._chunks[0] = chunk.subarray(step);
    }
    return out;
  }

  _record(type, payload) {
    if (type === RecordType.TEXT) {
      try {
        return { type: "text", text: strictUtf8.decode(payload) };
      } catch {
        throw new RecordError("websocket text is not valid UTF-8");
      }
    }
    if (type === RecordType.BINARY) return { type: "binary", data: payload };
    if (payload.length === 0) {
      this.closed = { type: "close" };
      return this.closed;
    }
    if (payload.length === 1) throw new RecordError("websocket close payload of 1 byte");
    const code = (payload[0] << 8) | payload[1];
    if (!validCloseCode(code)) throw new RecordError(`invalid websocket close code ${code}`);
    let reason;
    try {
      reason = strictUtf8.decode(payload.subarray(2));
    } catch {
      throw new RecordError("websocket close reason is not valid UTF-8");
    }
    this.closed = { type: "close", code, reason };
    return this.closed;
  }

  /** The direction ended (FINAL): it must end after a CLOSE, between records. */
  end() {
    if (this._need !== null || this._size) throw new RecordError("websocket stream ended inside a record");
    if (!this.closed) throw new RecordError("websocket stream ended without a close record");
  }
}
