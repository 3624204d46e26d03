// Validate AsyncAPI documents with the official parser (@asyncapi/parser).
//
// Usage: node scripts/validate-asyncapi.mjs PARSER_DIR DOCUMENT...
//   PARSER_DIR  a folder where `npm ci` installed scripts/asyncapi-parser/
//   DOCUMENT    an AsyncAPI document (JSON or YAML); `-` reads stdin
//
// Prints one JSON line per diagnostic ({document, severity, code, message,
// path}) and exits 1 when any has error severity or a document could not be
// parsed at all, 0 otherwise. Warnings, infos and hints are printed, not fatal.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const [parserDir, ...documents] = process.argv.slice(2);
if (!parserDir || documents.length === 0) {
  console.error("usage: validate-asyncapi.mjs PARSER_DIR DOCUMENT...");
  process.exit(2);
}

const require = createRequire(join(parserDir, "package.json"));
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");
const parser = new Parser();
const names = Object.fromEntries(Object.entries(DiagnosticSeverity).map(([k, v]) => [v, k.toLowerCase()]));

let failed = 0;
for (const path of documents) {
  const text = readFileSync(path === "-" ? 0 : path, "utf8");
  const { document, diagnostics } = await parser.parse(text);
  let errors = 0;
  for (const d of diagnostics) {
    if (d.severity === DiagnosticSeverity.Error) errors += 1;
    const line = {
      document: path,
      severity: names[d.severity] ?? String(d.severity),
      code: d.code,
      message: d.message,
      path: d.path.join("/"),
    };
    console.log(JSON.stringify(line));
  }
  if (errors > 0 || document === undefined) {
    failed += 1;
    console.error(`asyncapi: ${path}: ${errors} error(s), not valid AsyncAPI`);
  } else {
    console.error(`asyncapi: ${path}: valid AsyncAPI ${document.version()}`);
  }
}
process.exit(failed > 0 ? 1 : 0);
