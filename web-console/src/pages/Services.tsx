import { useState } from "react";
import { useParams } from "react-router";
import { api, ok, type Schemas } from "../api/client";
import { useClusterChoice } from "../app/cluster";
import { useRole, useSession } from "../app/Root";
import { Chip, Labels, States, useInterval, useLoad } from "../app/ui";
import { ServiceForm } from "./ServiceForm";

/** A cluster's load-balanced services: frontends, backends, algorithm, affinity, realization. */
export function Services() {
  const { tenant = "" } = useParams();
  const { cluster, picker } = useClusterChoice(tenant);
  const services = useLoad(async () => {
    if (!cluster) return undefined;
    return ok(
      await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/services", {
        params: { path: { tenant, cluster }, query: { limit: 1000 } },
      }),
    ).items;
  }, [tenant, cluster]);
  // Until every service is realized on every node, check again every 2 s.
  const behind = (services.data ?? []).some((s) => s.status.realized_nodes < s.status.total_nodes);
  useInterval(services.reload, behind ? 2000 : null);
  const { can } = useRole(tenant);
  const { fail } = useSession();
  const [editing, setEditing] = useState<{ service: Schemas["Service"]; etag: string | null } | null | "new">(null);
  const edit = async (name: string) => {
    try {
      const r = await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/services/{service}", { params: { path: { tenant, cluster, service: name } } });
      setEditing({ service: ok(r), etag: r.response.headers.get("ETag") });
    } catch (e) {
      fail(e);
    }
  };
  return (
    <div>
      <h1>Services</h1>
      <div className="toolbar">
        {picker}
        {can("editor") && cluster && (
          <button onClick={() => setEditing("new")} data-testid="new-service">
            New service
          </button>
        )}
      </div>
      {editing && (
        <ServiceForm
          key={editing === "new" ? "new" : editing.service.id}
          tenant={tenant}
          cluster={cluster}
          existing={editing === "new" ? null : editing}
          onClose={() => setEditing(null)}
          onSaved={services.reload}
        />
      )}
      <States what="services" {...services} data={services.data} empty={<>No services in {cluster || "this cluster"}.</>}>
        {(list) => (
          <table>
            <thead>
              <tr>
                <th>Name</th>
                <th>Frontends</th>
                <th>Backends (weight, state)</th>
                <th>Algorithm</th>
                <th>Affinity</th>
                <th>Realized</th>
                {can("editor") && <th />}
              </tr>
            </thead>
            <tbody>
              {list.map((s) => (
                <tr key={s.id} data-service={s.name}>
                  <td>
                    <strong>{s.name}</strong>
                    <div>
                      <Labels labels={s.labels} />
                    </div>
                  </td>
                  <td>
                    {s.frontends.map((f) => (
                      <div key={`${f.vip}:${f.port}/${f.protocol}`}>
                        <code>
                          {f.vip}:{f.port}/{f.protocol}
                        </code>
                      </div>
                    ))}
                  </td>
                  <td>
                    {s.backends.map((b) => (
                      <div key={`${b.address}:${b.port}`} className="backend">
                        <code>
                          {b.address}:{b.port}
                        </code>{" "}
                        <span className="muted">
                          weight {b.weight ?? 1}
                          {(b.weight ?? 1) === 0 ? " (draining)" : ""}, {b.state ?? "active"}
                        </span>
                      </div>
                    ))}
                  </td>
                  <td>{s.algorithm}</td>
                  <td>{s.session_affinity ? `client IP, ${s.session_affinity.timeout_seconds} s` : "none"}</td>
                  <td>
                    <Chip ok={s.status.realized_nodes >= s.status.total_nodes}>
                      {s.status.realized_nodes}/{s.status.total_nodes}
                    </Chip>
                  </td>
                  {can("editor") && (
                    <td>
                      <button className="secondary" onClick={() => edit(s.name)}>
                        Edit
                      </button>
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
