import { useCallback, useEffect, useRef, useState, type ReactNode } from "react";
import { describe } from "../api/client";

/** Loads on mount and whenever `deps` change; `reload` loads again. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]) {
  const [state, setState] = useState<{ data?: T; error?: unknown; loading: boolean }>({ loading: true });
  const seq = useRef(0);
  const run = useCallback(() => {
    const n = ++seq.current;
    setState((s) => ({ ...s, loading: true }));
    load().then(
      (data) => n === seq.current && setState({ data, loading: false }),
      (error) => n === seq.current && setState((s) => ({ data: s.data, error, loading: false })),
    );
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  useEffect(() => {
    run();
  }, [run]);
  return { ...state, reload: run };
}

/** Calls `fn` every `ms` while mounted. */
export function useInterval(fn: () => void, ms: number | null) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    if (ms === null) return;
    const id = setInterval(() => saved.current(), ms);
    return () => clearInterval(id);
  }, [ms]);
}

export function Loading({ what }: { what: string }) {
  return <div className="state loading">Loading {what}…</div>;
}

export function Empty({ children }: { children: ReactNode }) {
  return <div className="state empty">{children}</div>;
}

export function ErrorBox({ error, retry }: { error: unknown; retry?: () => void }) {
  return (
    <div className="state error" role="alert">
      {describe(error)} {retry && <button onClick={retry}>Retry</button>}
    </div>
  );
}

/** Loading, error and empty states around a list. */
export function States<T>({
  what,
  data,
  error,
  loading,
  reload,
  empty,
  children,
}: {
  what: string;
  data?: T[];
  error?: unknown;
  loading: boolean;
  reload: () => void;
  empty: ReactNode;
  children: (items: T[]) => ReactNode;
}) {
  if (error && !data) return <ErrorBox error={error} retry={reload} />;
  if (!data) return loading ? <Loading what={what} /> : null;
  return (
    <>
      {error ? <ErrorBox error={error} retry={reload} /> : null}
      {data.length === 0 ? <Empty>{empty}</Empty> : children(data)}
    </>
  );
}

export function Chip({ ok, children }: { ok: boolean | null; children: ReactNode }) {
  return <span className={`chip ${ok === null ? "" : ok ? "ok" : "bad"}`}>{children}</span>;
}

export function Labels({ labels }: { labels: Record<string, unknown> | undefined }) {
  const entries = Object.entries(labels ?? {});
  if (entries.length === 0) return <span className="muted">—</span>;
  return (
    <span className="labels">
      {entries.map(([k, v]) => (
        <code key={k} className="label">
          {k}={String(v)}
        </code>
      ))}
    </span>
  );
}

/** A policy's `status.conditions`: accepted fields Weft does not enforce (traffic they need is dropped). */
export function Conditions({ conditions, compact }: { conditions?: { type: string; field: string; reason: string }[] | null; compact?: boolean }) {
  const list = conditions ?? [];
  if (list.length === 0) return null;
  if (compact)
    return (
      <span className="chip warn" title={list.map((c) => `${c.field}: ${c.reason}`).join("\n")} data-testid="conditions-chip">
        ⚠ {list.length} not enforced
      </span>
    );
  return (
    <div className="message warn" role="status" data-testid="conditions">
      <strong>Not enforced</strong> — accepted, but Weft drops the traffic these fields would need (fail closed):
      <ul>
        {list.map((c) => (
          <li key={c.field}>
            {c.type} <code>{c.field}</code>: {c.reason}
          </li>
        ))}
      </ul>
    </div>
  );
}
