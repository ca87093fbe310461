// The project's JSON Schemas (schemas/ at the repository root), compiled with ajv.
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import Ajv2020 from "ajv/dist/2020.js";

export const schemaDir = join(dirname(fileURLToPath(import.meta.url)), "../../../schemas");

const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });

/** A validating function of one schema file (its errors on `.errors`). */
export function validator(file) {
  const schema = JSON.parse(readFileSync(join(schemaDir, file), "utf8"));
  return ajv.getSchema(schema.$id ?? file) ?? compile(file, schema);
}

function compile(file, schema) {
  ajv.addSchema(schema, schema.$id ?? file);
  return ajv.getSchema(schema.$id ?? file);
}

/** Every example file: { name, kind: "valid" | "invalid", schema: "client-message" | ..., value }. */
export function examples() {
  const out = [];
  for (const kind of ["valid", "invalid"]) {
    const dir = join(schemaDir, "examples", kind);
    for (const name of readdirSync(dir).filter((n) => n.endsWith(".json")).sort()) {
      out.push({
        name,
        kind,
        schema: name.split("--")[0],
        text: readFileSync(join(dir, name), "utf8"),
      });
    }
  }
  return out;
}
