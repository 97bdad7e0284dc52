import { useEffect, useMemo, useRef, useState } from "react";
import { Link, useParams, useSearchParams } from "react-router";
import { useVirtualizer } from "@tanstack/react-virtual";
import { api, ok, type Schemas } from "../api/client";
import { useSession } from "../app/Root";
import { ErrorBox, Labels, Loading, useLoad } from "../app/ui";
import { addFilter, describeFilter, FILTER_KEYS, filtersToParams, negatable, parseFilters, removeFilter, type Filter, type FilterKey } from "../lib/filters";
import { selects, type Selector } from "../lib/selector";
import { DROP_REASONS, dropWords, VERDICTS } from "../lib/words";

type Flow = Schemas["FlowRecord"];
type Peer = Schemas["Peer"];

/** At most this many rows are kept; older ones fall off the bottom. */
export const MAX_ROWS = 10_000;
const PAGE = 1000;
const ROW_HEIGHT = 30;

const COLUMNS = ["time", "source", "destination", "protocol", "verdict", "reason", "node", "cluster", "service", "flags", "bytes"] as const;
type Column = (typeof COLUMNS)[number];
const DEFAULT_COLUMNS: Column[] = ["time", "source", "destination", "protocol", "verdict", "reason", "node"];

const CHOICES: Partial<Record<FilterKey, readonly string[]>> = {
  verdict: VERDICTS,
  drop_reason: DROP_REASONS,
  protocol: ["tcp", "udp", "icmp"],
  since: ["5m", "1h", "24h", "7d"],
};

/** The identity of a flow record for dropping duplicates when a stream is reopened. */
const flowKey = (f: Flow) => JSON.stringify(f);

function peerText(p: Peer): string {
  const who = p.endpoint ?? (Object.keys(p.labels ?? {}).length ? Object.entries(p.labels).map(([k, v]) => `${k}=${v}`).join(",") : `identity ${p.identity}`);
  return `${who} ${p.ip}${p.port ? `:${p.port}` : ""}`;
}

