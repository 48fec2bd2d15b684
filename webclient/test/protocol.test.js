// webclient/protocol.js against the shared golden vectors (tests/vectors/protocol.json).
// Run: node --test webclient/test/

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  ErrorCode,
  Flag,
  Frame,
  INITIAL_WINDOW,
  LocalProtocolError,
  MAX_PAYLOAD,
  ProxyConnection,
  RemoteProtocolError,
  Role,
  decodeRequestHead,
  decodeResponseHead,
  packMessages,
  parseFrame,
  pyRepr,
  splitMessage,
} from "../protocol.js";

const VECTORS = JSON.parse(
  readFileSync(new URL("../../tests/vectors/protocol.json", import.meta.url), "utf8"),
);

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const unhex = (text) => new Uint8Array(Buffer.from(text, "hex"));
const text = (s) => new TextEncoder().encode(s);

/** An event of protocol.js in the vectors' spelling. */
function asVector(event) {
  switch (event.type) {
    case "RequestReceived":
    case "ResponseReceived":
      return { event: event.type, stream_id: event.streamId, head: event.head, end_stream: event.endStream };
    case "DataReceived":
      return { event: event.type, stream_id: event.streamId, data_hex: hex(event.data), end_stream: event.endStream };
    case "StreamReset":
      return { event: event.type, stream_id: event.streamId, code: event.code, reason: event.reason, remote: event.remote };
    case "WindowUpdated":
      return { event: event.type, stream_id: event.streamId, increment: event.increment };
    case "HeartbeatAcked":
      return { event: event.type, seq: event.seq };
    case "MessageDropped":
      return { event: event.type, reason: event.reason };
    default:
      throw new Error(`unknown event ${event.type}`);
  }
}

test("the vectors file has frame vectors and both roles' groups", () => {
  assert.ok(VECTORS.length >= 90);
  assert.ok(VECTORS.some((v) => v.role === "client"));
  assert.ok(VECTORS.some((v) => v.role === "server"));
});

const FRAMES = VECTORS.filter((x) => !x.packed); // one frame per message

for (const v of FRAMES.filter((x) => x.valid)) {
  test(`valid vector ${v.name}: fields and round trip`, () => {
    const frame = parseFrame(unhex(v.hex));
    assert.equal(frame.streamId, v.stream_id);
    assert.equal(frame.payload.length, v.length);
    assert.equal(frame.seq, v.seq);
    assert.equal(frame.flags, v.flags);
    assert.deepEqual(frame.flagNames, v.flag_names);
    assert.equal(frame.kind, v.kind);
    assert.equal(hex(frame.payload), v.payload_hex);
    assert.equal(hex(frame.encode()), v.hex);
    // Also from an ArrayBuffer, as a data channel delivers it.
    assert.equal(hex(parseFrame(unhex(v.hex).buffer).encode()), v.hex);
    if ("head" in v) {
      const decode = "method" in v.head ? decodeRequestHead : decodeResponseHead;
      assert.deepEqual(decode(frame.payload), v.head);
    }
    if ("reset_code" in v) {
      assert.deepEqual(frame.resetFields(), [v.reset_code, v.reset_reason]);
      assert.equal(hex(Frame.reset(v.stream_id, v.reset_code, v.reset_reason).encode()), v.hex);
    }
    if ("window_increment" in v) {
      assert.equal(frame.windowIncrement(), v.window_increment);
      assert.equal(hex(Frame.window(v.stream_id, v.window_increment).encode()), v.hex);
    }
  });
}

for (const v of FRAMES.filter((x) => !x.valid)) {
  test(`invalid vector ${v.name}: exact error`, () => {
    assert.throws(
      () => parseFrame(unhex(v.hex)),
      (exc) => exc instanceof RemoteProtocolError && exc.message === v.error,
    );
  });
}

