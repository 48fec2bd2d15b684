import assert from "node:assert/strict";
import { test } from "node:test";

import { isLocalAddress, parseHost } from "../origin.js";

test("parseHost: <device>--<service> in the first label", () => {
  const id = "iagqyuphl22c5flgteck3lgiv7crbrex"; // 32 characters of base32 (security.md 1.1)
  assert.deepEqual(parseHost(`${id}--camera.localhost`), { device: id, service: "camera" });
  assert.deepEqual(parseHost(`${id.toUpperCase()}--HA.example.net`), { device: id, service: "ha" });
  for (const bad of ["signal.example.net", `${id}--.x`, "--cam.x", `${id}--ca--m.x`, `${id}--cam-.x`,
    "test-pi--camera.x", `${id.slice(1)}--cam.x`, `${id}a--cam.x`, `${id.slice(1)}1--cam.x`,
    `${id}--${"b".repeat(30)}.x`, "c-0123456789abcdef--cam.x"]) {
    assert.equal(parseHost(bad), null, bad);
  }
  assert.deepEqual(parseHost(`${id}--${"b".repeat(29)}.x`), { device: id, service: "b".repeat(29) });
});

test("isLocalAddress", () => {
  for (const a of ["127.0.0.1", "10.1.2.3", "192.168.50.10", "172.16.0.1", "172.31.9.9", "169.254.1.1",
    "::1", "fd12:3456::1", "fe80::1", "0f1e2d3c-uuid.local"]) assert.ok(isLocalAddress(a), a);
  for (const a of ["203.0.113.10", "172.32.0.1", "8.8.8.8", "2001:db8::1", ""]) assert.ok(!isLocalAddress(a), a);
});
