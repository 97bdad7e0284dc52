import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

describe("generated API types", () => {
  it("src/api/schema.d.ts is current with openapi/openapi.json (else: npm run gen)", () => {
    const out = join(mkdtempSync(join(tmpdir(), "weft-schema-")), "schema.d.ts");
    execFileSync(
      process.execPath,
      ["node_modules/openapi-typescript/bin/cli.js", "../openapi/openapi.json", "-o", out],
      { stdio: "pipe" },
    );
    expect(readFileSync("src/api/schema.d.ts", "utf8")).toBe(readFileSync(out, "utf8"));
  }, 60_000);
});
