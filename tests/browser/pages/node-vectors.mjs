/**
 * Run the shared client vectors against sidecar-client.js in Node:
 *   node tests/browser/pages/node-vectors.mjs <sidecar-client.js> <client-vectors.json>
 * Prints `[{name, ok, error}]` as JSON on stdout; exits 1 if any failed.
 */

import { readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";
import { vectorTests } from "./client-vectors.mjs";

const [clientPath, vectorsPath] = process.argv.slice(2);
const mod = await import(pathToFileURL(clientPath).href);
const vectors = JSON.parse(await readFile(vectorsPath, "utf8"));
const results = [];
for (const [name, test] of Object.entries(vectorTests(vectors))) {
  try {
    await test(mod);
    results.push({ name, ok: true, error: null });
  } catch (err) {
    results.push({ name, ok: false, error: String(err?.stack ?? err) });
  }
}
process.stdout.write(JSON.stringify(results) + "\n");
process.exitCode = results.every((r) => r.ok) ? 0 : 1;