export function Flows() {
  const { tenant = "" } = useParams();
  const [search, setSearch] = useSearchParams();
  const filters = useMemo(() => parseFilters(search), [search]);
  const query = filtersToParams(filters).toString();
  const [columns, setColumns] = useState<Column[]>(DEFAULT_COLUMNS);
  const [rows, setRows] = useState<Flow[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [state, setState] = useState<{ loading: boolean; error?: unknown }>({ loading: true });
  const [follow, setFollow] = useState(false);
  const [selected, setSelected] = useState<Flow | null>(null);

  const setFilters = (f: Filter[]) => setSearch(filtersToParams(f), { replace: false });

  const load = async (after: string | null) => {
    setState({ loading: true });
    try {
      const page = ok(
        await api.GET("/v1/tenants/{tenant}/flows", {
          params: { path: { tenant } },
          querySerializer: () => {
            const q = filtersToParams(filters);
            q.set("limit", String(PAGE));
            if (after) q.set("cursor", after);
            return q.toString();
          },
        }),
      );
      setRows((r) => (after ? [...r, ...page.items] : page.items).slice(0, MAX_ROWS));
      setCursor(page.next_cursor ?? null);
      setState({ loading: false });
    } catch (error) {
      setState({ loading: false, error });
    }
  };

  useEffect(() => {
    setFollow(false);
    setRows([]);
    void load(null);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [tenant, query]);

  return (
    <div className="flows-page">
      <h1>Flows</h1>
      <FilterBar filters={filters} onChange={setFilters} />
      <div className="toolbar">
        <FollowControl tenant={tenant} query={query} follow={follow} setFollow={setFollow} onFlows={(fresh) => setRows((r) => [...fresh, ...r].slice(0, MAX_ROWS))} onStart={() => (setRows([]), setCursor(null))} />
        <details className="columns">
          <summary>Columns</summary>
          {COLUMNS.map((c) => (
            <label key={c}>
              <input
                type="checkbox"
                checked={columns.includes(c)}
                onChange={(e) => setColumns(e.target.checked ? COLUMNS.filter((x) => x === c || columns.includes(x)) : columns.filter((x) => x !== c))}
              />
              {c}
            </label>
          ))}
        </details>
        <span className="muted" data-testid="row-count">
          {rows.length.toLocaleString()} flows
        </span>
      </div>
      {state.error ? <ErrorBox error={state.error} retry={() => load(null)} /> : null}
      {rows.length === 0 && state.loading ? (
        <Loading what="flows" />
      ) : rows.length === 0 && !state.error ? (
        <div className="state empty">No flows match these filters.</div>
      ) : (
        <FlowTable rows={rows} columns={columns} onSelect={setSelected} selected={selected} />
      )}
      <div className="toolbar">
        {cursor && !follow && rows.length < MAX_ROWS && (
          <button onClick={() => load(cursor)} disabled={state.loading} data-testid="older">
            {state.loading ? "Loading…" : "Older"}
          </button>
        )}
      </div>
      {selected && <FlowPanel tenant={tenant} flow={selected} onClose={() => setSelected(null)} onPair={(f) => setFilters(f)} />}
    </div>
  );
}

function FilterBar({ filters, onChange }: { filters: Filter[]; onChange: (f: Filter[]) => void }) {
  const [key, setKey] = useState<FilterKey>("verdict");
  const [not, setNot] = useState(false);
  const [value, setValue] = useState("");
  const choices = CHOICES[key];
  const add = () => {
    if (!value) return;
    onChange(addFilter(filters, { key, not: not && negatable(key), value }));
    setValue("");
  };
  return (
    <div className="filterbar">
      <form
        onSubmit={(e) => {
          e.preventDefault();
          add();
        }}
      >
        <select aria-label="Filter" value={key} onChange={(e) => (setKey(e.target.value as FilterKey), setValue(""))}>
          {FILTER_KEYS.map((k) => (
            <option key={k} value={k}>
              {k.replace(/_/g, " ")}
            </option>
          ))}
        </select>
        {negatable(key) && (
          <label>
            <input type="checkbox" checked={not} onChange={(e) => setNot(e.target.checked)} /> not
          </label>
        )}
        {choices ? (
          <select aria-label="Value" value={value} onChange={(e) => setValue(e.target.value)}>
            <option value="">choose…</option>
            {choices.map((c) => (
              <option key={c} value={c}>
                {c}
              </option>
            ))}
          </select>
        ) : (
          <input aria-label="Value" value={value} onChange={(e) => setValue(e.target.value)} placeholder={key.includes("label") ? "app=web" : ""} />
        )}
        <button type="submit">Add filter</button>
      </form>
      <div className="chips">
        {filters.map((f) => (
          <span key={`${f.not}${f.key}${f.value}`} className="chip filter" data-filter={`${f.not ? "not_" : ""}${f.key}=${f.value}`}>
            {describeFilter(f)}{" "}
            <button className="link" aria-label={`remove ${describeFilter(f)}`} onClick={() => onChange(removeFilter(filters, f))}>
              ×
            </button>
          </span>
        ))}
        {filters.length > 0 && (
          <button className="link" onClick={() => onChange([])}>
            clear all
          </button>
        )}
      </div>
    </div>
  );
}

function FollowControl({ tenant, query, follow, setFollow, onFlows, onStart }: { tenant: string; query: string; follow: boolean; setFollow: (b: boolean) => void; onFlows: (f: Flow[]) => void; onStart: () => void }) {
  const [paused, setPaused] = useState(false);
  const [skipped, setSkipped] = useState(0);
  const [status, setStatus] = useState("");
  const held = useRef<Flow[]>([]);
  const pausedRef = useRef(paused);
  pausedRef.current = paused;
  const sink = useRef(onFlows);
  sink.current = onFlows;

  useEffect(() => {
    if (!follow) return;
    let es: EventSource | null = null;
    let newest: string | null = null;
    const seen = new Set<string>();
    let closed = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let pending: Flow[] = [];
    let flush: ReturnType<typeof setTimeout> | undefined;
    const deliver = () => {
      flush = undefined;
      const batch = pending.reverse();
      pending = [];
      if (pausedRef.current) held.current = [...batch, ...held.current].slice(0, MAX_ROWS);
      else sink.current(batch);
    };
    const open = () => {
      const q = new URLSearchParams(query);
      if (newest) q.set("since", newest);
      else q.set("last", "100");
      es = new EventSource(`/v1/tenants/${encodeURIComponent(tenant)}/flows/stream?${q}`);
      setStatus("following");
      es.addEventListener("flow", (ev) => {
        const f = JSON.parse((ev as MessageEvent).data) as Flow;
        const k = flowKey(f);
        if (seen.has(k)) return;
        seen.add(k);
        if (seen.size > 50_000) seen.clear();
        if (!newest || f.time > newest) newest = f.time;
        pending.push(f);
        if (!flush) flush = setTimeout(deliver, 100);
      });
      es.addEventListener("skipped", (ev) => {
        const n = (JSON.parse((ev as MessageEvent).data) as { skipped: number | null }).skipped;
        setSkipped((s) => s + (n ?? 1));
      });
      // No event ids: the browser's own reconnect would replay `last`. Reopen from the
      // newest time seen instead, and drop what was already shown.
      es.onerror = () => {
        es?.close();
        if (closed) return;
        setStatus("reconnecting…");
        timer = setTimeout(open, 1000);
      };
    };
    open();
    return () => {
      closed = true;
      es?.close();
      clearTimeout(timer);
      clearTimeout(flush);
      setStatus("");
    };
  }, [follow, tenant, query]);

  return (
    <span className="follow">
      <button
        onClick={() => {
          // The stream starts with the newest 100 stored flows: start from them alone.
          if (!follow) onStart();
          setFollow(!follow);
          setPaused(false);
          setSkipped(0);
        }}
        className={follow ? "active" : ""}
        data-testid="follow"
      >
        {follow ? "Stop following" : "Follow"}
      </button>
      {follow && (
        <button
          className="secondary"
          onClick={() => {
            if (paused) {
              sink.current(held.current);
              held.current = [];
            }
            setPaused(!paused);
          }}
        >
          {paused ? `Resume (${held.current.length} waiting)` : "Pause"}
        </button>
      )}
      {status && <span className="muted">{status}</span>}
      {skipped > 0 && <span className="chip bad">{skipped} flows skipped</span>}
    </span>
  );
}

const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3, hour12: false });

