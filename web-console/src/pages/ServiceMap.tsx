import { useRef, useState } from "react";
import { useNavigate, useParams, useSearchParams } from "react-router";
import { api, ok, type Schemas } from "../api/client";
import { ErrorBox, Labels, Loading, States, useInterval, useLoad } from "../app/ui";

type MapNode = Schemas["MapNode"];
type MapEdge = Schemas["MapEdge"];
type Pos = { x: number; y: number };

const W = 1100;
const H = 640;
const R = 22;

/** Where a vertex goes the first time it is seen: kinds in columns, spread vertically. */
function place(nodes: MapNode[], known: Map<string, Pos>): Map<string, Pos> {
  const col: Record<string, number> = { world: 0.1, host: 0.1, workload: 0.45, service: 0.8 };
  const byKind = new Map<string, MapNode[]>();
  for (const n of nodes) byKind.set(n.kind, [...(byKind.get(n.kind) ?? []), n]);
  const out = new Map(known);
  // Rows that fit without overlapping (a circle and its name); more vertices of a kind than
  // two columns hold spread over a grid between the outer columns.
  const rows = Math.floor((H - 40) / (2 * R + 26));
  for (const [kind, list] of byKind) {
    const cols = Math.ceil(list.length / rows);
    list.forEach((n, i) => {
      if (out.has(n.id)) return;
      if (kind === "workload" && cols > 2) {
        const c = Math.floor(i / rows);
        const inCol = Math.min(rows, list.length - c * rows);
        const x = (0.22 + (0.5 * (c + 0.5)) / cols) * W;
        const y = (((i % rows) + 1) / (inCol + 1)) * H;
        out.set(n.id, { x, y });
        return;
      }
      const x = (col[kind] ?? 0.6) * W + (kind === "workload" ? (i % 2) * 120 : 0);
      const y = ((i + 1) / (list.length + 1)) * H + (kind === "host" ? 40 : 0);
      out.set(n.id, { x, y });
    });
  }
  return out;
}

export function edgeFlowsQuery(e: MapEdge, byId: Map<string, MapNode>, since: string): URLSearchParams {
  const q = new URLSearchParams({ since });
  for (const [side, id] of [["from", e.source], ["to", e.destination]] as const) {
    const n = byId.get(id);
    if (n?.kind === "service") q.append("service", n.name);
    else if (n?.identity != null) q.append(`${side}_identity`, String(n.identity));
  }
  return q;
}

