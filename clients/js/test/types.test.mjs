// The protocol types (src/protocol.ts) against the project's JSON Schema examples
// (schemas/examples): every valid client or server message example must type-check as a
// ClientMessage or ServerMessage, and every invalid one must be refused by the compiler,
// unless the schema refuses it for a reason TypeScript types cannot state (a pattern, a
// length, an integer), listed below with that reason.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import ts from "typescript";

import { examples, validator } from "./schemas.mjs";

const protocol = join(dirname(fileURLToPath(import.meta.url)), "../src/protocol.ts");

/** Invalid examples that the types accept, and why they cannot refuse them. */
const BEYOND_TYPES = {
  "server-message--data-entity-id-too-long.json": "maxLength",
  "server-message--data-entity-type-with-dot.json": "pattern",
  "server-message--data-payload-timestamp-not-rfc3339.json": "pattern",
  "server-message--data-topic-not-cdc.json": "pattern",
  "client-message--filter-empty-operator-object.json": "minProperties",
  "client-message--filter-empty-path-segment.json": "pattern of filter keys",
  "client-message--filter-scalar-root-subfield.json": "pattern of filter keys",
  "client-message--filter-unknown-root.json": "pattern of filter keys",
  "client-message--since-partition-not-number.json": "pattern of position keys",
  "server-message--ack-subscribe-position-bare-partition.json":
    "pattern of position keys (a Position is also what `since` sends, where bare partitions are accepted)",
};

const TYPES = { "client-message": "ClientMessage", "server-message": "ServerMessage" };

/** Type-checks every example; returns example name -> diagnostics. */
function typeCheck(cases) {
  const dir = mkdtempSync(join(tmpdir(), "cdc-gateway-types-"));
  try {
    const file = join(dir, "examples.ts");
    const lines = [`import type { ClientMessage, ServerMessage } from ${JSON.stringify(protocol)};`];
    const owner = [];
    cases.forEach((example, i) => {
      const type = TYPES[example.schema];
      const value = example.text.trim().replace(/\n/g, " ");
      // Server messages are closed shapes: a literal gets the excess-property check. The
      // gateway ignores unknown fields of client messages, so those are checked structurally.
      const declaration =
        example.schema === "server-message"
          ? `{ const e${i}: ${type} = ${value}; void e${i}; }`
          : `{ const raw${i} = ${value} as const; const e${i}: ${type} = raw${i}; void e${i}; }`;
      lines.push(declaration);
      owner[lines.length - 1] = example.name;
    });
    writeFileSync(file, lines.join("\n"));
    const program = ts.createProgram([file], {
      strict: true,
      noEmit: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ES2022,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
      allowImportingTsExtensions: true,
      types: [],
    });
    const byExample = new Map();
    for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
      const text = ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n");
      const line = diagnostic.file?.fileName === file
        ? diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start).line
        : -1;
      const name = owner[line];
      assert.ok(name, `diagnostic outside the examples: ${text}`);
      byExample.set(name, [...(byExample.get(name) ?? []), text]);
    }
    return byExample;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("every client and server message example type-checks as its schema says", () => {
  const cases = examples().filter((e) => e.schema in TYPES);
  assert.ok(cases.length > 40, "the examples are found");
  const validators = {
    "client-message": validator("client-message.schema.json"),
    "server-message": validator("server-message.schema.json"),
  };
  const diagnostics = typeCheck(cases);
  const problems = [];
  for (const example of cases) {
    // The examples are what the schemas say they are (so this test reads them right).
    const valid = validators[example.schema](JSON.parse(example.text));
    assert.equal(valid, example.kind === "valid", `${example.name} against its schema`);
    const errors = diagnostics.get(example.name);
    if (example.kind === "valid" && errors) {
      problems.push(`${example.name} is valid but the types refuse it: ${errors.join("; ")}`);
    }
    if (example.kind === "invalid" && !errors && !(example.name in BEYOND_TYPES)) {
      problems.push(`${example.name} is invalid but the types accept it`);
    }
    if (example.kind === "invalid" && errors && example.name in BEYOND_TYPES) {
      problems.push(`${example.name} is listed as beyond the types, but they refuse it: drop it from the list`);
    }
  }
  assert.deepEqual(problems, []);
});