function cell(f: Flow, c: Column) {
  switch (c) {
    case "time":
      return TIME.format(new Date(f.time));
    case "source":
      return peerText(f.source);
    case "destination":
      return peerText(f.destination);
    case "protocol":
      // An L7 record: the request or query the proxy judged, and its answer.
      if (f.l7?.http) return `${f.l7.http.method} ${f.l7.http.url} → ${f.l7.http.code}`;
      if (f.l7?.dns) {
        const d = f.l7.dns;
        return `DNS ${d.query} ${d.qtypes.join(",")} → ${d.rcode === 0 ? d.ips.join(", ") || "no address" : `rcode ${d.rcode}`}`;
      }
      return f.protocol;
    case "verdict":
      return <span className={`verdict ${f.verdict}`}>{f.verdict}</span>;
    case "reason":
      return dropWords(f.drop_reason);
    case "node":
      return f.node;
    case "cluster":
      return f.cluster;
    case "service":
      return f.service ?? "";
    case "flags":
      return f.tcp_flags.join(",");
    case "bytes":
      return `${f.bytes} B / ${f.packets} pkt × ${f.count}`;
  }
}

function FlowTable({ rows, columns, onSelect, selected }: { rows: Flow[]; columns: Column[]; onSelect: (f: Flow) => void; selected: Flow | null }) {
  const parent = useRef<HTMLDivElement>(null);
  // No flushSync in scroll events: React batches the re-render instead of blocking the event.
  const v = useVirtualizer({ count: rows.length, getScrollElement: () => parent.current, estimateSize: () => ROW_HEIGHT, overscan: 10, useFlushSync: false });
  const template = columns.map((c) => (c === "source" || c === "destination" ? "minmax(180px, 2fr)" : c === "reason" ? "minmax(160px, 1.5fr)" : "minmax(70px, 1fr)")).join(" ");
  return (
    <div className="flow-table" role="table">
      <div className="flow-row head" role="row" style={{ gridTemplateColumns: template }}>
        {columns.map((c) => (
          <div key={c} role="columnheader">
            {c}
          </div>
        ))}
      </div>
      <div ref={parent} className="flow-scroll" data-testid="flow-scroll">
        <div style={{ height: v.getTotalSize(), position: "relative" }}>
          {v.getVirtualItems().map((item) => {
            const f = rows[item.index];
            return (
              <div
                key={item.key}
                role="row"
                className={`flow-row ${f.verdict} ${f === selected ? "selected" : ""}`}
                data-verdict={f.verdict}
                style={{ gridTemplateColumns: template, transform: `translateY(${item.start}px)`, height: ROW_HEIGHT }}
                onClick={() => onSelect(f)}
              >
                {columns.map((c) => (
                  <div key={c} role="cell" className={`c-${c}`}>
                    {cell(f, c)}
                  </div>
                ))}
              </div>
            );
          })}
        </div>
      </div>
    </div>
  );
}