export function ServiceMapPage() {
  const { tenant = "" } = useParams();
  const [search, setSearch] = useSearchParams();
  const since = search.get("since") ?? "1h";
  const navigate = useNavigate();
  const t0 = useRef(0);
  const [drawMs, setDrawMs] = useState<number | null>(null);
  const map = useLoad(async () => {
    t0.current = performance.now();
    return ok(await api.GET("/v1/tenants/{tenant}/service-map", { params: { path: { tenant }, query: { since } } }));
  }, [tenant, since]);
  useInterval(map.reload, 10_000);
  const positions = useRef(new Map<string, Pos>());
  const [, redraw] = useState(0);
  const [drag, setDrag] = useState<string | null>(null);
  const [picked, setPicked] = useState<MapNode | null>(null);
  const svg = useRef<SVGSVGElement>(null);

  if (map.error && !map.data) return <ErrorBox error={map.error} retry={map.reload} />;
  if (!map.data) return <Loading what="the service map" />;
  const { nodes, edges } = map.data;
  positions.current = place(nodes, positions.current);
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const maxConn = Math.max(1, ...edges.map((e) => e.connections));
  if (drawMs === null && nodes.length > 0) requestAnimationFrame(() => setDrawMs(Math.round(performance.now() - t0.current)));

  const toSvg = (ev: React.PointerEvent): Pos => {
    const r = svg.current!.getBoundingClientRect();
    return { x: ((ev.clientX - r.left) / r.width) * W, y: ((ev.clientY - r.top) / r.height) * H };
  };

  return (
    <div>
      <h1>Service map</h1>
      <div className="toolbar">
        {["5m", "1h", "24h"].map((s) => (
          <button key={s} className={s === since ? "active" : "secondary"} onClick={() => setSearch({ since: s })}>
            {s}
          </button>
        ))}
        <span className="muted">
          {nodes.length} vertices, {edges.length} edges; refreshed every 10 s; drag to arrange
          {drawMs !== null && <span data-testid="map-draw-ms"> · drawn in {drawMs} ms</span>}
        </span>
      </div>
      {map.error ? <ErrorBox error={map.error} retry={map.reload} /> : null}
      {nodes.length === 0 ? (
        <div className="state empty">No traffic in the last {since}.</div>
      ) : (
        <div className="map-wrap">
          <svg
            ref={svg}
            viewBox={`0 0 ${W} ${H}`}
            className="map"
            role="img"
            aria-label="Service map"
            onPointerMove={(ev) => {
              if (!drag) return;
              positions.current.set(drag, toSvg(ev));
              redraw((n) => n + 1);
            }}
            onPointerUp={() => setDrag(null)}
            onPointerLeave={() => setDrag(null)}
          >
            <defs>
              <marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse">
                <path d="M 0 0 L 10 5 L 0 10 z" fill="#8792a2" />
              </marker>
              <marker id="arrow-red" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse">
                <path d="M 0 0 L 10 5 L 0 10 z" fill="#d1242f" />
              </marker>
            </defs>
            {edges.map((e) => {
              const a = positions.current.get(e.source);
              const b = positions.current.get(e.destination);
              if (!a || !b) return null;
              const dx = b.x - a.x;
              const dy = b.y - a.y;
              const len = Math.max(1, Math.hypot(dx, dy));
              const [x1, y1, x2, y2] = [a.x + (dx / len) * R, a.y + (dy / len) * R, b.x - (dx / len) * (R + 2), b.y - (dy / len) * (R + 2)];
              // Many edges: thinner and translucent, so the vertices stay readable.
              const dense = edges.length > 60;
              const width = (dense ? 0.8 : 1.5) + (dense ? 2.5 : 6) * (Math.log1p(e.connections) / Math.log1p(maxConn));
              const red = e.dropped > 0;
              const name = `${byId.get(e.source)?.name ?? e.source}>${byId.get(e.destination)?.name ?? e.destination}`;
              return (
                <g
                  key={`${e.source}>${e.destination}`}
                  className={`edge ${red ? "dropped" : ""}`}
                  data-edge={name}
                  onClick={() => navigate(`/t/${tenant}/flows?${edgeFlowsQuery(e, byId, since)}`)}
                >
                  <title>
                    {name}: {e.connections} flows, {e.forwarded} forwarded, {e.dropped} dropped; ports {e.ports.join(", ") || "—"}
                  </title>
                  <line x1={x1} y1={y1} x2={x2} y2={y2} stroke="transparent" strokeWidth={14} />
                  <line x1={x1} y1={y1} x2={x2} y2={y2} stroke={red ? "#d1242f" : "#8792a2"} strokeWidth={width} strokeOpacity={dense ? 0.45 : 1} markerEnd={red ? "url(#arrow-red)" : "url(#arrow)"} />
                </g>
              );
            })}
            {nodes.map((n) => {
              const p = positions.current.get(n.id)!;
              return (
                <g
                  key={n.id}
                  className={`vertex ${n.kind}`}
                  data-vertex={n.name}
                  transform={`translate(${p.x},${p.y})`}
                  onPointerDown={(ev) => {
                    (ev.target as Element).setPointerCapture?.(ev.pointerId);
                    setDrag(n.id);
                  }}
                  onClick={() => setPicked(n)}
                >
                  <circle r={R} />
                  <text y={R + 14} textAnchor="middle">
                    {n.name}
                  </text>
                  <text y={4} textAnchor="middle" className="kind">
                    {n.kind === "workload" ? (n.identity ?? "") : n.kind}
                  </text>
                </g>
              );
            })}
          </svg>
          {picked && <VertexPanel tenant={tenant} n={picked} onClose={() => setPicked(null)} />}
        </div>
      )}
    </div>
  );
}

function VertexPanel({ tenant, n, onClose }: { tenant: string; n: MapNode; onClose: () => void }) {
  const eps = useLoad(async () => {
    if (n.identity == null || n.kind !== "workload") return [];
    return ok(await api.GET("/v1/tenants/{tenant}/endpoints", { params: { path: { tenant }, query: { identity: n.identity, limit: 100 } } })).items;
  }, [tenant, n.id]);
  return (
    <aside className="side-panel" aria-label="Vertex">
      <button className="link close" onClick={onClose}>
        close ×
      </button>
      <h2>{n.name}</h2>
      <div>
        {n.kind}
        {n.identity != null && <> · identity {n.identity}</>}
      </div>
      <Labels labels={n.labels as Record<string, unknown>} />
      <h3>Endpoints</h3>
      <States what="endpoints" {...eps} empty="None.">
        {(list) => (
          <ul>
            {list.map((e) => (
              <li key={e.id}>
                {e.name} {e.ipv4}
              </li>
            ))}
          </ul>
        )}
      </States>
    </aside>
  );
}