const groups = new Map();
for (const v of VECTORS.filter((x) => x.group)) {
  if (!groups.has(v.group)) groups.set(v.group, []);
  groups.get(v.group).push(v);
}

for (const [name, messages] of groups) {
  test(`group ${name} (${messages[0].role})`, () => {
    messages.sort((a, b) => a.index - b.index);
    const role = messages[0].role === "client" ? Role.CLIENT : Role.SERVER;
    const conn = new ProxyConnection(role, {}, { packed: Boolean(messages[0].packed) });
    if (conn.role === Role.CLIENT) {
      // The client only accepts messages for streams it opened: open as many as needed.
      const highest = Math.max(0, ...messages.map((m) => m.stream_id ?? 0));
      for (let i = 0; i < highest; i++) {
        conn.openStream({ method: "GET", target: "/", headers: [], service: "web" });
      }
      conn.dataToSend();
    }
    for (const m of messages) {
      const events = conn.receiveMessage(unhex(m.hex)).map(asVector);
      assert.deepEqual(events, m.expect, `${m.name}: events`);
      assert.deepEqual(conn.dataToSend().map(hex), m.replies, `${m.name}: replies`);
    }
  });
}

// ----- packed messages (docs/protocol.md §1.1)

for (const v of VECTORS.filter((x) => x.packed && x.frames)) {
  test(`packed vector ${v.name}: split${v.valid ? " and packed back" : ", then the exact error"}`, () => {
    const frames = [];
    const split = () => {
      for (const f of splitMessage(unhex(v.hex))) frames.push(hex(f));
    };
    if (v.valid) {
      split();
      assert.deepEqual(packMessages(frames.map(unhex)).map(hex), [v.hex]);
    } else {
      assert.throws(split, (exc) => exc instanceof RemoteProtocolError && exc.message === v.error &&
        exc.streamId === v.error_stream_id);
    }
    assert.deepEqual(frames, v.frames);
    for (const f of frames) assert.equal(hex(parseFrame(unhex(f)).encode()), f);
  });
}

for (const v of VECTORS.filter((x) => x.packed && x.pack)) {
  test(`pack vector ${v.name}`, () => {
    const messages = packMessages(v.pack.map(unhex));
    assert.deepEqual(messages.map(hex), v.messages);
    assert.deepEqual(messages.flatMap((m) => [...splitMessage(m)].map(hex)), v.pack);
  });
}

test("a packed message's frames before the last are copies: transferring its buffer spares them", () => {
  const v = VECTORS.find((x) => x.name === "packed/head-and-1k-body");
  const message = unhex(v.hex);
  const [head, body] = splitMessage(message);
  assert.notEqual(head.buffer, message.buffer);
  assert.equal(body.buffer, message.buffer);
  assert.equal(body.byteOffset + body.byteLength, message.buffer.byteLength);
});

test("the client side of the worked example (docs/protocol.md §10)", () => {
  const conn = new ProxyConnection(Role.CLIENT);
  const head = { method: "GET", target: "/", headers: [["accept", "*/*"]], service: "web" };
  assert.equal(conn.openStream(head, { endStream: true }), 1);
  const ex = VECTORS.find((v) => v.name === "example-get-server/0");
  assert.deepEqual(conn.dataToSend().map(hex), [ex.hex]);
  const response = conn.receiveMessage(
    unhex("00000001003800000000000" + "5" + hex(text('{"status":200,"headers":[["content-type","text/plain"]]}'))),
  );
  assert.deepEqual(response.map(asVector), [
    { event: "ResponseReceived", stream_id: 1, head: { status: 200, headers: [["content-type", "text/plain"]] }, end_stream: false },
  ]);
  const body = conn.receiveMessage(unhex("00000001000200000001000" + "2" + "6869"));
  assert.deepEqual(body.map(asVector), [
    { event: "DataReceived", stream_id: 1, data_hex: "6869", end_stream: true },
  ]);
  assert.equal(conn.isOpen(1), false);
  assert.equal(conn.heartbeat(), 1);
  assert.deepEqual(conn.dataToSend().map(hex), ["000000000000000000010008"]);
  assert.equal(conn.openStream(head), 2);
  conn.resetStream(2, ErrorCode.CANCEL, "bye");
  const sent = conn.dataToSend().map(hex);
  assert.equal(sent[1], "0000000200050000000000200005627965");
  // Late messages for finished streams are dropped silently; unknown ones are reported.
  assert.deepEqual(conn.receiveMessage(unhex("00000001000200000002000" + "0" + "6869")), []);
  assert.deepEqual(conn.receiveMessage(unhex("00000009000200000000000" + "0" + "6869")).map(asVector), [
    { event: "MessageDropped", reason: "stream 9 was never opened" },
  ]);
});

