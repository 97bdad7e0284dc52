import { useState, type FormEvent } from "react";
import { useParams } from "react-router";
import { api, ok, type Schemas } from "../api/client";
import { useClusterChoice } from "../app/cluster";
import { useRole, useSession } from "../app/Root";
import { Chip, Labels, States, useInterval, useLoad } from "../app/ui";
import { ago } from "../lib/words";

type Node = Schemas["Node"];

export function Nodes() {
  const { tenant = "" } = useParams();
  const { can } = useRole(tenant);
  const { cluster, picker } = useClusterChoice(tenant);
  const nodes = useLoad(async () => {
    if (!cluster) return undefined;
    return ok(
      await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/nodes", {
        params: { path: { tenant, cluster }, query: { limit: 1000 } },
      }),
    ).items;
  }, [tenant, cluster]);
  const settings = useLoad(async () => {
    if (!cluster) return undefined;
    return ok(await api.GET("/v1/tenants/{tenant}/clusters/{cluster}", { params: { path: { tenant, cluster } } }));
  }, [tenant, cluster]);
  const [adding, setAdding] = useState(false);
  const [open, setOpen] = useState<string | null>(null);

  return (
    <div>
      <h1>Nodes</h1>
      <div className="toolbar">
        {picker}
        {can("admin") && cluster && (
          <button onClick={() => setAdding(true)} data-testid="add-node">
            Add a node
          </button>
        )}
      </div>
      {settings.data && <Routing mode={settings.data.routing.mode ?? "tunnel"} />}
      {adding && (
        <AddNode tenant={tenant} cluster={cluster} known={nodes.data ?? []} onDone={() => setAdding(false)} onNode={nodes.reload} />
      )}
      <States what="nodes" {...nodes} data={nodes.data} empty={<>No nodes in {cluster || "this cluster"} yet.</>}>
        {(list) => (
          <table className="nodes">
            <thead>
              <tr>
                <th>Name</th>
                <th>Addresses</th>
                <th>Pod CIDRs</th>
                <th>Status</th>
                <th>Agent</th>
                <th>Kernel</th>
                <th>Applied revision</th>
                <th>Health</th>
              </tr>
            </thead>
            <tbody>
              {list.map((n) => (
                <NodeRow key={n.id} n={n} tenant={tenant} cluster={cluster} open={open === n.id} toggle={() => setOpen(open === n.id ? null : n.id)} />
              ))}
            </tbody>
          </table>
        )}
      </States>
      {can("admin") && cluster && <JoinTokens tenant={tenant} cluster={cluster} />}
    </div>
  );
}

/** How the cluster's nodes reach each other's pods (changed over REST, `weft cluster update
 * --routing`, or Terraform's `routing_mode`). */
function Routing({ mode }: { mode: Schemas["RoutingMode"] }) {
  const what =
    mode === "tunnel"
      ? "VXLAN between node addresses; the source pod's identity travels in the VNI"
      : "a route per node pod CIDR via its address; the network between nodes carries pod addresses";
  return (
    <p className="routing" data-testid="routing">
      Routing: <strong>{mode}</strong> — {what}
    </p>
  );
}

