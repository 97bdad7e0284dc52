import { describe, expect, it } from "vitest";
import { latency } from "./words";
import { diffKeys, emptyService, errorsAt, formToInput, grantable, parseLabels, retryAfterMs, serviceToForm, unplaced } from "./forms";

describe("server errors at the field", () => {
  const errors = [
    { field: "backends[1].port", message: "must be 1 to 65535" },
    { field: "frontends", message: "a frontend with this VIP, port and protocol already belongs to another service" },
    { field: "frontends[0].vip", message: "0.0.0.0 is unspecified" },
    { field: "spec.x", message: "elsewhere" },
  ];
  it("exact path", () => {
    expect(errorsAt(errors, "backends[1].port")).toEqual(["must be 1 to 65535"]);
    expect(errorsAt(errors, "backends[0].port")).toEqual([]);
    expect(errorsAt(errors, "backends[1]")).toEqual([]);
  });
  it("within a path, without matching a longer name", () => {
    expect(errorsAt(errors, "frontends", true)).toHaveLength(2);
    expect(errorsAt([{ field: "frontendsx", message: "m" }], "frontends", true)).toEqual([]);
  });
  it("what no input shows is listed", () => {
    expect(unplaced(errors, ["backends[1].port", "frontends", "frontends[0].vip"])).toEqual([{ field: "spec.x", message: "elsewhere" }]);
  });
});

describe("labels as text", () => {
  it("parses key=value pairs", () => {
    expect(parseLabels("app=web, tier = front ,")).toEqual({ labels: { app: "web", tier: "front" } });
    expect(parseLabels("")).toEqual({ labels: {} });
    expect(parseLabels("app").error).toMatch(/not key=value/);
  });
});

describe("service form ⇄ ServiceInput", () => {
  it("round-trips a service and keeps bad numbers for the server to name", () => {
    const s = {
      id: "1", cluster_id: "2", name: "web", labels: { app: "web" }, algorithm: "maglev" as const,
      frontends: [{ vip: "10.96.0.10", port: 80, protocol: "TCP" as const }],
      backends: [{ address: "10.0.1.5", port: 8080, weight: 0, state: "active" as const }, { address: "10.0.2.10", port: 8080, weight: 1 }],
      session_affinity: { timeout_seconds: 60 }, created_at: "", updated_at: "", revision: 3, status: { realized_nodes: 1, total_nodes: 2 },
    };
    const f = serviceToForm(s);
    expect(f.backends[0].weight).toBe("0");
    expect(f.backends[1]).toEqual({ address: "10.0.2.10", port: "8080", weight: "1", state: "active" });
    const { input } = formToInput(f);
    expect(input).toEqual({
      name: "web", labels: { app: "web" }, algorithm: "maglev", session_affinity: { timeout_seconds: 60 },
      frontends: [{ vip: "10.96.0.10", port: 80, protocol: "TCP" }],
      backends: [{ address: "10.0.1.5", port: 8080, weight: 0, state: "active" }, { address: "10.0.2.10", port: 8080, weight: 1, state: "active" }],
    });
    const bad = { ...emptyService(), name: "x", backends: [{ address: "10.0.0.1", port: "eighty", weight: "1", state: "active" as const }] };
    expect(formToInput(bad).input?.backends?.[0].port).toBe("eighty");
    expect(formToInput({ ...bad, labels: "nope" }).errors).toEqual([{ field: "labels", message: '"nope" is not key=value' }]);
  });
});

describe("Retry-After", () => {
  it("seconds, an HTTP date, bounds", () => {
    expect(retryAfterMs("5")).toBe(5000);
    expect(retryAfterMs("0")).toBe(1000);
    expect(retryAfterMs("100000")).toBe(300_000);
    expect(retryAfterMs(null)).toBe(60_000);
    expect(retryAfterMs("soon")).toBe(60_000);
    const now = Date.parse("2026-12-04T15:00:00Z");
    expect(retryAfterMs("Fri, 04 Dec 2026 15:00:12 GMT", now)).toBe(12_000);
  });
});

describe("roles", () => {
  it("no role above one's own", () => {
    expect(grantable("admin")).toEqual(["viewer", "editor", "admin"]);
    expect(grantable("owner")).toEqual(["viewer", "editor", "admin", "owner"]);
    expect(grantable(undefined)).toEqual([]);
  });
});

describe("audit diff", () => {
  it("only changed top-level fields", () => {
    expect(diffKeys({ a: 1, b: [1], c: "x" }, { a: 1, b: [2], d: true })).toEqual([
      { key: "b", before: "[1]", after: "[2]", changed: true },
      { key: "c", before: '"x"', after: undefined, changed: true },
      { key: "d", before: undefined, after: "true", changed: true },
    ]);
    expect(diffKeys(null, { a: 1 })).toEqual([{ key: "a", before: undefined, after: "1", changed: true }]);
  });
});

describe("probe latency in words", () => {
  it("µs below a millisecond, ms with one decimal above", () => {
    expect(latency(850)).toBe("850 µs");
    expect(latency(4900)).toBe("4.9 ms");
    expect(latency(1000)).toBe("1.0 ms");
  });
});