test("multi-message heads round-trip: client encodes what the vectors hold, server decodes it", () => {
  const vector = groups.get("request-multi-message-headers");
  const head = vector.at(-1).expect[0].head;
  const client = new ProxyConnection(Role.CLIENT);
  client.openStream(head, { endStream: true });
  const messages = client.dataToSend();
  assert.deepEqual(messages.map(hex), vector.map((m) => m.hex));
  const server = new ProxyConnection(Role.SERVER);
  const events = messages.flatMap((m) => server.receiveMessage(m));
  assert.deepEqual(events, [{ type: "RequestReceived", streamId: 1, head, endStream: true }]);
});

test("a response head over three messages, with non-ASCII values, reaches the client whole", () => {
  const server = new ProxyConnection(Role.SERVER);
  const client = new ProxyConnection(Role.CLIENT);
  client.openStream({ method: "GET", target: "/ü?x=1", headers: [], service: "web" }, { endStream: true });
  for (const m of client.dataToSend()) server.receiveMessage(m);
  const headers = [];
  for (let i = 0; i < 4; i++) headers.push([`x-h${i}`, "é€😀".repeat(1000)]);
  headers.push(["set-cookie", "a=1"], ["set-cookie", "b=2"]);
  server.sendResponse(1, { status: 200, headers });
  server.sendBody(1, text("ok"), { endStream: true });
  const out = server.dataToSend();
  assert.ok(out.length >= 4, `expected a fragmented head, got ${out.length} messages`);
  assert.ok(out.every((m) => m.length <= 16384));
  const events = out.flatMap((m) => client.receiveMessage(m));
  assert.deepEqual(events[0], { type: "ResponseReceived", streamId: 1, head: { status: 200, headers }, endStream: false });
  assert.equal(new TextDecoder().decode(events[1].data), "ok");
  assert.equal(events[1].endStream, true);
  assert.equal(client.openStreams, 0);
  assert.equal(server.openStreams, 0);
});

test("flow control: window spent, WINDOW at a quarter, overrun resets", () => {
  const client = new ProxyConnection(Role.CLIENT);
  const server = new ProxyConnection(Role.SERVER);
  const id = client.openStream({ method: "POST", target: "/up", headers: [], service: "web" });
  client.sendBody(id, new Uint8Array(INITIAL_WINDOW));
  assert.equal(client.sendWindow(id), 0);
  assert.throws(() => client.sendBody(id, new Uint8Array(1)), LocalProtocolError);
  const sent = client.dataToSend();
  assert.equal(sent.length, 1 + Math.ceil(INITIAL_WINDOW / MAX_PAYLOAD));
  let received = 0;
  for (const m of sent) {
    for (const e of server.receiveMessage(m)) {
      if (e.type === "DataReceived") {
        received += e.data.length;
        server.consumed(id, e.data.length);
      }
    }
  }
  assert.equal(received, INITIAL_WINDOW);
  const windows = server.dataToSend();
  // A WINDOW each time 256 KiB have been consumed: 17 messages of 16372 bytes, three times.
  assert.equal(windows.length, 3);
  let granted = 0;
  for (const w of windows) {
    const [e] = client.receiveMessage(w);
    assert.equal(e.type, "WindowUpdated");
    granted += e.increment;
  }
  assert.equal(granted, 3 * 17 * MAX_PAYLOAD);
  assert.equal(client.sendWindow(id), granted);

  // A peer that ignores the window loses the stream.
  const greedy = new ProxyConnection(Role.SERVER);
  greedy.receiveMessage(sent[0]);
  let last;
  for (let seq = 1; seq <= 65; seq++) {
    const f = new Frame(id, seq, 0, new Uint8Array(MAX_PAYLOAD)).encode();
    last = greedy.receiveMessage(f);
  }
  assert.deepEqual(last.at(-1), {
    type: "StreamReset", streamId: 1, code: ErrorCode.FLOW_CONTROL_ERROR,
    reason: `stream 1 sent ${MAX_PAYLOAD} bytes with a window of ${INITIAL_WINDOW - 64 * MAX_PAYLOAD}`,
    remote: false,
  });
});

