// Connectivity: a cluster's test workloads, and probes from a workload or a node to
// ip:port (outcome, latency, which workload answered). 400/422 land at their field.
import { useState, type FormEvent } from "react";
import { useParams } from "react-router";
import { api, ApiFailure, describe, ok, type Schemas } from "../api/client";
import { useClusterChoice } from "../app/cluster";
import { useRole, useSession } from "../app/Root";
import { Chip, Labels, States, useInterval, useLoad } from "../app/ui";
import { errorsAt, parseLabels, type FieldError } from "../lib/forms";
import { ago, latency } from "../lib/words";

type Probe = Schemas["Probe"];

function problemErrors(e: unknown, fallback: string): FieldError[] {
  if (e instanceof ApiFailure && [400, 409, 422].includes(e.status))
    return e.problem.errors?.length ? e.problem.errors : [{ field: fallback, message: e.problem.detail ?? describe(e) }];
  return [];
}

function Errs({ errors, field }: { errors: FieldError[]; field: string }) {
  const m = errorsAt(errors, field, true);
  return m.length ? (
    <span className="field-error" data-field={field}>
      {m.join("; ")}
    </span>
  ) : null;
}

export function Connectivity() {
  const { tenant = "" } = useParams();
  const { can } = useRole(tenant);
  const editor = can("editor");
  const { cluster, picker } = useClusterChoice(tenant);
  const nodes = useLoad(async () => {
    if (!cluster) return [];
    return ok(await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/nodes", { params: { path: { tenant, cluster }, query: { limit: 1000 } } })).items;
  }, [tenant, cluster]);
  const workloads = useLoad(async () => {
    if (!cluster) return [];
    return ok(await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/test-workloads", { params: { path: { tenant, cluster }, query: { limit: 1000 } } })).items;
  }, [tenant, cluster]);
  const probes = useLoad(async () => {
    if (!cluster) return [];
    // Probes page oldest first: read them all (at most 10 pages) and show the newest 50.
    const items: Probe[] = [];
    let cursor: string | undefined;
    for (let i = 0; i < 10; i++) {
      const r = ok(await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/probes", { params: { path: { tenant, cluster }, query: { limit: 1000, cursor } } }));
      items.push(...r.items);
      cursor = r.next_cursor ?? undefined;
      if (!cursor) break;
    }
    return items.sort((a, b) => b.created_at.localeCompare(a.created_at)).slice(0, 50);
  }, [tenant, cluster]);
  const pending = (probes.data ?? []).some((p) => p.status === "pending") || (workloads.data ?? []).some((w) => !w.ready);
  useInterval(() => {
    probes.reload();
    workloads.reload();
  }, pending ? 1000 : null);

  return (
    <div>
      <h1>Connectivity</h1>
      <div className="toolbar">
        {picker}
      </div>
      {editor && cluster && <ProbeForm tenant={tenant} cluster={cluster} nodes={nodes.data ?? []} workloads={workloads.data ?? []} onProbe={probes.reload} />}

      <h2>Probes</h2>
      <States what="probes" {...probes} empty="No probes yet: run one above.">
        {(list) => (
          <table className="probes">
            <thead>
              <tr>
                <th>When</th>
                <th>From</th>
                <th>Target</th>
                <th>Outcome</th>
                <th>Latency</th>
                <th>Answered by</th>
                <th>Detail</th>
              </tr>
            </thead>
            <tbody>
              {list.map((p) => (
                <ProbeRow key={p.id} p={p} />
              ))}
            </tbody>
          </table>
        )}
      </States>

      <h2>Test workloads</h2>
      {editor && cluster && <WorkloadForm tenant={tenant} cluster={cluster} nodes={nodes.data ?? []} onCreated={workloads.reload} />}
      <States what="test workloads" {...workloads} empty={<>No test workloads in {cluster || "this cluster"}. Probes can still run from a node.</>}>
        {(list) => (
          <table>
            <thead>
              <tr>
                <th>Name</th>
                <th>Node</th>
                <th>Kind</th>
                <th>IP</th>
                <th>Echo ports</th>
                <th>Labels</th>
                <th>Ready</th>
                {editor && <th />}
              </tr>
            </thead>
            <tbody>
              {list.map((w) => (
                <tr key={w.name} data-workload={w.name}>
                  <td>{w.name}</td>
                  <td>{w.node}</td>
                  <td>{w.kind}</td>
                  <td>
                    <code>{w.ip}</code>
                  </td>
                  <td>{w.echo_ports.join(", ") || "—"}</td>
                  <td>
                    <Labels labels={w.labels} />
                  </td>
                  <td>
                    <Chip ok={w.ready}>{w.ready ? "ready" : "starting"}</Chip>
                  </td>
                  {editor && (
                    <td>
                      <DeleteWorkload tenant={tenant} cluster={cluster} name={w.name} onDone={workloads.reload} />
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </States>
    </div>
  );
}

function ProbeRow({ p }: { p: Probe }) {
  const r = p.result;
  return (
    <tr data-probe={p.id} data-outcome={r?.outcome ?? "pending"}>
      <td className="muted" title={p.created_at}>
        {ago(p.created_at)}
      </td>
      <td>{p.from ?? `node ${p.node}`}</td>
      <td>
        <code>{p.target}</code>
      </td>
      <td>{r ? <Chip ok={r.outcome === "connected"}>{r.outcome}</Chip> : <Chip ok={null}>pending</Chip>}</td>
      <td>{r ? latency(r.latency_us) : "—"}</td>
      <td>{r?.reply_from ?? "—"}</td>
      <td className="muted">{r?.detail || ""}</td>
    </tr>
  );
}

function ProbeForm({ tenant, cluster, nodes, workloads, onProbe }: { tenant: string; cluster: string; nodes: Schemas["Node"][]; workloads: Schemas["TestWorkload"][]; onProbe: () => void }) {
  const { fail } = useSession();
  const [from, setFrom] = useState("");
  const [node, setNode] = useState("");
  const [target, setTarget] = useState("");
  const [timeout, setTimeoutMs] = useState("2000");
  const [errors, setErrors] = useState<FieldError[]>([]);
  const [probe, setProbe] = useState<Probe | null>(null);
  const [busy, setBusy] = useState(false);

  // Follows the probe just made until the node reports it.
  useInterval(
    async () => {
      if (!probe) return;
      try {
        const p = ok(await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/probes/{probe}", { params: { path: { tenant, cluster, probe: probe.id } } }));
        setProbe(p);
        if (p.status === "done") onProbe();
      } catch (e) {
        fail(e);
      }
    },
    probe && probe.status === "pending" ? 500 : null,
  );

  const run = async (e: FormEvent) => {
    e.preventDefault();
    setErrors([]);
    setProbe(null);
    setBusy(true);
    try {
      const body: Schemas["ProbeInput"] = {
        from: from.trim() || null,
        node: node.trim() || null,
        target: target.trim(),
        timeout_ms: /^\d+$/.test(timeout.trim()) ? Number(timeout) : (timeout as unknown as number),
      };
      const p = ok(await api.POST("/v1/tenants/{tenant}/clusters/{cluster}/probes", { params: { path: { tenant, cluster } }, body }));
      setProbe(p);
      onProbe();
    } catch (err) {
      const errs = problemErrors(err, "target");
      if (errs.length) setErrors(errs);
      else fail(err);
    } finally {
      setBusy(false);
    }
  };
  const r = probe?.result;
  return (
    <section className="card probe-form">
      <h3>Run a probe</h3>
      <form onSubmit={run} className="form inline" aria-label="Run a probe">
        <label>
          From workload
          <input aria-label="From workload" list="weft-workloads" value={from} onChange={(e) => setFrom(e.target.value)} placeholder="(none: the node itself)" />
          <Errs errors={errors} field="from" />
        </label>
        <label>
          Node
          <input aria-label="Node" list="weft-nodes" value={node} onChange={(e) => setNode(e.target.value)} placeholder={from ? "(the workload's)" : "demo-n1"} />
          <Errs errors={errors} field="node" />
        </label>
        <label>
          Target ip:port
          <input aria-label="Target" value={target} onChange={(e) => setTarget(e.target.value)} placeholder="10.0.2.10:8080" required />
          <Errs errors={errors} field="target" />
        </label>
        <label>
          Timeout (ms)
          <input aria-label="Timeout" value={timeout} onChange={(e) => setTimeoutMs(e.target.value)} size={6} />
          <Errs errors={errors} field="timeout_ms" />
        </label>
        <button type="submit" disabled={busy} data-testid="run-probe">
          Run probe
        </button>
        <datalist id="weft-workloads">
          {workloads.map((w) => (
            <option key={w.name} value={w.name} />
          ))}
        </datalist>
        <datalist id="weft-nodes">
          {nodes.map((n) => (
            <option key={n.id} value={n.name} />
          ))}
        </datalist>
      </form>
      {errorsAt(errors, "body").length > 0 && <div className="field-error">{errorsAt(errors, "body").join("; ")}</div>}
      {probe && (
        <div className={`message ${r ? (r.outcome === "connected" ? "ok" : "bad") : ""}`} role="status" data-testid="probe-result">
          {r ? (
            <>
              {probe.from ?? `node ${probe.node}`} → {probe.target}: <strong>{r.outcome}</strong> in {latency(r.latency_us)}
              {r.reply_from ? `, answered by ${r.reply_from}` : ""}
              {r.detail ? ` (${r.detail})` : ""}
            </>
          ) : (
            <>Waiting for {probe.node} to run the probe…</>
          )}
        </div>
      )}
    </section>
  );
}

function WorkloadForm({ tenant, cluster, nodes, onCreated }: { tenant: string; cluster: string; nodes: Schemas["Node"][]; onCreated: () => void }) {
  const { fail } = useSession();
  const [open, setOpen] = useState(false);
  const [name, setName] = useState("echo-a");
  const [node, setNode] = useState("");
  const [kind, setKind] = useState<Schemas["WorkloadKind"]>("pod");
  const [labels, setLabels] = useState("app=echo");
  const [ports, setPorts] = useState("8080");
  const [errors, setErrors] = useState<FieldError[]>([]);
  if (!open)
    return (
      <button className="secondary" onClick={() => setOpen(true)}>
        New test workload
      </button>
    );
  const create = async (e: FormEvent) => {
    e.preventDefault();
    setErrors([]);
    const l = parseLabels(labels);
    if (l.error) return setErrors([{ field: "labels", message: l.error }]);
    try {
      ok(
        await api.POST("/v1/tenants/{tenant}/clusters/{cluster}/test-workloads", {
          params: { path: { tenant, cluster } },
          body: {
            name,
            node: node || nodes[0]?.name || "",
            kind,
            labels: l.labels,
            echo_ports: ports
              .split(",")
              .map((p) => p.trim())
              .filter(Boolean)
              .map((p) => (/^\d+$/.test(p) ? Number(p) : (p as unknown as number))),
          },
        }),
      );
      setOpen(false);
      onCreated();
    } catch (err) {
      const errs = problemErrors(err, "name");
      if (errs.length) setErrors(errs);
      else fail(err);
    }
  };
  return (
    <form onSubmit={create} className="form inline" aria-label="New test workload">
      <label>
        Name <input aria-label="Workload name" value={name} onChange={(e) => setName(e.target.value)} required />
        <Errs errors={errors} field="name" />
      </label>
      <label>
        Node
        <select aria-label="Workload node" value={node || nodes[0]?.name || ""} onChange={(e) => setNode(e.target.value)}>
          {nodes.map((n) => (
            <option key={n.id}>{n.name}</option>
          ))}
        </select>
        <Errs errors={errors} field="node" />
      </label>
      <label>
        Kind
        <select aria-label="Kind" value={kind} onChange={(e) => setKind(e.target.value as Schemas["WorkloadKind"])}>
          <option value="pod">pod</option>
          <option value="world">world</option>
        </select>
      </label>
      <label>
        Labels <input aria-label="Workload labels" value={labels} onChange={(e) => setLabels(e.target.value)} />
        <Errs errors={errors} field="labels" />
      </label>
      <label>
        Echo ports <input aria-label="Echo ports" value={ports} onChange={(e) => setPorts(e.target.value)} size={10} />
        <Errs errors={errors} field="echo_ports" />
      </label>
      <button type="submit">Create</button>
      <button type="button" className="secondary" onClick={() => setOpen(false)}>
        Cancel
      </button>
    </form>
  );
}

function DeleteWorkload({ tenant, cluster, name, onDone }: { tenant: string; cluster: string; name: string; onDone: () => void }) {
  const { fail } = useSession();
  return (
    <button
      className="secondary"
      onClick={async () => {
        try {
          ok(await api.DELETE("/v1/tenants/{tenant}/clusters/{cluster}/test-workloads/{workload}", { params: { path: { tenant, cluster, workload: name } } }));
        } catch (e) {
          fail(e);
        }
        onDone();
      }}
    >
      Delete
    </button>
  );
}
