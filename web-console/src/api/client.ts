// The one API client: openapi-fetch over the generated `paths`, same origin, the session
// cookie going with every call. A middleware adds the CSRF header to writes and sends the
// browser to sign in on a 401; nothing else wraps fetch.
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema";
import { retryAfterMs } from "../lib/forms";

export type Schemas = components["schemas"];
export type Problem = Schemas["Problem"];

export function cookie(name: string): string | undefined {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return undefined;
}

/** Where the browser goes to sign in, coming back to where it is now. */
export function loginUrl(): string {
  const here = window.location.pathname + window.location.search;
  return `/auth/login?return_to=${encodeURIComponent(here)}`;
}

/** A 429 being waited out: what the console tells the person (null when none is). */
export interface RateLimitWait {
  /** When the request is sent again (ms since the epoch). */
  until: number;
  seconds: number;
  /** Which try this wait precedes (1-based), of MAX_TRIES. */
  attempt: number;
}
type Listener = (w: RateLimitWait | null) => void;
const listeners = new Set<Listener>();
/** Follows 429 waits; returns the unsubscribe function. */
export function onRateLimit(l: Listener): () => void {
  listeners.add(l);
  return () => void listeners.delete(l);
}
const waiting = new Set<string>();
function announce(id: string, w: RateLimitWait | null) {
  if (w) waiting.add(id);
  else waiting.delete(id);
  if (w || waiting.size === 0) listeners.forEach((l) => l(w));
}
/** Tries of one call answered 429 before the 429 is shown as a failure. */
export const MAX_TRIES = 3;

// Each request's copy, to send again after a 429 (a Request's body can be read once).
const copies = new Map<string, Request>();

const session: Middleware = {
  onRequest({ request, id }) {
    if (!["GET", "HEAD", "OPTIONS"].includes(request.method)) {
      const csrf = cookie("weft_csrf");
      if (csrf) request.headers.set("X-CSRF-Token", csrf);
    }
    copies.set(id, request.clone());
    return request;
  },
  async onResponse({ response, id }) {
    // 429: wait what Retry-After says, say so, and send the same request again.
    let attempt = 1;
    while (response.status === 429 && attempt < MAX_TRIES && copies.has(id)) {
      const ms = retryAfterMs(response.headers.get("Retry-After"));
      announce(id, { until: Date.now() + ms, seconds: Math.round(ms / 1000), attempt: attempt + 1 });
      await new Promise((r) => setTimeout(r, ms));
      attempt++;
      response = await fetch(copies.get(id)!.clone());
    }
    copies.delete(id);
    announce(id, null);
    if (response.status === 401) window.location.assign(loginUrl());
    return response;
  },
  onError({ id }) {
    copies.delete(id);
  },
};

export const api = createClient<paths>({ baseUrl: "", credentials: "same-origin" });
api.use(session);

/** A failed call, as the pages show it. */
export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly problem: Partial<Problem>,
    readonly requestId: string | null,
    readonly retryAfter: number | null,
  ) {
    super(problem.detail ?? `HTTP ${status}`);
  }
}

/** The data of an openapi-fetch result, or an ApiFailure with the problem it carried. */
export function ok<T>(r: { data?: T; error?: unknown; response: Response }): T {
  if (r.response.ok && r.data !== undefined) return r.data;
  if (r.response.ok) return undefined as T;
  const retry = r.response.headers.get("Retry-After");
  throw new ApiFailure(
    r.response.status,
    (r.error as Partial<Problem>) ?? {},
    r.response.headers.get("x-request-id"),
    retry ? Number(retry) : null,
  );
}

/** What a person reads for a failure. */
export function describe(e: unknown): string {
  if (e instanceof ApiFailure) {
    if (e.status === 403) return `Not allowed: ${e.problem.detail ?? "your role does not permit this"}`;
    if (e.status === 429) return `Too many requests: try again in ${e.retryAfter ?? 60} s`;
    if (e.status >= 500)
      return `The server failed (${e.status})${e.requestId ? `, request id ${e.requestId}` : ""}: ${e.problem.detail ?? ""}`;
    return e.problem.detail ?? e.message;
  }
  return e instanceof Error ? e.message : String(e);
}
