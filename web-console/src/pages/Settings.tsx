// Settings of a tenant: members (invite, role, remove; no role above one's own), API tokens
// (the secret shown once), the audit log (filters in the URL, before/after diff), the tenant.
import { useState, type FormEvent } from "react";
import { NavLink, useNavigate, useParams, useSearchParams } from "react-router";
import { api, ApiFailure, describe, ok, type Schemas } from "../api/client";
import { useRole, useSession } from "../app/Root";
import { Chip, Empty, ErrorBox, Labels, Loading, States, useLoad } from "../app/ui";
import { diffKeys, errorsAt, formatLabels, grantable, parseLabels, ROLES, type FieldError, type Role } from "../lib/forms";
import { ago } from "../lib/words";

const TABS = [
  ["members", "Members", "viewer"],
  ["tokens", "API tokens", "admin"],
  ["audit", "Audit log", "admin"],
  ["tenant", "Tenant", "viewer"],
] as const;

export function Settings() {
  const { tenant = "", tab = "members" } = useParams();
  const { can } = useRole(tenant);
  const tabs = TABS.filter(([, , need]) => can(need));
  return (
    <div>
      <h1>Settings</h1>
      <nav className="tabs">
        {tabs.map(([key, label]) => (
          <NavLink key={key} to={`/t/${tenant}/settings/${key}`} className={({ isActive }) => (isActive || (key === "members" && tab === "members") ? "active" : "")}>
            {label}
          </NavLink>
        ))}
      </nav>
      {tab === "members" && <Members tenant={tenant} />}
      {tab === "tokens" && (can("admin") ? <Tokens tenant={tenant} /> : <Empty>Only admins manage API tokens.</Empty>)}
      {tab === "audit" && (can("admin") ? <Audit tenant={tenant} /> : <Empty>Only admins read the audit log.</Empty>)}
      {tab === "tenant" && <TenantSettings tenant={tenant} />}
    </div>
  );
}

function problemErrors(e: unknown, fallbackField: string): FieldError[] {
  if (e instanceof ApiFailure && [400, 409, 422].includes(e.status)) {
    return e.problem.errors?.length ? e.problem.errors : [{ field: fallbackField, message: e.problem.detail ?? describe(e) }];
  }
  return [];
}

