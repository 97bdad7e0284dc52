// Drop reasons and verdicts in words, as a person reads them.
import type { Schemas } from "../api/client";

export type DropReason = Schemas["DropReason"];
export type Verdict = Schemas["Verdict"];

const DROP_WORDS: Record<DropReason, string> = {
  POLICY_DENIED: "no policy allows this",
  DENY_RULE: "a deny rule matched",
  NO_BACKEND: "the service has no active backend",
  CT_FULL: "the connection table is full",
  INVALID_PACKET: "the packet is malformed",
  FRAGMENT: "IP fragments are not handled",
  UNSUPPORTED_L3: "a network protocol the datapath does not handle",
  INTERNAL: "an internal datapath error",
  UNKNOWN_ENDPOINT: "the endpoint is unknown to this node",
  SPOOFED_SOURCE: "the source address is not the sending endpoint's",
  UNSUPPORTED_RULE: "a rule Weft accepts but does not enforce yet (fail closed)",
  UNKNOWN: "an unknown reason",
};

export const DROP_REASONS = Object.keys(DROP_WORDS) as DropReason[];
export const VERDICTS: Verdict[] = ["FORWARDED", "DROPPED", "REDIRECTED", "TRANSLATED", "ERROR"];

export function dropWords(reason: DropReason | null | undefined): string {
  if (!reason) return "";
  return DROP_WORDS[reason] ?? reason.toLowerCase().replace(/_/g, " ");
}

/** "2 min ago", "just now", "3 h ago", "5 d ago". */
export function ago(iso: string | null | undefined, now: number = Date.now()): string {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 10) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** A probe's latency: "850 µs", "4.9 ms". */
export function latency(us: number): string {
  return us >= 1000 ? `${(us / 1000).toFixed(1)} ms` : `${us} µs`;
}
