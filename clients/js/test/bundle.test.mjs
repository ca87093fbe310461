// The demo page (`cdc-gateway demo`) loads the client from /client.js, a copy of dist/index.js
// committed as src/demo/client.js and compiled into the binary. It must be this build.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

const built = new URL("../dist/index.js", import.meta.url);
const bundled = new URL("../../../src/demo/client.js", import.meta.url);

test("src/demo/client.js is the current build (else: npm run demo-bundle)", () => {
  const module = readFileSync(built, "utf8");
  assert.equal(readFileSync(bundled, "utf8"), module, "run `npm run demo-bundle` in clients/js and commit src/demo/client.js");
  assert.doesNotMatch(module, /^\s*import\s/m, "the bundle is one module: it imports nothing");
});
