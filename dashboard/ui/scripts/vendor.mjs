// Copies the uPlot files the page loads from node_modules/ into vendor/, which
// is committed and embedded in the pulse binary (so building Pulse needs no npm).
// Run after changing the pinned version:  npm ci && npm run vendor
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = join(root, "node_modules", "uplot");
const installed = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8")).version;
const locked = JSON.parse(readFileSync(join(root, "package-lock.json"), "utf8"))
  .packages["node_modules/uplot"].version;
if (installed !== locked) {
  console.error(`node_modules has uplot ${installed} but package-lock.json pins ${locked}: run npm ci first`);
  process.exit(1);
}
const out = join(root, "vendor");
mkdirSync(out, { recursive: true });
for (const [from, to] of [
  ["dist/uPlot.iife.min.js", "uPlot.iife.min.js"],
  ["dist/uPlot.min.css", "uPlot.min.css"],
  ["LICENSE", "uPlot.LICENSE"],
]) {
  copyFileSync(join(pkg, from), join(out, to));
  console.log(`vendor/${to} <- uplot ${installed} ${from}`);
}