function Members({ tenant }: { tenant: string }) {
  const { me, fail, reload: reloadMe } = useSession();
  const { role, can } = useRole(tenant);
  const admin = can("admin");
  const roles = grantable(role);
  const list = useLoad(
    async () => ok(await api.GET("/v1/tenants/{tenant}/members", { params: { path: { tenant }, query: { limit: 1000 } } })).items,
    [tenant],
  );
  const [email, setEmail] = useState("");
  const [newRole, setNewRole] = useState<Role>("viewer");
  const [errors, setErrors] = useState<FieldError[]>([]);
  const [note, setNote] = useState<string | null>(null);

  const invite = async (e: FormEvent) => {
    e.preventDefault();
    setErrors([]);
    setNote(null);
    try {
      ok(await api.POST("/v1/tenants/{tenant}/members", { params: { path: { tenant } }, body: { email, role: newRole } }));
      setNote(`Invited ${email} as ${newRole}: the invite becomes a membership at their first sign-in.`);
      setEmail("");
      list.reload();
    } catch (err) {
      const errs = problemErrors(err, "email");
      if (errs.length) setErrors(errs);
      else setNote(fail(err));
    }
  };
  const change = async (m: Schemas["Member"], r: Role) => {
    setNote(null);
    try {
      ok(await api.PATCH("/v1/tenants/{tenant}/members/{member}", { params: { path: { tenant, member: m.id } }, body: { role: r } }));
      setNote(`${m.email ?? m.name} is now ${r}.`);
      if (m.user_id && m.user_id === me.user?.id) reloadMe();
    } catch (err) {
      setNote(`${describe(err)} (${m.email} stays ${m.role})`);
      fail(err);
    }
    list.reload();
  };
  const remove = async (m: Schemas["Member"]) => {
    if (!window.confirm(`Remove ${m.email ?? m.name} from ${tenant}?`)) return;
    setNote(null);
    try {
      ok(await api.DELETE("/v1/tenants/{tenant}/members/{member}", { params: { path: { tenant, member: m.id } } }));
      setNote(`${m.email ?? m.name} was removed.`);
    } catch (err) {
      setNote(`${describe(err)} (${m.email} was not removed)`);
      fail(err);
    }
    list.reload();
  };
  const rank = (r: Role) => ROLES.indexOf(r);

  return (
    <section>
      {admin && (
        <form onSubmit={invite} className="form inline" aria-label="Invite">
          <label>
            E-mail <input aria-label="E-mail" type="email" value={email} onChange={(e) => setEmail(e.target.value)} required />
            {errorsAt(errors, "email").map((m) => (
              <span key={m} className="field-error">
                {m}
              </span>
            ))}
          </label>
          <label>
            Role{" "}
            <select aria-label="Role" value={newRole} onChange={(e) => setNewRole(e.target.value as Role)}>
              {ROLES.map((r) => (
                <option key={r} value={r} disabled={!roles.includes(r)}>
                  {r}
                </option>
              ))}
            </select>
            {errorsAt(errors, "role").map((m) => (
              <span key={m} className="field-error">
                {m}
              </span>
            ))}
          </label>
          <button type="submit">Invite</button>
        </form>
      )}
      {note && (
        <div className="message" role="status" data-testid="members-note">
          {note}
        </div>
      )}
      <States what="members" {...list} empty="No members.">
        {(items) => (
          <table>
            <thead>
              <tr>
                <th>Person</th>
                <th>Status</th>
                <th>Role</th>
                <th>Since</th>
                {admin && <th />}
              </tr>
            </thead>
            <tbody>
              {items.map((m) => {
                // No one touches a member above their own role.
                const touchable = admin && role !== undefined && rank(m.role) <= rank(role);
                return (
                  <tr key={m.id} data-member={m.email ?? m.id}>
                    <td>
                      {m.name && <strong>{m.name} </strong>}
                      {m.email}
                    </td>
                    <td>{m.status === "invited" ? <Chip ok={null}>invited</Chip> : <Chip ok={true}>active</Chip>}</td>
                    <td>
                      {admin ? (
                        <select aria-label={`Role of ${m.email}`} value={m.role} disabled={!touchable} onChange={(e) => change(m, e.target.value as Role)}>
                          {ROLES.map((r) => (
                            <option key={r} value={r} disabled={!roles.includes(r)}>
                              {r}
                            </option>
                          ))}
                        </select>
                      ) : (
                        m.role
                      )}
                    </td>
                    <td className="muted">{new Date(m.created_at).toLocaleDateString()}</td>
                    {admin && (
                      <td>
                        {touchable && (
                          <button className="secondary" onClick={() => remove(m)}>
                            {m.status === "invited" ? "Withdraw" : "Remove"}
                          </button>
                        )}
                      </td>
                    )}
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

function Tokens({ tenant }: { tenant: string }) {
  const { fail } = useSession();
  const { role } = useRole(tenant);
  const roles = grantable(role);
  const list = useLoad(
    async () => ok(await api.GET("/v1/tenants/{tenant}/api-tokens", { params: { path: { tenant }, query: { limit: 1000 } } })).items,
    [tenant],
  );
  const [name, setName] = useState("");
  const [tokenRole, setTokenRole] = useState<Role>("viewer");
  const [days, setDays] = useState("90");
  const [errors, setErrors] = useState<FieldError[]>([]);
  const [created, setCreated] = useState<Schemas["CreatedToken"] | null>(null);
  const [copied, setCopied] = useState(false);

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setErrors([]);
    setCopied(false);
    try {
      const d = days.trim();
      const r = ok(
        await api.POST("/v1/tenants/{tenant}/api-tokens", {
          params: { path: { tenant } },
          body: { name, role: tokenRole, expires_in_seconds: d === "" ? null : Math.round(Number(d) * 86400) },
        }),
      );
      setCreated(r);
      setName("");
      list.reload();
    } catch (err) {
      const errs = problemErrors(err, "name");
      if (errs.length) setErrors(errs.map((x) => (x.field === "expires_in_seconds" ? { ...x, field: "days" } : x)));
      else fail(err);
    }
  };
  const revoke = async (t: Schemas["ApiToken"]) => {
    try {
      ok(await api.DELETE("/v1/tenants/{tenant}/api-tokens/{token}", { params: { path: { tenant, token: t.id } } }));
    } catch (err) {
      fail(err);
    }
    list.reload();
  };
  const errs = (f: string) =>
    errorsAt(errors, f).map((m) => (
      <span key={m} className="field-error">
        {m}
      </span>
    ));

  return (
    <section>
      <form onSubmit={create} className="form inline" aria-label="New API token">
        <label>
          Token name <input aria-label="Token name" value={name} onChange={(e) => setName(e.target.value)} required placeholder="ci-deploy" />
          {errs("name")}
        </label>
        <label>
          Role{" "}
          <select aria-label="Token role" value={tokenRole} onChange={(e) => setTokenRole(e.target.value as Role)}>
            {ROLES.map((r) => (
              <option key={r} value={r} disabled={!roles.includes(r)}>
                {r}
              </option>
            ))}
          </select>
          {errs("role")}
        </label>
        <label>
          Expires in (days; empty: never) <input aria-label="Expires in days" value={days} onChange={(e) => setDays(e.target.value)} size={6} />
          {errs("days")}
        </label>
        <button type="submit">Create token</button>
      </form>
      {created && (
        <div className="secret" data-testid="token-secret" role="status">
          <p>
            <strong>{created.name}</strong> ({created.role}): copy the secret now. It is shown only this once; Weft keeps only its hash.
          </p>
          <pre className="command" data-testid="token-value">
            {created.token}
          </pre>
          <div className="buttons">
            <button
              onClick={async () => {
                await navigator.clipboard?.writeText(created.token).catch(() => undefined);
                setCopied(true);
              }}
            >
              {copied ? "Copied" : "Copy"}
            </button>
            <button className="secondary" onClick={() => setCreated(null)}>
              Done
            </button>
          </div>
        </div>
      )}
      <States what="API tokens" {...list} empty="No API tokens.">
        {(items) => (
          <table>
            <thead>
              <tr>
                <th>Name</th>
                <th>Role</th>
                <th>Created</th>
                <th>Expires</th>
                <th>Last used</th>
                <th>State</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {items.map((t) => {
                const expired = !!t.expires_at && Date.parse(t.expires_at) < Date.now();
                return (
                  <tr key={t.id} data-api-token={t.name}>
                    <td>{t.name}</td>
                    <td>{t.role}</td>
                    <td className="muted">{new Date(t.created_at).toLocaleString()}</td>
                    <td>{t.expires_at ? new Date(t.expires_at).toLocaleString() : "never"}</td>
                    <td className="muted">{ago(t.last_used_at)}</td>
                    <td>{t.revoked_at ? <Chip ok={false}>revoked</Chip> : expired ? <Chip ok={false}>expired</Chip> : <Chip ok={true}>valid</Chip>}</td>
                    <td>
                      {!t.revoked_at && !expired && roles.includes(t.role) && (
                        <button className="secondary" onClick={() => revoke(t)}>
                          Revoke
                        </button>
                      )}
                    </td>
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

const AUDIT_FILTERS = ["resource_kind", "action", "actor", "since", "until"] as const;

function Audit({ tenant }: { tenant: string }) {
  const [search, setSearch] = useSearchParams();
  const query = Object.fromEntries(AUDIT_FILTERS.flatMap((k) => (search.get(k) ? [[k, search.get(k)!]] : [])));
  const [open, setOpen] = useState<string | null>(null);
  const [shown, setShown] = useState(100);
  // The log pages oldest first: read every page that matches (at most 10,000 entries) and
  // show the newest first.
  const log = useLoad(async () => {
    const items: Schemas["AuditEntry"][] = [];
    let cursor: string | undefined;
    for (let i = 0; i < 10; i++) {
      const r = ok(await api.GET("/v1/tenants/{tenant}/audit-log", { params: { path: { tenant }, query: { ...query, limit: 1000, cursor } } }));
      items.push(...r.items);
      cursor = r.next_cursor ?? undefined;
      if (!cursor) break;
    }
    return { items: items.reverse(), truncated: !!cursor };
  }, [tenant, search.toString()]);
  const setFilter = (k: string, v: string) => {
    const next = new URLSearchParams(search);
    if (v) next.set(k, v);
    else next.delete(k);
    setSearch(next);
  };
  return (
    <section>
      <div className="toolbar audit-filters">
        <label>
          Resource{" "}
          <select aria-label="Resource kind" value={search.get("resource_kind") ?? ""} onChange={(e) => setFilter("resource_kind", e.target.value)}>
            <option value="">any</option>
            {["cluster", "service", "policy", "api_token", "join_token", "member", "tenant", "test_workload", "probe"].map((k) => (
              <option key={k}>{k}</option>
            ))}
          </select>
        </label>
        <label>
          Action{" "}
          <select aria-label="Action" value={search.get("action") ?? ""} onChange={(e) => setFilter("action", e.target.value)}>
            <option value="">any</option>
            {["create", "update", "delete", "revoke", "import-create", "import-update"].map((k) => (
              <option key={k}>{k}</option>
            ))}
          </select>
        </label>
        <label>
          Actor <input aria-label="Actor" defaultValue={search.get("actor") ?? ""} onBlur={(e) => setFilter("actor", e.target.value.trim())} onKeyDown={(e) => e.key === "Enter" && setFilter("actor", (e.target as HTMLInputElement).value.trim())} />
        </label>
        <label>
          Since{" "}
          <input aria-label="Since" type="datetime-local" defaultValue="" onChange={(e) => setFilter("since", e.target.value ? new Date(e.target.value).toISOString() : "")} />
        </label>
        <label>
          Until{" "}
          <input aria-label="Until" type="datetime-local" defaultValue="" onChange={(e) => setFilter("until", e.target.value ? new Date(e.target.value).toISOString() : "")} />
        </label>
      </div>
      {log.data?.truncated && <div className="message bad">More than 10,000 changes match: narrow them with Since/Until.</div>}
      <States what="the audit log" {...log} data={log.data?.items} empty="No changes match.">
        {(all) => {
          const items = all.slice(0, shown);
          return (
          <>
          <table className="audit">
            <thead>
              <tr>
                <th>When</th>
                <th>Who</th>
                <th>Action</th>
                <th>Resource</th>
                <th>Request</th>
              </tr>
            </thead>
            <tbody>
              {items.map((a) => (
                <AuditRow key={a.id} a={a} open={open === a.id} toggle={() => setOpen(open === a.id ? null : a.id)} />
              ))}
            </tbody>
          </table>
          {all.length > shown && (
            <button className="secondary" onClick={() => setShown(shown + 100)}>
              Older ({all.length - shown} more)
            </button>
          )}
          </>
          );
        }}
      </States>
    </section>
  );
}

function AuditRow({ a, open, toggle }: { a: Schemas["AuditEntry"]; open: boolean; toggle: () => void }) {
  const diff = diffKeys(a.before as Record<string, unknown> | null, a.after as Record<string, unknown> | null).filter(
    (d) => !["updated_at", "revision", "status"].includes(d.key) || !a.before || !a.after,
  );
  return (
    <>
      <tr className="clickable" onClick={toggle} data-audit={`${a.action}:${a.resource_kind}:${a.resource_name}`}>
        <td title={a.at}>{new Date(a.at).toLocaleString()}</td>
        <td>
          {a.actor_name} <span className="muted">({a.actor_kind})</span>
        </td>
        <td>{a.action}</td>
        <td>
          {a.resource_kind} <strong>{a.resource_name}</strong>
        </td>
        <td className="muted small">{a.request_id}</td>
      </tr>
      {open && (
        <tr>
          <td colSpan={5}>
            {diff.length === 0 ? (
              <span className="muted">No field changed.</span>
            ) : (
              <table className="inner diff" data-testid="audit-diff">
                <thead>
                  <tr>
                    <th>Field</th>
                    <th>Before</th>
                    <th>After</th>
                  </tr>
                </thead>
                <tbody>
                  {diff.map((d) => (
                    <tr key={d.key}>
                      <td>
                        <code>{d.key}</code>
                      </td>
                      <td className="before">
                        <code>{d.before ?? "—"}</code>
                      </td>
                      <td className="after">
                        <code>{d.after ?? "—"}</code>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </td>
        </tr>
      )}
    </>
  );
}

function TenantSettings({ tenant }: { tenant: string }) {
  const { me, fail, reload: reloadMe } = useSession();
  const { can } = useRole(tenant);
  const navigate = useNavigate();
  const [etag, setEtag] = useState<string | null>(null);
  // Kept here: a save reloads the tenant, which remounts the form.
  const [message, setMessage] = useState<{ ok: boolean; text: string } | null>(null);
  const t = useLoad(async () => {
    const r = await api.GET("/v1/tenants/{tenant}", { params: { path: { tenant } } });
    setEtag(r.response.headers.get("ETag"));
    return ok(r);
  }, [tenant]);
  if (t.error && !t.data) return <ErrorBox error={t.error} retry={t.reload} />;
  if (!t.data) return <Loading what="the tenant" />;
  return (
    <TenantForm
      key={t.data.revision}
      t={t.data}
      etag={etag}
      admin={can("admin")}
      owner={can("owner")}
      message={message}
      setMessage={setMessage}
      onSaved={() => (t.reload(), reloadMe())}
      fail={fail}
      onDeleted={() => {
        // To another tenant of the person's, or to creating one.
        const next = me.tenants.find((x) => x.name !== t.data?.name && x.id !== t.data?.id);
        reloadMe();
        navigate(next ? `/t/${next.name}` : "/");
      }}
    />
  );
}

function TenantForm({
  t,
  etag,
  admin,
  owner,
  onSaved,
  onDeleted,
  fail,
  message,
  setMessage,
}: {
  message: { ok: boolean; text: string } | null;
  setMessage: (m: { ok: boolean; text: string } | null) => void;
  t: Schemas["Tenant"];
  etag: string | null;
  admin: boolean;
  owner: boolean;
  onSaved: () => void;
  onDeleted: () => void;
  fail: (e: unknown) => string;
}) {
  const [display, setDisplay] = useState(t.display_name);
  const [labels, setLabels] = useState(formatLabels(t.labels));
  const [errors, setErrors] = useState<FieldError[]>([]);
  const [typed, setTyped] = useState("");
  const save = async (e: FormEvent) => {
    e.preventDefault();
    setErrors([]);
    setMessage(null);
    const parsed = parseLabels(labels);
    if (parsed.error) {
      setErrors([{ field: "labels", message: parsed.error }]);
      return;
    }
    try {
      ok(
        await api.PUT("/v1/tenants/{tenant}", {
          params: { path: { tenant: t.name }, header: etag ? { "If-Match": etag } : {} } as never,
          body: { name: t.name, display_name: display, labels: parsed.labels },
        }),
      );
      setMessage({ ok: true, text: "Saved." });
      onSaved();
    } catch (err) {
      if (err instanceof ApiFailure && err.status === 412) setMessage({ ok: false, text: "Changed by someone else since you opened it: nothing was overwritten. Reload to see theirs." });
      else {
        const errs = problemErrors(err, "display_name");
        if (errs.length) setErrors(errs);
        else setMessage({ ok: false, text: fail(err) });
      }
    }
  };
  const remove = async () => {
    try {
      ok(await api.DELETE("/v1/tenants/{tenant}", { params: { path: { tenant: t.name }, header: etag ? { "If-Match": etag } : {} } as never }));
      onDeleted();
    } catch (err) {
      setMessage({ ok: false, text: `${fail(err)} (${t.name} was not deleted)` });
    }
  };
  const errs = (f: string) =>
    errorsAt(errors, f, true).map((m) => (
      <span key={m} className="field-error">
        {m}
      </span>
    ));
  return (
    <section>
      <form onSubmit={save} className="form" aria-label="Tenant">
        <label>
          Name <input value={t.name} disabled aria-label="Tenant name" />
        </label>
        <label>
          Display name <input aria-label="Display name" value={display} disabled={!admin} onChange={(e) => setDisplay(e.target.value)} />
          {errs("display_name")}
        </label>
        <label>
          Labels <input aria-label="Tenant labels" value={labels} disabled={!admin} onChange={(e) => setLabels(e.target.value)} placeholder="env=prod" />
          {errs("labels")}
        </label>
        <div className="muted">
          Revision {t.revision}, created {new Date(t.created_at).toLocaleDateString()} <Labels labels={t.labels} />
        </div>
        {admin && <button type="submit">Save</button>}
      </form>
      {message && (
        <div className={`message ${message.ok ? "ok" : "bad"}`} role="status">
          {message.text}
        </div>
      )}
      {owner && (
        <div className="danger-zone">
          <h2>Delete this tenant</h2>
          <p>Everything it owns goes: clusters, nodes' credentials, policies, services, flows, tokens. Type its name to confirm.</p>
          <input aria-label="Type the tenant name" value={typed} onChange={(e) => setTyped(e.target.value)} />{" "}
          <button className="danger" disabled={typed !== t.name} onClick={remove}>
            Delete {t.name}
          </button>
        </div>
      )}
    </section>
  );
}
