// Pure pieces of the console's forms: the server's `errors[].field` paths placed at the
// inputs, labels as text, the service form ⇄ `ServiceInput`, and `Retry-After`.
import type { Schemas } from "../api/client";

export type FieldError = { field: string; message: string };

/**
 * The messages for the input at `path` (`backends[1].port`): errors on exactly that field,
 * and — with `within` — on anything inside it (`frontends` shows `frontends[0].vip` too).
 */
export function errorsAt(errors: FieldError[], path: string, within = false): string[] {
  return errors
    .filter((e) => e.field === path || (within && (e.field.startsWith(`${path}.`) || e.field.startsWith(`${path}[`))))
    .map((e) => e.message);
}

/** Errors no input of the form shows (`known` are the paths the form has inputs for). */
export function unplaced(errors: FieldError[], known: string[]): FieldError[] {
  return errors.filter((e) => !known.includes(e.field));
}

/** `app=web, tier=front` → `{app: "web", tier: "front"}`; a pair without `=` is an error. */
export function parseLabels(text: string): { labels: Record<string, string>; error?: string } {
  const labels: Record<string, string> = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const i = part.indexOf("=");
    if (i <= 0) return { labels, error: `"${part}" is not key=value` };
    labels[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return { labels };
}

export function formatLabels(labels: Record<string, unknown> | undefined): string {
  return Object.entries(labels ?? {})
    .map(([k, v]) => `${k}=${String(v)}`)
    .join(", ");
}

type Backend = Schemas["Backend"];
type Frontend = Schemas["Frontend"];

/** The service form's state: numbers kept as the person typed them. */
export interface ServiceForm {
  name: string;
  labels: string;
  algorithm: Schemas["Algorithm"];
  affinity: boolean;
  affinityTimeout: string;
  frontends: { vip: string; port: string; protocol: Frontend["protocol"] }[];
  backends: { address: string; port: string; weight: string; state: NonNullable<Backend["state"]> }[];
}

export function emptyService(): ServiceForm {
  return {
    name: "",
    labels: "",
    algorithm: "maglev",
    affinity: false,
    affinityTimeout: "10800",
    frontends: [{ vip: "", port: "80", protocol: "TCP" }],
    backends: [{ address: "", port: "8080", weight: "1", state: "active" }],
  };
}

export function serviceToForm(s: Schemas["Service"]): ServiceForm {
  return {
    name: s.name,
    labels: formatLabels(s.labels),
    algorithm: s.algorithm,
    affinity: !!s.session_affinity,
    affinityTimeout: String(s.session_affinity?.timeout_seconds ?? 10800),
    frontends: s.frontends.map((f) => ({ vip: f.vip, port: String(f.port), protocol: f.protocol })),
    backends: s.backends.map((b) => ({ address: b.address, port: String(b.port), weight: String(b.weight ?? 1), state: b.state ?? "active" })),
  };
}

/** A number field as JSON: an integer when it is one, else the text (the server names the field). */
function num(text: string): number {
  const t = text.trim();
  return /^-?\d+$/.test(t) ? Number(t) : (t as unknown as number);
}

/**
 * The request body, or the errors found before any request (labels that are not
 * key=value). Ranges and addresses are the server's to check: its errors come back at the field.
 */
export function formToInput(f: ServiceForm): { input?: Schemas["ServiceInput"]; errors: FieldError[] } {
  const { labels, error } = parseLabels(f.labels);
  if (error) return { errors: [{ field: "labels", message: error }] };
  return {
    errors: [],
    input: {
      name: f.name.trim(),
      labels,
      algorithm: f.algorithm,
      session_affinity: f.affinity ? { timeout_seconds: num(f.affinityTimeout) } : null,
      frontends: f.frontends.map((x) => ({ vip: x.vip.trim(), port: num(x.port), protocol: x.protocol })),
      backends: f.backends.map((b) => ({ address: b.address.trim(), port: num(b.port), weight: num(b.weight), state: b.state })),
    },
  };
}

/** `Retry-After` (seconds or an HTTP date) in ms, at least 1 s, at most 5 min; 60 s if unreadable. */
export function retryAfterMs(header: string | null, now: number = Date.now()): number {
  const clamp = (ms: number) => Math.min(300_000, Math.max(1000, ms));
  if (!header) return 60_000;
  const t = header.trim();
  if (/^\d+$/.test(t)) return clamp(Number(t) * 1000);
  const at = Date.parse(t);
  return Number.isNaN(at) ? 60_000 : clamp(at - now);
}

const RANK = { viewer: 0, editor: 1, admin: 2, owner: 3 } as const;
export type Role = keyof typeof RANK;
export const ROLES = Object.keys(RANK) as Role[];

/** The roles `mine` may hand out: none above its own. */
export function grantable(mine: Role | undefined): Role[] {
  if (!mine) return [];
  return ROLES.filter((r) => RANK[r] <= RANK[mine]);
}

/** Top-level differences of an audit entry's before and after, for its diff view. */
export function diffKeys(before: Record<string, unknown> | null | undefined, after: Record<string, unknown> | null | undefined) {
  const keys = [...new Set([...Object.keys(before ?? {}), ...Object.keys(after ?? {})])].sort();
  return keys
    .map((k) => {
      const b = before?.[k];
      const a = after?.[k];
      const bs = b === undefined ? undefined : JSON.stringify(b);
      const as = a === undefined ? undefined : JSON.stringify(a);
      return { key: k, before: bs, after: as, changed: bs !== as };
    })
    .filter((d) => d.changed);
}