test("heartbeats are answered and counted", () => {
  const a = new ProxyConnection(Role.CLIENT);
  const b = new ProxyConnection(Role.SERVER);
  assert.equal(a.heartbeat(), 1);
  assert.equal(a.heartbeat(), 2);
  for (const m of a.dataToSend()) assert.deepEqual(b.receiveMessage(m), []);
  const acks = b.dataToSend();
  assert.deepEqual(acks.flatMap((m) => a.receiveMessage(m)), [
    { type: "HeartbeatAcked", seq: 1 },
    { type: "HeartbeatAcked", seq: 2 },
  ]);
});

test("encode: frame buffers are standalone (transferable)", () => {
  const client = new ProxyConnection(Role.CLIENT);
  client.openStream({ method: "GET", target: "/", headers: [], service: "web" }, { endStream: true });
  const [m] = client.dataToSend();
  assert.equal(m.byteOffset, 0);
  assert.equal(m.buffer.byteLength, m.length);
  assert.equal(m[11], Flag.HEADERS | Flag.END_HEADERS | Flag.FINAL);
});

test("head validation texts match Python's, including repr()", () => {
  const bad = (obj) => () => decodeRequestHead(text(JSON.stringify(obj)));
  const base = { method: "GET", target: "/", headers: [], service: "web" };
  assert.throws(bad({ ...base, method: "GE T" }), { message: "invalid method 'GE T'" });
  assert.throws(bad({ ...base, target: "/a b" }), { message: "target '/a b' is not in origin-form" });
  assert.throws(bad({ ...base, target: "it's" }), { message: `target "it's" is not in origin-form` });
  assert.throws(bad({ ...base, target: "/\n" }), { message: "target '/\\n' is not in origin-form" });
  assert.throws(bad({ ...base, service: "a--b" }), { message: "invalid service name 'a--b'" });
  assert.throws(bad({ ...base, service: 7 }), { message: "invalid service name 7" });
  assert.throws(bad({ ...base, headers: [["x", "a\r\nb"]] }), {
    message: "header 'x' has CR, LF or NUL in its value",
  });
  assert.throws(bad({ ...base, headers: [["x", "\ud800"]] }), {
    message: "header 'x' has a lone surrogate in its value",
  });
  assert.deepEqual(decodeRequestHead(text(JSON.stringify({ ...base, headers: [["x", "😀"]] }))).headers, [["x", "😀"]]);
  assert.throws(() => decodeRequestHead(text("[]")), { message: "header block must be a JSON object" });
  assert.throws(() => decodeRequestHead(text('{"method":"GET"}')), {
    message: "header block lacks headers, service, target",
  });
  assert.throws(() => decodeResponseHead(text('{"status":true,"headers":[]}')), {
    message: "invalid status True",
  });
  assert.equal(pyRepr("a\u00a0\u200bé"), "'a\\xa0\\u200bé'");
});
