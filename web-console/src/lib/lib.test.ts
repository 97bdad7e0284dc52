import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { addFilter, filtersToParams, normalize, parseFilters, removeFilter } from "./filters";
import { lineOf, parseFieldPath, rangeOfField } from "./yamlPath";
import { ago, DROP_REASONS, dropWords } from "./words";

describe("field path → YAML range", () => {
  const yaml = [
    "name: web",
    "spec:",
    "  endpointSelector:",
    "    matchLabels: {app: web}",
    "  ingress:",
    "    - fromCIDR:",
    "        - 10.0.0.0/8",
    '        - "10.0.0.0/33"',
    "",
  ].join("\n");

  it("parses paths", () => {
    expect(parseFieldPath("spec.ingress[0].fromCIDR[1]")).toEqual(["spec", "ingress", 0, "fromCIDR", 1]);
    expect(parseFieldPath("documents[2].metadata.name")).toEqual(["documents", 2, "metadata", "name"]);
  });

  it("finds the node of a field", () => {
    const r = rangeOfField(yaml, "spec.ingress[0].fromCIDR[1]")!;
    expect(r.exact).toBe(true);
    expect(yaml.slice(r.from, r.to)).toBe('"10.0.0.0/33"');
    expect(lineOf(yaml, r.from)).toBe(8);
  });

  it("falls back to the deepest part that exists", () => {
    const r = rangeOfField(yaml, "spec.ingress[0].toPorts[0]")!;
    expect(r.exact).toBe(false);
    expect(lineOf(yaml, r.from)).toBe(6);
  });

  it("maps spec and specs[0] onto each other", () => {
    const many = "name: p\nspecs:\n  - endpointSelector: {}\n    ingress:\n      - fromCIDR: [10.0.0.0/33]\n";
    const r = rangeOfField(many, "spec.ingress[0].fromCIDR[0]")!;
    expect(many.slice(r.from, r.to)).toBe("10.0.0.0/33");
    const r2 = rangeOfField(yaml, "specs[0].ingress[0].fromCIDR[0]")!;
    expect(yaml.slice(r2.from, r2.to)).toBe("10.0.0.0/8");
  });

  it("works on JSON", () => {
    const json = JSON.stringify({ name: "p", spec: { ingress: [{ fromCIDR: ["10.0.0.0/33"] }] } }, null, 2);
    const r = rangeOfField(json, "spec.ingress[0].fromCIDR[0]")!;
    expect(json.slice(r.from, r.to)).toBe('"10.0.0.0/33"');
    expect(lineOf(json, r.from)).toBe(7);
  });

  it("gives nothing for text that does not parse", () => {
    expect(rangeOfField("a: [1, 2", "a[0]")).toBeNull();
  });
});

describe("filters ⇄ URL", () => {
  it("round-trips every key, with not_ forms and repeats", () => {
    const search = "verdict=DROPPED&verdict=ERROR&not_to_label=app%3Ddb&port=8080&since=1h&other=x";
    const f = parseFilters(search);
    expect(f).toEqual([
      { key: "verdict", not: false, value: "DROPPED" },
      { key: "verdict", not: false, value: "ERROR" },
      { key: "to_label", not: true, value: "app=db" },
      { key: "port", not: false, value: "8080" },
      { key: "since", not: false, value: "1h" },
    ]);
    expect(filtersToParams(f).toString()).toBe(
      "verdict=DROPPED&verdict=ERROR&not_to_label=app%3Ddb&port=8080&since=1h",
    );
    expect(parseFilters(filtersToParams(f))).toEqual(f);
  });

  it("adds once and removes exactly", () => {
    let f = addFilter([], { key: "node", not: false, value: "n1" });
    f = addFilter(f, { key: "node", not: false, value: "n1" });
    f = addFilter(f, { key: "node", not: true, value: "n2" });
    expect(f.length).toBe(2);
    expect(removeFilter(f, { key: "node", not: false, value: "n1" })).toEqual([{ key: "node", not: true, value: "n2" }]);
    expect(normalize(f)[0].not).toBe(false);
  });

  it("knows every filter parameter of GET …/flows", () => {
    const spec = JSON.parse(readFileSync(new URL("../../../openapi/openapi.json", import.meta.url), "utf8"));
    const params: string[] = spec.paths["/v1/tenants/{tenant}/flows"].get.parameters
      .map((p: { name: string }) => p.name)
      .filter((n: string) => !["tenant", "last", "limit", "cursor"].includes(n));
    const parsed = parseFilters(params.map((p) => `${p}=x`).join("&")).map((f) => f.key);
    expect(parsed).toEqual(params);
  });
});

describe("words", () => {
  it("says every drop reason in words", () => {
    expect(dropWords("POLICY_DENIED")).toBe("no policy allows this");
    expect(dropWords("DENY_RULE")).toBe("a deny rule matched");
    expect(dropWords("NO_BACKEND")).toBe("the service has no active backend");
    for (const r of DROP_REASONS) expect(dropWords(r)).not.toMatch(/[A-Z_]{4,}/);
    expect(dropWords(null)).toBe("");
  });

  it("covers the spec's DropReason exactly", () => {
    const spec = JSON.parse(readFileSync(new URL("../../../openapi/openapi.json", import.meta.url), "utf8"));
    expect([...DROP_REASONS].sort()).toEqual([...spec.components.schemas.DropReason.enum].sort());
  });

  it("says how long ago", () => {
    const now = Date.parse("2026-01-01T00:10:00Z");
    expect(ago("2026-01-01T00:08:00Z", now)).toBe("2 min ago");
    expect(ago("2026-01-01T00:09:58Z", now)).toBe("just now");
    expect(ago(null, now)).toBe("never");
  });
});
