// webclient/link.js with packing on: one task's writes leave as one message (from a microtask),
// and a packed message that finishes a stream in its first frames still reaches the stream.
// Run: node --test webclient/test/

import assert from "node:assert/strict";
import { test } from "node:test";

import { PeerLink } from "../link.js";
import { ProxyConnection, Role, splitMessage } from "../protocol.js";

/** An open channel that records what is sent; `deliver(bytes)` plays a message from the device. */
function channelPair() {
  const listeners = {};
  const channel = {
    readyState: "open",
    bufferedAmount: 0,
    sent: [],
    addEventListener: (type, f) => {
      listeners[type] = f;
    },
    send(m) {
      this.sent.push(m);
    },
    close() {},
    deliver: (bytes) => listeners.message({ data: bytes.slice().buffer }),
  };
  return channel;
}

test("packed link: requests of one task leave in one message; a packed answer reaches its stream", async () => {
  const channel = channelPair();
  const link = new PeerLink(channel, { packed: true, heartbeatInterval: 1e6 });
  try {
    await check(link, channel);
  } finally {
    link.close();
  }
});

async function check(link, channel) {
  const got = [];
  for (const target of ["/a", "/b"]) {
    const stream = link.request({ method: "GET", target, headers: [], service: "web" }, { endStream: true });
    stream.onHead = (head, end) => got.push([stream.id, "head", head.status, end]);
    stream.onData = (data, end) => got.push([stream.id, "data", new TextDecoder().decode(data), end]);
  }
  assert.equal(channel.sent.length, 0); // not yet: at the end of this task
  await null;
  assert.equal(channel.sent.length, 1); // the first heartbeat and both requests
  assert.deepEqual([...splitMessage(channel.sent[0])].map((f) => f.length > 12), [false, true, true]);

  const device = new ProxyConnection(Role.SERVER, {}, { packed: true });
  device.receiveMessage(channel.sent[0]);
  for (const id of [1, 2]) {
    device.sendResponse(id, { status: 200, headers: [] });
    device.sendBody(id, new TextEncoder().encode(`body ${id}`), { endStream: true });
  }
  const [answer] = device.dataToSend();
  channel.deliver(answer);
  assert.deepEqual(got, [
    [1, "head", 200, false], [1, "data", "body 1", true],
    [2, "head", 200, false], [2, "data", "body 2", true],
  ]);
  assert.equal(link.streams.size, 0);
}