function NodeRow({ n, tenant, cluster, open, toggle }: { n: Node; tenant: string; cluster: string; open: boolean; toggle: () => void }) {
  const health = n.status.health as Record<string, unknown>;
  return (
    <>
      <tr className="clickable" onClick={toggle} data-node={n.name}>
        <td>
          <strong>{n.name}</strong>
          <div>
            <Labels labels={n.labels} />
          </div>
        </td>
        <td>{n.addresses.join(", ")}</td>
        <td>{n.pod_cidrs.join(", ") || "—"}</td>
        <td>
          <Chip ok={n.status.connected}>{n.status.connected ? "connected" : "disconnected"}</Chip>
          <div className="muted">last seen {ago(n.status.last_seen)}</div>
        </td>
        <td className="agent-version">{n.status.agent_version ?? "—"}</td>
        <td>{n.status.kernel_version ?? "—"}</td>
        <td>{n.status.applied_revision}</td>
        <td className="muted small">
          {Object.keys(health ?? {}).length === 0
            ? "—"
            : Object.entries(health)
                .slice(0, 4)
                .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : String(v)}`)
                .join(" · ")}
        </td>
      </tr>
      {open && (
        <tr>
          <td colSpan={8}>
            <NodeEndpoints tenant={tenant} cluster={cluster} node={n} />
          </td>
        </tr>
      )}
    </>
  );
}

function NodeEndpoints({ tenant, cluster, node }: { tenant: string; cluster: string; node: Node }) {
  const eps = useLoad(
    async () =>
      ok(await api.GET("/v1/tenants/{tenant}/endpoints", { params: { path: { tenant }, query: { cluster, limit: 1000 } } })).items.filter(
        (e) => e.node_id === node.id,
      ),
    [tenant, cluster, node.id],
  );
  return (
    <States what="endpoints" {...eps} empty="No endpoints on this node.">
      {(list) => (
        <table className="inner">
          <thead>
            <tr>
              <th>Endpoint</th>
              <th>IPv4</th>
              <th>Identity</th>
              <th>Labels</th>
              <th>State</th>
            </tr>
          </thead>
          <tbody>
            {list.map((e) => (
              <tr key={e.id}>
                <td>{e.name}</td>
                <td>{e.ipv4 ?? "—"}</td>
                <td>{e.identity ?? "—"}</td>
                <td>
                  <Labels labels={e.labels} />
                </td>
                <td>{e.state}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </States>
  );
}

function AddNode({ tenant, cluster, known, onDone, onNode }: { tenant: string; cluster: string; known: Node[]; onDone: () => void; onNode: () => void }) {
  const { fail } = useSession();
  const [name, setName] = useState("new-node");
  const [hours, setHours] = useState(1);
  const [uses, setUses] = useState(1);
  const [error, setError] = useState<string | null>(null);
  const [created, setCreated] = useState<Schemas["CreatedJoinToken"] | null>(null);
  const [copied, setCopied] = useState(false);
  const [joined, setJoined] = useState<string | null>(null);
  const before = new Set(known.map((n) => n.id));

  useInterval(
    async () => {
      const list = ok(
        await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/nodes", {
          params: { path: { tenant, cluster }, query: { limit: 1000 } },
        }),
      ).items;
      const fresh = list.find((n) => !before.has(n.id));
      if (fresh) {
        setJoined(fresh.name);
        onNode();
      }
    },
    created && !joined ? 5000 : null,
  );

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
      const r = ok(
        await api.POST("/v1/tenants/{tenant}/clusters/{cluster}/join-tokens", {
          params: { path: { tenant, cluster } },
          body: { name, expires_in_seconds: Math.round(hours * 3600), max_uses: uses },
        }),
      );
      setCreated(r);
    } catch (err) {
      setError(fail(err));
    }
  };

  return (
    <div className="dialog" role="dialog" aria-label="Add a node">
      <h2>Add a node to {cluster}</h2>
      {!created ? (
        <form onSubmit={submit} className="form">
          <label>
            Token name <input value={name} onChange={(e) => setName(e.target.value)} required />
          </label>
          <label>
            Valid for (hours) <input type="number" min={0.1} step={0.1} value={hours} onChange={(e) => setHours(Number(e.target.value))} />
          </label>
          <label>
            Uses (0: unlimited) <input type="number" min={0} value={uses} onChange={(e) => setUses(Number(e.target.value))} />
          </label>
          {error && <div className="field-error">{error}</div>}
          <div className="buttons">
            <button type="submit">Create join token</button>
            <button type="button" className="secondary" onClick={onDone}>
              Cancel
            </button>
          </div>
        </form>
      ) : (
        <div>
          <p>Run this on the machine, as root. The token is shown only now.</p>
          <pre className="command" data-testid="install-command">
            {created.install_command ?? `WEFT_JOIN_TOKEN=${created.token} node-agent run`}
          </pre>
          <div className="buttons">
            <button
              onClick={async () => {
                await navigator.clipboard?.writeText(created.install_command ?? created.token).catch(() => undefined);
                setCopied(true);
              }}
            >
              {copied ? "Copied" : "Copy"}
            </button>
            <button className="secondary" onClick={onDone}>
              Close
            </button>
          </div>
          <p className="muted">{joined ? <Chip ok={true}>{joined} joined</Chip> : "Waiting for the node to register (checking every 5 s)…"}</p>
        </div>
      )}
    </div>
  );
}

function JoinTokens({ tenant, cluster }: { tenant: string; cluster: string }) {
  const { fail } = useSession();
  const tokens = useLoad(
    async () =>
      ok(
        await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/join-tokens", {
          params: { path: { tenant, cluster }, query: { limit: 1000 } },
        }),
      ).items,
    [tenant, cluster],
  );
  useInterval(tokens.reload, 5000);
  const revoke = async (id: string) => {
    try {
      ok(await api.DELETE("/v1/tenants/{tenant}/clusters/{cluster}/join-tokens/{token}", { params: { path: { tenant, cluster, token: id } } }));
      tokens.reload();
    } catch (e) {
      fail(e);
    }
  };
  return (
    <section>
      <h2>Join tokens</h2>
      <States what="join tokens" {...tokens} empty="No join tokens.">
        {(list) => (
          <table>
            <thead>
              <tr>
                <th>Name</th>
                <th>Uses</th>
                <th>Expires</th>
                <th>State</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {list.map((t) => {
                const expired = Date.parse(t.expires_at) < Date.now();
                return (
                  <tr key={t.id} data-token={t.name}>
                    <td>{t.name}</td>
                    <td>
                      {t.uses}/{t.max_uses ? t.max_uses : "∞"}
                    </td>
                    <td>{new Date(t.expires_at).toLocaleString()}</td>
                    <td>{t.revoked_at ? <Chip ok={false}>revoked</Chip> : expired ? <Chip ok={false}>expired</Chip> : <Chip ok={true}>valid</Chip>}</td>
                    <td>{!t.revoked_at && !expired && <button className="secondary" onClick={() => revoke(t.id)}>Revoke</button>}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
      </States>
    </section>
  );
}

