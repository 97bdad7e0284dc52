// The console's size budget, checked after every build (gzip sizes; fails at twice the
// target, as the project's timed checks do, and warns past the target):
//   initial JS + CSS (what index.html loads) ≤ 200 KB, the editor chunk ≤ 200 KB,
//   all of dist/ ≤ 1 MB. Writes dist/.budget.json for the e2e perf report.
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { gzipSync } from "node:zlib";

const dist = new URL("../dist/", import.meta.url).pathname;
const KB = 1024;
const files = [];
(function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (!name.startsWith(".")) files.push(p);
  }
})(dist);
const gz = (p) => gzipSync(readFileSync(p), { level: 9 }).length;
const rel = (p) => relative(dist, p);

const index = readFileSync(join(dist, "index.html"), "utf8");
const initialNames = [...index.matchAll(/(?:src|href)="\/console\/(assets\/[^"]+\.(?:js|css))"/g)].map((m) => m[1]);
// Chunks the entry imports statically are initial too (modulepreload links are in index.html).
const initial = initialNames.map((n) => join(dist, n));
const editor = files.filter((p) => /PolicyEditor-.*\.js$/.test(p));
const sum = (list) => list.reduce((s, p) => s + gz(p), 0);
const total = files.reduce((s, p) => s + statSync(p).size, 0);

const report = {
  initial_gzip_bytes: sum(initial),
  initial_files: initial.map(rel),
  editor_gzip_bytes: sum(editor),
  editor_files: editor.map(rel),
  dist_bytes: total,
  targets: { initial_gzip_bytes: 200 * KB, editor_gzip_bytes: 200 * KB, dist_bytes: 1024 * KB },
};
writeFileSync(join(dist, ".budget.json"), JSON.stringify(report, null, 2));
let failed = false;
for (const [k, target] of Object.entries(report.targets)) {
  const v = report[k];
  const line = `${k}: ${(v / KB).toFixed(1)} KB (target ${(target / KB).toFixed(0)} KB)`;
  if (v > 2 * target) {
    console.error(`budget: FAIL ${line}`);
    failed = true;
  } else if (v > target) console.warn(`budget: over target ${line}`);
  else console.log(`budget: ok ${line}`);
}
if (editor.length === 0) {
  console.error("budget: FAIL no PolicyEditor chunk: the editor must load lazily");
  failed = true;
}
process.exit(failed ? 1 : 0);
