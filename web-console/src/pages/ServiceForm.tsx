// Create, edit, drain and delete a service. The server's errors land at their field
// (`backends[1].port`); a taken VIP (409) at the frontends; a stale revision (412) opens
// "changed by someone else" with a reload or an explicit overwrite.
import { useState, type FormEvent, type ReactNode } from "react";
import { api, ApiFailure, ok, type Schemas } from "../api/client";
import { useSession } from "../app/Root";
import { emptyService, errorsAt, formToInput, serviceToForm, unplaced, type FieldError, type ServiceForm as Form } from "../lib/forms";

type Service = Schemas["Service"];

function Errs({ errors, path, within }: { errors: FieldError[]; path: string; within?: boolean }) {
  const msgs = errorsAt(errors, path, within);
  if (msgs.length === 0) return null;
  return (
    <div className="field-error" data-field={path}>
      {msgs.join("; ")}
    </div>
  );
}

function Field({ label, path, errors, children }: { label: string; path: string; errors: FieldError[]; children: ReactNode }) {
  const bad = errorsAt(errors, path).length > 0;
  return (
    <label className={bad ? "invalid" : undefined}>
      {label} {children}
      <Errs errors={errors} path={path} />
    </label>
  );
}

/** An editable list of rows (a service's frontends or backends): cells per row, remove, add. */
function Rows<T>({
  title,
  kind,
  columns,
  items,
  errors,
  onChange,
  blank,
  cells,
  actions,
}: {
  title: string;
  kind: "frontend" | "backend";
  columns: string[];
  items: T[];
  errors: FieldError[];
  onChange: (items: T[]) => void;
  blank: T;
  cells: (item: T, i: number) => ReactNode;
  actions?: (item: T, i: number) => ReactNode;
}) {
  return (
    <>
      <h3>{title}</h3>
      <Errs errors={errors} path={`${kind}s`} />
      <table className="inner">
        <thead>
          <tr>
            {columns.map((c) => (
              <th key={c}>{c}</th>
            ))}
            <th />
          </tr>
        </thead>
        <tbody>
          {items.map((item, i) => (
            <tr key={i} {...{ [`data-${kind}`]: i }}>
              {cells(item, i)}
              <td>
                {actions?.(item, i)}
                {actions && " "}
                <button type="button" className="link" onClick={() => onChange(items.filter((_, j) => j !== i))}>
                  remove
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <button type="button" className="secondary" onClick={() => onChange([...items, blank])}>
        Add {kind}
      </button>
    </>
  );
}

export function ServiceForm({
  tenant,
  cluster,
  existing,
  onClose,
  onSaved,
}: {
  tenant: string;
  cluster: string;
  /** The service as read (with its ETag), or null for a new one. */
  existing: { service: Service; etag: string | null } | null;
  onClose: () => void;
  onSaved: () => void;
}) {
  const { fail } = useSession();
  const [form, setForm] = useState<Form>(existing ? serviceToForm(existing.service) : emptyService());
  const [etag, setEtag] = useState(existing?.etag ?? null);
  const [errors, setErrors] = useState<FieldError[]>([]);
  const [message, setMessage] = useState<string | null>(null);
  const [conflict, setConflict] = useState<{ theirs: Service; etag: string | null } | null>(null);
  const [confirmDelete, setConfirmDelete] = useState(false);
  const [busy, setBusy] = useState(false);
  const key = existing?.service.name;

  const set = (patch: Partial<Form>) => setForm((f) => ({ ...f, ...patch }));
  const setFrontend = (i: number, patch: Partial<Form["frontends"][number]>) =>
    setForm((f) => ({ ...f, frontends: f.frontends.map((x, j) => (j === i ? { ...x, ...patch } : x)) }));
  const setBackend = (i: number, patch: Partial<Form["backends"][number]>) =>
    setForm((f) => ({ ...f, backends: f.backends.map((x, j) => (j === i ? { ...x, ...patch } : x)) }));

  const read = async () => {
    const r = await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/services/{service}", {
      params: { path: { tenant, cluster, service: key! } },
    });
    return { theirs: ok(r), etag: r.response.headers.get("ETag") };
  };

  const save = async (e?: FormEvent, overwriteEtag?: string | null) => {
    e?.preventDefault();
    setMessage(null);
    setErrors([]);
    const { input, errors: local } = formToInput(form);
    if (!input) {
      setErrors(local);
      setMessage("Fix the marked fields: nothing was sent.");
      return;
    }
    setBusy(true);
    const match = overwriteEtag !== undefined ? overwriteEtag : etag;
    try {
      if (existing) {
        ok(
          await api.PUT("/v1/tenants/{tenant}/clusters/{cluster}/services/{service}", {
            params: { path: { tenant, cluster, service: key! }, header: match ? { "If-Match": match } : {} } as never,
            body: input,
          }),
        );
      } else {
        ok(await api.POST("/v1/tenants/{tenant}/clusters/{cluster}/services", { params: { path: { tenant, cluster } }, body: input }));
      }
      setConflict(null);
      onSaved();
      onClose();
    } catch (err) {
      if (err instanceof ApiFailure && err.status === 412 && existing) {
        try {
          setConflict(await read());
        } catch (e2) {
          setMessage(fail(e2));
        }
      } else if (err instanceof ApiFailure && [400, 409, 422].includes(err.status)) {
        const errs = err.problem.errors?.length ? err.problem.errors : [{ field: err.status === 409 ? "name" : "", message: err.problem.detail ?? "" }];
        setErrors(errs);
        setMessage(
          `${err.status === 409 ? "Conflict" : "The server refused it"}: ${errs.length} error${errs.length === 1 ? "" : "s"} below. Nothing was saved.`,
        );
      } else {
        setMessage(`${fail(err)}. Nothing was saved.`);
      }
    } finally {
      setBusy(false);
    }
  };

  const remove = async () => {
    try {
      ok(
        await api.DELETE("/v1/tenants/{tenant}/clusters/{cluster}/services/{service}", {
          params: { path: { tenant, cluster, service: key! }, header: etag ? { "If-Match": etag } : {} } as never,
        }),
      );
      onSaved();
      onClose();
    } catch (err) {
      setConfirmDelete(false);
      if (err instanceof ApiFailure && err.status === 412) {
        setConflict(await read().catch(() => null));
        setMessage("Not deleted: it changed since you opened it.");
      } else setMessage(`${fail(err)} (${key} was not deleted)`);
    }
  };

  const placed = [
    "name",
    "labels",
    "algorithm",
    "session_affinity.timeout_seconds",
    "frontends",
    "backends",
    ...form.frontends.flatMap((_, i) => [`frontends[${i}]`, `frontends[${i}].vip`, `frontends[${i}].port`, `frontends[${i}].protocol`]),
    ...form.backends.flatMap((_, i) => [`backends[${i}]`, `backends[${i}].address`, `backends[${i}].port`, `backends[${i}].weight`, `backends[${i}].state`]),
  ];
  const rest = unplaced(errors, placed);

  return (
    <div className="dialog wide" role="dialog" aria-label={existing ? `Edit ${key}` : "New service"}>
      <h2>{existing ? `Edit service ${key}` : `New service in ${cluster}`}</h2>
      {conflict && (
        <div className="conflict" role="alertdialog" aria-label="Conflict">
          <h3>Changed by someone else since you opened it</h3>
          <p>
            Nothing was overwritten. Theirs is revision {conflict.theirs.revision}; yours is still in the form.
          </p>
          <div className="side-by-side">
            <pre data-testid="service-theirs">{JSON.stringify(formToInput(serviceToForm(conflict.theirs)).input, null, 2)}</pre>
            <pre data-testid="service-yours">{JSON.stringify(formToInput(form).input ?? form, null, 2)}</pre>
          </div>
          <div className="buttons">
            <button
              type="button"
              onClick={() => {
                setForm(serviceToForm(conflict.theirs));
                setEtag(conflict.etag);
                setConflict(null);
                setMessage(null);
              }}
            >
              Reload theirs (drop my changes)
            </button>
            <button
              type="button"
              className="danger"
              onClick={() => {
                setEtag(conflict.etag);
                void save(undefined, conflict.etag);
              }}
            >
              Overwrite with mine
            </button>
          </div>
        </div>
      )}
      <form onSubmit={save} className="form service-form">
        <div className="row">
          <Field label="Name" path="name" errors={errors}>
            <input aria-label="Name" value={form.name} onChange={(e) => set({ name: e.target.value })} required />
          </Field>
          <Field label="Labels" path="labels" errors={errors}>
            <input aria-label="Labels" value={form.labels} onChange={(e) => set({ labels: e.target.value })} placeholder="app=web, tier=front" />
          </Field>
          <Field label="Algorithm" path="algorithm" errors={errors}>
            <select aria-label="Algorithm" value={form.algorithm} onChange={(e) => set({ algorithm: e.target.value as Form["algorithm"] })}>
              <option value="maglev">maglev</option>
              <option value="random">random</option>
            </select>
          </Field>
          <label>
            <input type="checkbox" checked={form.affinity} onChange={(e) => set({ affinity: e.target.checked })} /> Client-IP affinity
          </label>
          {form.affinity && (
            <Field label="Affinity timeout (s)" path="session_affinity.timeout_seconds" errors={errors}>
              <input aria-label="Affinity timeout" value={form.affinityTimeout} onChange={(e) => set({ affinityTimeout: e.target.value })} />
            </Field>
          )}
        </div>

        <Rows
          title="Frontends"
          kind="frontend"
          columns={["VIP", "Port", "Protocol"]}
          items={form.frontends}
          errors={errors}
          onChange={(frontends) => set({ frontends })}
          blank={{ vip: "", port: "80", protocol: "TCP" } as Form["frontends"][number]}
          cells={(f, i) => (
            <>
              <td>
                <input aria-label={`Frontend ${i + 1} VIP`} value={f.vip} onChange={(e) => setFrontend(i, { vip: e.target.value })} placeholder="10.96.0.20" />
                <Errs errors={errors} path={`frontends[${i}].vip`} />
                <Errs errors={errors} path={`frontends[${i}]`} />
              </td>
              <td>
                <input aria-label={`Frontend ${i + 1} port`} value={f.port} onChange={(e) => setFrontend(i, { port: e.target.value })} size={6} />
                <Errs errors={errors} path={`frontends[${i}].port`} />
              </td>
              <td>
                <select aria-label={`Frontend ${i + 1} protocol`} value={f.protocol} onChange={(e) => setFrontend(i, { protocol: e.target.value as "TCP" | "UDP" })}>
                  <option>TCP</option>
                  <option>UDP</option>
                </select>
              </td>
            </>
          )}
        />

        <Rows
          title="Backends"
          kind="backend"
          columns={["Address", "Port", "Weight", "State"]}
          items={form.backends}
          errors={errors}
          onChange={(backends) => set({ backends })}
          blank={{ address: "", port: "8080", weight: "1", state: "active" } as Form["backends"][number]}
          cells={(b, i) => (
            <>
              <td>
                <input aria-label={`Backend ${i + 1} address`} value={b.address} onChange={(e) => setBackend(i, { address: e.target.value })} placeholder="10.0.1.5" />
                <Errs errors={errors} path={`backends[${i}].address`} />
                <Errs errors={errors} path={`backends[${i}]`} />
              </td>
              <td>
                <input aria-label={`Backend ${i + 1} port`} value={b.port} onChange={(e) => setBackend(i, { port: e.target.value })} size={6} />
                <Errs errors={errors} path={`backends[${i}].port`} />
              </td>
              <td>
                <input aria-label={`Backend ${i + 1} weight`} value={b.weight} onChange={(e) => setBackend(i, { weight: e.target.value })} size={6} />
                {b.weight.trim() === "0" && <span className="muted"> draining</span>}
                <Errs errors={errors} path={`backends[${i}].weight`} />
              </td>
              <td>
                <select aria-label={`Backend ${i + 1} state`} value={b.state} onChange={(e) => setBackend(i, { state: e.target.value as Form["backends"][number]["state"] })}>
                  {(["active", "terminating", "quarantined", "maintenance"] as const).map((s) => (
                    <option key={s}>{s}</option>
                  ))}
                </select>
                <Errs errors={errors} path={`backends[${i}].state`} />
              </td>
            </>
          )}
          actions={(b, i) =>
            b.weight.trim() !== "0" && (
              <button type="button" className="secondary" onClick={() => setBackend(i, { weight: "0" })} title="Weight 0: no new connections, established ones continue">
                Drain
              </button>
            )
          }
        />

        {rest.length > 0 && (
          <ul className="errors" data-testid="other-errors">
            {rest.map((e, i) => (
              <li key={i}>
                {e.field && <code>{e.field}</code>} {e.message}
              </li>
            ))}
          </ul>
        )}
        {message && (
          <div className="message bad" role="status" data-testid="service-message">
            {message}
          </div>
        )}
        <div className="buttons">
          <button type="submit" disabled={busy} data-testid="service-save">
            {existing ? "Save" : "Create service"}
          </button>
          <button type="button" className="secondary" onClick={onClose}>
            Cancel
          </button>
          {existing && (
            <button type="button" className="danger" onClick={() => setConfirmDelete(true)} data-testid="service-delete">
              Delete
            </button>
          )}
        </div>
      </form>

      {confirmDelete && (
        <div className="message bad" role="alertdialog" aria-label="Delete service">
          Delete {key}? Its VIPs stop answering on every node.{" "}
          <button className="danger" onClick={remove} data-testid="service-confirm-delete">
            Delete {key}
          </button>{" "}
          <button className="secondary" onClick={() => setConfirmDelete(false)}>
            Keep it
          </button>
        </div>
      )}

    </div>
  );
}