function FlowPanel({ tenant, flow, onClose, onPair }: { tenant: string; flow: Flow; onClose: () => void; onPair: (f: Filter[]) => void }) {
  const { fail } = useSession();
  const policies = useLoad(async () => {
    try {
      return ok(await api.GET("/v1/tenants/{tenant}/policies", { params: { path: { tenant }, query: { limit: 1000 } } })).items;
    } catch (e) {
      fail(e);
      throw e;
    }
  }, [tenant]);
  const selecting = (policies.data ?? []).filter((p) => p.specs.some((s) => selects((s as { endpointSelector?: Selector }).endpointSelector, flow.destination.labels as Record<string, unknown>)));
  return (
    <aside className="side-panel" aria-label="Flow">
      <button className="link close" onClick={onClose}>
        close ×
      </button>
      <h2>
        <span className={`verdict ${flow.verdict}`}>{flow.verdict}</span> {flow.drop_reason && <span>— {dropWords(flow.drop_reason)}</span>}
      </h2>
      {(["source", "destination"] as const).map((side) => (
        <div key={side}>
          <h3>{side}</h3>
          <div>{peerText(flow[side])}</div>
          <div>identity {flow[side].identity}</div>
          <Labels labels={flow[side].labels as Record<string, unknown>} />
        </div>
      ))}
      <div className="buttons">
        <button
          onClick={() =>
            onPair([
              { key: "from_identity", not: false, value: String(flow.source.identity) },
              { key: "to_identity", not: false, value: String(flow.destination.identity) },
            ])
          }
        >
          Only this pair
        </button>
      </div>
      <h3>Policies selecting the destination</h3>
      {policies.loading && !policies.data ? (
        <Loading what="policies" />
      ) : selecting.length === 0 ? (
        <div className="muted">None: default allow for it.</div>
      ) : (
        <ul>
          {selecting.map((p) => (
            <li key={p.id}>
              <Link to={`/t/${tenant}/policies/${encodeURIComponent(p.name)}`}>{p.name}</Link>
            </li>
          ))}
        </ul>
      )}
      <h3>JSON</h3>
      <pre className="json">{JSON.stringify(flow, null, 2)}</pre>
    </aside>
  );
}
