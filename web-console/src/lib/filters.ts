// Flow filters ⇄ URL: the console's URL carries exactly the query parameters of
// `GET …/flows`, so a link shows the same flows and the API call is the URL's own query.
// Repeats are OR'ed, different keys AND'ed, each key has a `not_` twin.

export const FILTER_KEYS = [
  "from_label", "to_label", "from_identity", "to_identity", "from_endpoint", "to_endpoint",
  "from_ip", "to_ip", "port", "from_port", "to_port", "protocol", "verdict", "drop_reason",
  "node", "cluster", "service", "tcp_flags", "type", "http_method", "http_path", "http_status",
  "dns_query", "since", "until",
] as const;

export type FilterKey = (typeof FILTER_KEYS)[number];

export interface Filter {
  key: FilterKey;
  not: boolean;
  value: string;
}

/** `since`/`until` have no `not_` form in any useful sense; every other key does. */
export function negatable(key: FilterKey): boolean {
  return key !== "since" && key !== "until";
}

export function parseFilters(search: string | URLSearchParams): Filter[] {
  const params = typeof search === "string" ? new URLSearchParams(search) : search;
  const out: Filter[] = [];
  for (const [name, value] of params) {
    const not = name.startsWith("not_");
    const key = (not ? name.slice(4) : name) as FilterKey;
    if ((FILTER_KEYS as readonly string[]).includes(key) && value !== "") {
      out.push({ key, not, value });
    }
  }
  return out;
}

export function filtersToParams(filters: Filter[]): URLSearchParams {
  const p = new URLSearchParams();
  for (const f of filters) p.append(f.not ? `not_${f.key}` : f.key, f.value);
  return p;
}

/** The same filters in a stable order (by key, then value), for comparisons. */
export function normalize(filters: Filter[]): Filter[] {
  const k = (f: Filter) => `${f.not ? 1 : 0}${f.key}\u0000${f.value}`;
  return [...filters].sort((a, b) => (k(a) < k(b) ? -1 : k(a) > k(b) ? 1 : 0));
}

export function addFilter(filters: Filter[], f: Filter): Filter[] {
  if (filters.some((g) => g.key === f.key && g.not === f.not && g.value === f.value)) return filters;
  return [...filters, f];
}

export function removeFilter(filters: Filter[], f: Filter): Filter[] {
  return filters.filter((g) => !(g.key === f.key && g.not === f.not && g.value === f.value));
}

export function describeFilter(f: Filter): string {
  return `${f.not ? "not " : ""}${f.key.replace(/_/g, " ")} ${f.value}`;
}
