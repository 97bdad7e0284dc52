import { Link, useParams } from "react-router";
import { api, ok, type Schemas } from "../api/client";
import { Chip, ErrorBox, Loading, useLoad } from "../app/ui";

type Node = Schemas["Node"];

export function Overview() {
  const { tenant = "" } = useParams();
  const t = { path: { tenant } };
  const clusters = useLoad(async () => {
    const list = ok(await api.GET("/v1/tenants/{tenant}/clusters", { params: { ...t, query: { limit: 1000 } } }));
    const nodes = await Promise.all(
      list.items.map(async (c) =>
        ok(
          await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/nodes", {
            params: { path: { tenant, cluster: c.name }, query: { limit: 1000 } },
          }),
        ).items,
      ),
    );
    return list.items.map((c, i) => ({ cluster: c, nodes: nodes[i] }));
  }, [tenant]);
  const policies = useLoad(
    async () => ok(await api.GET("/v1/tenants/{tenant}/policies", { params: { ...t, query: { limit: 1000 } } })).items,
    [tenant],
  );
  const map = useLoad(
    async () => ok(await api.GET("/v1/tenants/{tenant}/service-map", { params: { ...t, query: { since: "1h" } } })),
    [tenant],
  );

  const newest = (nodes: Node[]) => Math.max(0, ...nodes.map((n) => n.status.applied_revision));
  const notRealized = (policies.data ?? []).filter((p) => p.status.realized_nodes < p.status.total_nodes);
  const names = new Map((map.data?.nodes ?? []).map((n) => [n.id, n]));
  const forwarded = (map.data?.edges ?? []).reduce((s, e) => s + e.forwarded, 0);
  const dropped = (map.data?.edges ?? []).reduce((s, e) => s + e.dropped, 0);
  const topDropped = [...(map.data?.edges ?? [])].filter((e) => e.dropped > 0).sort((a, b) => b.dropped - a.dropped).slice(0, 5);

  const edgeFlows = (source: string, destination: string) => {
    const q = new URLSearchParams({ verdict: "DROPPED", since: "1h" });
    for (const [side, id] of [["from", source], ["to", destination]] as const) {
      const n = names.get(id);
      if (n?.identity != null) q.append(`${side}_identity`, String(n.identity));
      else if (n?.kind === "service") q.append("service", n.name);
    }
    return `/t/${tenant}/flows?${q}`;
  };

  return (
    <div>
      <h1>Overview</h1>
      <section>
        <h2>Clusters</h2>
        {clusters.error ? <ErrorBox error={clusters.error} retry={clusters.reload} /> : null}
        {!clusters.data ? (
          <Loading what="clusters" />
        ) : clusters.data.length === 0 ? (
          <div className="state empty">No clusters yet.</div>
        ) : (
          <div className="cards">
            {clusters.data.map(({ cluster, nodes }) => {
              const connected = nodes.filter((n) => n.status.connected).length;
              const behind = nodes.filter((n) => n.status.connected && n.status.applied_revision < newest(nodes)).length;
              return (
                <div className="card" key={cluster.id} data-cluster={cluster.name}>
                  <h3>
                    <Link to={`/t/${tenant}/nodes?cluster=${encodeURIComponent(cluster.name)}`}>{cluster.name}</Link>
                  </h3>
                  <div className="big">
                    <Chip ok={nodes.length === 0 ? null : connected === nodes.length}>
                      {connected}/{nodes.length} nodes connected
                    </Chip>
                  </div>
                  <div className="muted">{behind > 0 ? `${behind} behind` : "none behind"}</div>
                </div>
              );
            })}
          </div>
        )}
      </section>
      <section>
        <h2>Policies</h2>
        {policies.error ? <ErrorBox error={policies.error} retry={policies.reload} /> : null}
        {policies.data && (
          <p>
            {policies.data.length} policies;{" "}
            {notRealized.length === 0 ? (
              <Chip ok={true}>all realized</Chip>
            ) : (
              <Chip ok={false}>
                {notRealized.length} not realized: {notRealized.map((p) => p.name).join(", ")}
              </Chip>
            )}
          </p>
        )}
      </section>
      <section>
        <h2>The last hour</h2>
        {map.error ? <ErrorBox error={map.error} retry={map.reload} /> : null}
        {!map.data ? (
          <Loading what="traffic" />
        ) : (
          <>
            <div className="cards">
              <div className="card">
                <div className="big">{forwarded.toLocaleString()}</div>
                <div className="muted">forwarded</div>
              </div>
              <div className="card">
                <div className="big bad-text">{dropped.toLocaleString()}</div>
                <div className="muted">dropped</div>
              </div>
            </div>
            <h3>Top dropped</h3>
            {topDropped.length === 0 ? (
              <div className="state empty">Nothing dropped in the last hour.</div>
            ) : (
              <table>
                <thead>
                  <tr>
                    <th>From</th>
                    <th>To</th>
                    <th>Dropped</th>
                    <th />
                  </tr>
                </thead>
                <tbody>
                  {topDropped.map((e) => (
                    <tr key={`${e.source}>${e.destination}`}>
                      <td>{names.get(e.source)?.name ?? e.source}</td>
                      <td>{names.get(e.destination)?.name ?? e.destination}</td>
                      <td>{e.dropped}</td>
                      <td>
                        <Link to={edgeFlows(e.source, e.destination)}>flows</Link>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </>
        )}
      </section>
    </div>
  );
}
