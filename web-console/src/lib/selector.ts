// Does a Kubernetes label selector (a policy's endpointSelector) select these labels?
// Used to list the policies that select a flow's destination; the server decides for real.
type Expr = { key: string; operator: string; values?: string[] | null };
export type Selector = { matchLabels?: Record<string, string> | null; matchExpressions?: Expr[] | null };

/** Labels as flows carry them may have a source prefix (`k8s:app`); selectors may not. */
function get(labels: Record<string, unknown>, key: string): string | undefined {
  if (key in labels) return String(labels[key]);
  for (const [k, v] of Object.entries(labels)) if (k.split(":").pop() === key.split(":").pop()) return String(v);
  return undefined;
}

export function selects(sel: Selector | null | undefined, labels: Record<string, unknown>): boolean {
  if (!sel) return false;
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) if (get(labels, k) !== v) return false;
  for (const e of sel.matchExpressions ?? []) {
    const v = get(labels, e.key);
    const vals = e.values ?? [];
    if (e.operator === "In" && (v === undefined || !vals.includes(v))) return false;
    if (e.operator === "NotIn" && v !== undefined && vals.includes(v)) return false;
    if (e.operator === "Exists" && v === undefined) return false;
    if (e.operator === "DoesNotExist" && v !== undefined) return false;
  }
  return true;
}
