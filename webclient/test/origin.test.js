import assert from "node:assert/strict";
import { test } from "node:test";

import { isLocalAddress, parseHost } from "../origin.js";

test("parseHost: <device>--<service> in the first label", () => {
  assert.deepEqual(parseHost("test-pi--camera.localhost"), { device: "test-pi", service: "camera" });
  assert.deepEqual(parseHost("Camera-Pi--HA.example.net"), { device: "camera-pi", service: "ha" });
  for (const bad of ["signal.example.net", "pi--.x", "--cam.x", "pi--ca--m.x", "-pi--cam.x", "pi--cam-.x",
    `${"a".repeat(41)}--cam.x`, `${"a".repeat(40)}--${"b".repeat(22)}.x`, "c-0123456789abcdef--cam.x"]) {
    assert.equal(parseHost(bad), null, bad);
  }
  assert.deepEqual(parseHost(`${"a".repeat(40)}--${"b".repeat(21)}.x`), { device: "a".repeat(40), service: "b".repeat(21) });
});

test("isLocalAddress", () => {
  for (const a of ["127.0.0.1", "10.1.2.3", "192.168.50.10", "172.16.0.1", "172.31.9.9", "169.254.1.1",
    "::1", "fd12:3456::1", "fe80::1", "0f1e2d3c-uuid.local"]) assert.ok(isLocalAddress(a), a);
  for (const a of ["203.0.113.10", "172.32.0.1", "8.8.8.8", "2001:db8::1", ""]) assert.ok(!isLocalAddress(a), a);
});
