import { useState } from "react";
import { Link, useParams } from "react-router";
import { api, ok, describe, ApiFailure } from "../api/client";
import { useRole } from "../app/Root";
import { Chip, Conditions, Labels, States, useLoad } from "../app/ui";

export function Policies() {
  const { tenant = "" } = useParams();
  const { can } = useRole(tenant);
  const [importing, setImporting] = useState(false);
  const list = useLoad(
    async () => ok(await api.GET("/v1/tenants/{tenant}/policies", { params: { path: { tenant }, query: { limit: 1000 } } })).items,
    [tenant],
  );
  return (
    <div>
      <h1>Policies</h1>
      {can("editor") && (
        <div className="toolbar">
          <Link className="button" to={`/t/${tenant}/policies/new`} data-testid="new-policy">
            New policy
          </Link>
          <button className="secondary" onClick={() => setImporting(true)}>
            Import CiliumNetworkPolicy YAML
          </button>
        </div>
      )}
      {importing && <Import tenant={tenant} onDone={() => (setImporting(false), list.reload())} />}
      <States what="policies" {...list} empty="No policies: every endpoint allows all traffic.">
        {(items) => (
          <table>
            <thead>
              <tr>
                <th>Name</th>
                <th>Realized</th>
                <th>Labels</th>
                <th>Clusters</th>
                <th>Description</th>
              </tr>
            </thead>
            <tbody>
              {items.map((p) => (
                <tr key={p.id} data-policy={p.name}>
                  <td>
                    <Link to={`/t/${tenant}/policies/${encodeURIComponent(p.name)}`}>{p.name}</Link>
                  </td>
                  <td>
                    <Chip ok={p.status.realized_nodes >= p.status.total_nodes}>
                      {p.status.realized_nodes}/{p.status.total_nodes}
                    </Chip>{" "}
                    <Conditions conditions={p.status.conditions} compact />
                  </td>
                  <td>
                    <Labels labels={p.labels} />
                  </td>
                  <td>{p.clusters?.join(", ") ?? "all"}</td>
                  <td className="muted">{p.description}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </States>
    </div>
  );
}

function Import({ tenant, onDone }: { tenant: string; onDone: () => void }) {
  const [text, setText] = useState("");
  const [errors, setErrors] = useState<string[]>([]);
  const [done, setDone] = useState<string | null>(null);
  const submit = async () => {
    setErrors([]);
    try {
      const r = ok(
        await api.POST("/v1/tenants/{tenant}/policies/import", {
          params: { path: { tenant } },
          body: text,
          bodySerializer: (b: string) => b,
          headers: { "Content-Type": "application/yaml" },
        }),
      );
      setDone(`created ${r.created.join(", ") || "none"}; updated ${r.updated.join(", ") || "none"}`);
    } catch (e) {
      if (e instanceof ApiFailure && e.problem.errors?.length) setErrors(e.problem.errors.map((x) => `${x.field}: ${x.message}`));
      else setErrors([describe(e)]);
    }
  };
  return (
    <div className="dialog" role="dialog" aria-label="Import">
      <h2>Import CiliumNetworkPolicy YAML</h2>
      <textarea rows={14} value={text} onChange={(e) => setText(e.target.value)} placeholder="apiVersion: cilium.io/v2&#10;kind: CiliumNetworkPolicy&#10;…" />
      {errors.length > 0 && (
        <ul className="errors">
          {errors.map((e) => (
            <li key={e}>{e}</li>
          ))}
        </ul>
      )}
      {done && <p>{done}</p>}
      <div className="buttons">
        <button onClick={submit}>Import</button>
        <button className="secondary" onClick={onDone}>
          Close
        </button>
      </div>
    </div>
  );
}
