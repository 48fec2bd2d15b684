// webclient/wsrecords.js against the shared vectors (tests/vectors/websocket.json).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { MAX_MESSAGE, RecordDecoder, RecordError, encodeRecord } from "../wsrecords.js";

const VECTORS = JSON.parse(
  readFileSync(new URL("../../tests/vectors/websocket.json", import.meta.url), "utf8"),
);
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const unhex = (text) => new Uint8Array(Buffer.from(text, "hex"));

/** A decoded record in the vectors' spelling. */
function asVector(r) {
  if (r.type === "binary") return { type: "binary", hex: hex(r.data) };
  return r;
}

function fromVector(r) {
  return r.type === "binary" ? { type: "binary", data: unhex(r.hex) } : r;
}

function splits(data) {
  const out = [[data], [...data].map((b) => Uint8Array.of(b))];
  for (let i = 1; i < Math.min(data.length, 40); i++) out.push([data.subarray(0, i), data.subarray(i)]);
  return out;
}

function run(v, pieces) {
  const decoder = new RecordDecoder(v.max_message ?? MAX_MESSAGE);
  const records = pieces.flatMap((p) => decoder.feed(p));
  if (v.end) decoder.end();
  return records.map(asVector);
}

test("the vectors file has valid and invalid record vectors", () => {
  assert.ok(VECTORS.filter((v) => v.records).length >= 10);
  assert.ok(VECTORS.filter((v) => v.error).length >= 15);
});

for (const v of VECTORS.filter((x) => x.records)) {
  test(`valid record vector ${v.name}`, () => {
    const data = unhex(v.hex);
    for (const pieces of splits(data)) assert.deepEqual(run(v, pieces), v.records);
    const encoded = v.records.map((r) => hex(encodeRecord(fromVector(r)))).join("");
    assert.ok(v.hex.startsWith(encoded));
  });
}

for (const v of VECTORS.filter((x) => x.error)) {
  test(`invalid record vector ${v.name}: exact error`, () => {
    for (const pieces of splits(unhex(v.hex))) {
      assert.throws(() => run(v, pieces), (exc) => exc instanceof RecordError && exc.message === v.error);
    }
  });
}

test("encodeRecord refuses what may not be sent", () => {
  for (const code of [999, 1005, 1006, 1015, 5000]) {
    assert.throws(() => encodeRecord({ type: "close", code }), /invalid websocket close code/);
  }
  assert.throws(() => encodeRecord({ type: "close", code: 1000, reason: "x".repeat(124) }), /over 123 bytes/);
  assert.equal(hex(encodeRecord({ type: "close" })), "0800000000");
  assert.equal(hex(encodeRecord({ type: "binary", data: new Uint8Array([0, 255]).buffer })), "020000000200ff");
});
