// manager.html preloads exactly the modules manager.js imports, directly or not.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

const dir = new URL("../", import.meta.url);
const read = (name) => readFileSync(new URL(name, dir), "utf8");

function imports(name, seen = new Set()) {
  for (const [, dep] of read(name).matchAll(/^import .* from "\.\/([\w-]+\.js)";$/gm)) {
    if (!seen.has(dep)) {
      seen.add(dep);
      imports(dep, seen);
    }
  }
  return seen;
}

test("every module of the manager's graph is preloaded, and nothing else", () => {
  const preloaded = [...read("manager.html").matchAll(/<link rel="modulepreload" href="\/__peerproxy\/([\w-]+\.js)">/g)]
    .map((m) => m[1]);
  assert.equal(new Set(preloaded).size, preloaded.length);
  assert.deepEqual(new Set(preloaded), imports("manager.js"));
});
