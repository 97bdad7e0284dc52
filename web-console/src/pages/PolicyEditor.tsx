// The policy editor, in its own chunk with CodeMirror: loaded only on this page.
import { useEffect, useMemo, useRef, useState } from "react";
import { useNavigate, useParams } from "react-router";
import { basicSetup, EditorView } from "codemirror";
import { EditorState, Compartment } from "@codemirror/state";
import { linter, lintGutter, setDiagnostics, type Diagnostic } from "@codemirror/lint";
import { yaml as yamlLang } from "@codemirror/lang-yaml";
import { json as jsonLang } from "@codemirror/lang-json";
import { parseDocument, stringify } from "yaml";
import { api, ApiFailure, ok, type Schemas } from "../api/client";
import { useRole, useSession } from "../app/Root";
import { Chip, Conditions, ErrorBox, Loading, useInterval, useLoad } from "../app/ui";
import { lineOf, rangeOfField } from "../lib/yamlPath";

type Policy = Schemas["Policy"];
type Format = "yaml" | "json";
type FieldError = { field: string; message: string };

const TEMPLATE = {
  name: "my-policy",
  description: "",
  labels: {},
  spec: { endpointSelector: { matchLabels: { app: "web" } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: "frontend" } }] }] },
};

/** The editable part of a policy, as the person sees it. */
function editable(p: Policy): Record<string, unknown> {
  const doc: Record<string, unknown> = { name: p.name, description: p.description, labels: p.labels };
  if (p.clusters) doc.clusters = p.clusters;
  if (p.specs.length === 1) doc.spec = p.specs[0];
  else doc.specs = p.specs;
  return doc;
}

function render(doc: unknown, format: Format): string {
  return format === "json" ? JSON.stringify(doc, null, 2) + "\n" : stringify(doc);
}

/** The text as a request body, or its syntax errors (shown before any request). */
function parse(text: string): { body?: Record<string, unknown>; errors: Diagnostic[] } {
  const doc = parseDocument(text);
  if (doc.errors.length > 0) {
    return {
      errors: doc.errors.map((e) => ({ from: e.pos[0], to: Math.max(e.pos[1], e.pos[0] + 1), severity: "error", message: e.message.split("\n")[0], source: "syntax" })),
    };
  }
  const body = doc.toJS();
  if (!body || typeof body !== "object" || Array.isArray(body)) return { errors: [{ from: 0, to: Math.min(1, text.length), severity: "error", message: "expected a mapping with name, spec or specs", source: "syntax" }] };
  return { body: body as Record<string, unknown>, errors: [] };
}

export default function PolicyEditor() {
  const { tenant = "", policy: key = "new" } = useParams();
  const isNew = key === "new";
  const navigate = useNavigate();
  const { fail } = useSession();
  const { can } = useRole(tenant);
  const editable_ = can("editor");
  const [format, setFormat] = useState<Format>("yaml");
  const [etag, setEtag] = useState<string | null>(null);
  const [saved, setSaved] = useState<Policy | null>(null);
  const [serverErrors, setServerErrors] = useState<FieldError[]>([]);
  const [message, setMessage] = useState<{ ok: boolean; text: string } | null>(null);
  const [conflict, setConflict] = useState<{ theirs: Policy; etag: string } | null>(null);
  const [deleting, setDeleting] = useState(false);
  const [busy, setBusy] = useState(false);
  /** The conditions of the last check (dry run); a save's come with `saved`. */
  const [checked, setChecked] = useState<Policy["status"]["conditions"] | null>(null);

  const loaded = useLoad(async () => {
    if (isNew) return null;
    const r = await api.GET("/v1/tenants/{tenant}/policies/{policy}", { params: { path: { tenant, policy: key } } });
    const p = ok(r);
    setEtag(r.response.headers.get("ETag"));
    setSaved(p);
    return p;
  }, [tenant, key]);

  const host = useRef<HTMLDivElement>(null);
  const view = useRef<EditorView | null>(null);
  const lang = useRef(new Compartment());
  const readOnly = useRef(new Compartment());
  const serverDiags = useRef<Diagnostic[]>([]);

  // The server's errors, mapped to the text through the yaml package's source ranges.
  const mapped = useMemo(() => {
    const text = view.current?.state.doc.toString() ?? "";
    return serverErrors.map((e) => {
      const r = rangeOfField(text, e.field);
      return { ...e, range: r, line: r ? lineOf(text, r.from) : null };
    });
  }, [serverErrors]);

  useEffect(() => {
    serverDiags.current = mapped.filter((m) => m.range).map((m) => ({ from: m.range!.from, to: m.range!.to, severity: "error" as const, message: `${m.field}: ${m.message}`, source: "server" }));
    // The linter runs on edits; the server's answer comes between them: show it now.
    const v = view.current;
    if (v) v.dispatch(setDiagnostics(v.state, [...parse(v.state.doc.toString()).errors, ...serverDiags.current]));
  }, [mapped]);

  useEffect(() => {
    if (loaded.loading && !loaded.data && !isNew) return;
    const initial = render(loaded.data ? editable(loaded.data) : TEMPLATE, format);
    const v = new EditorView({
      parent: host.current!,
      state: EditorState.create({
        doc: initial,
        extensions: [
          basicSetup,
          lang.current.of(format === "json" ? jsonLang() : yamlLang()),
          readOnly.current.of(EditorState.readOnly.of(!editable_)),
          lintGutter(),
          linter((view) => [...parse(view.state.doc.toString()).errors, ...serverDiags.current], { delay: 250 }),
          EditorView.updateListener.of((u) => {
            if (u.docChanged && serverDiags.current.length) {
              // Keep the server's marks where they were until the next check.
              serverDiags.current = serverDiags.current.map((d) => ({ ...d, from: u.changes.mapPos(d.from), to: u.changes.mapPos(d.to) }));
            }
          }),
          EditorView.theme({ "&": { height: "440px" }, ".cm-scroller": { fontFamily: "ui-monospace, monospace" } }),
        ],
      }),
    });
    view.current = v;
    return () => {
      v.destroy();
      view.current = null;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [loaded.data, loaded.loading]);

  const text = () => view.current?.state.doc.toString() ?? "";
  const replaceText = (t: string) => view.current?.dispatch({ changes: { from: 0, to: view.current.state.doc.length, insert: t } });

  const switchFormat = (f: Format) => {
    const { body, errors } = parse(text());
    if (errors.length) {
      setMessage({ ok: false, text: "Fix the syntax errors before switching format." });
      return;
    }
    setFormat(f);
    view.current?.dispatch({ effects: lang.current.reconfigure(f === "json" ? jsonLang() : yamlLang()) });
    replaceText(render(body, f));
  };

  /** Sends the text: a dry run (Check) or the write (Save). */
  const send = async (dryRun: boolean) => {
    setMessage(null);
    setServerErrors([]);
    const { body, errors } = parse(text());
    if (errors.length || !body) {
      setMessage({ ok: false, text: `${errors.length} syntax error(s): nothing was sent.` });
      return;
    }
    setBusy(true);
    try {
      const query = { dry_run: dryRun } as never;
      const r = isNew
        ? await api.POST("/v1/tenants/{tenant}/policies", { params: { path: { tenant }, query }, body: body as never })
        : await api.PUT("/v1/tenants/{tenant}/policies/{policy}", {
            params: { path: { tenant, policy: key }, query, header: etag ? { "If-Match": etag } : {} } as never,
            body: body as never,
          });
      const p = ok(r) as Policy;
      setChecked(dryRun ? (p.status?.conditions ?? []) : null);
      if (dryRun) {
        setMessage({ ok: true, text: `Valid: the server accepts it (${p.specs.length} rule${p.specs.length === 1 ? "" : "s"}, ${p.clusters ? p.clusters.join(", ") : "all clusters"}). Nothing was saved.` });
      } else {
        setEtag(r.response.headers.get("ETag"));
        setSaved(p);
        setMessage({ ok: true, text: `Saved revision ${p.revision}.` });
        if (isNew || p.name !== key) navigate(`/t/${tenant}/policies/${encodeURIComponent(p.name)}`, { replace: true });
      }
    } catch (e) {
      if (e instanceof ApiFailure && e.status === 412 && !isNew) {
        const r = await api.GET("/v1/tenants/{tenant}/policies/{policy}", { params: { path: { tenant, policy: key } } });
        if (r.data) setConflict({ theirs: r.data, etag: r.response.headers.get("ETag") ?? "" });
      } else if (e instanceof ApiFailure && (e.status === 400 || e.status === 409 || e.status === 422)) {
        const errs = e.problem.errors?.length ? e.problem.errors : [{ field: e.status === 409 ? "name" : "", message: e.problem.detail ?? "" }];
        setServerErrors(errs);
        setMessage({ ok: false, text: `${e.status === 409 ? "Conflict" : "The server refused it"}: ${errs.length} error${errs.length === 1 ? "" : "s"}. Nothing was saved.` });
      } else {
        setMessage({ ok: false, text: `${fail(e)}. Nothing was saved.` });
      }
    } finally {
      setBusy(false);
    }
  };

  const remove = async (typed: string) => {
    try {
      ok(await api.DELETE("/v1/tenants/{tenant}/policies/{policy}", { params: { path: { tenant, policy: key }, header: etag ? { "If-Match": etag } : {} } as never }));
      navigate(`/t/${tenant}/policies`);
    } catch (e) {
      setDeleting(false);
      setMessage({ ok: false, text: `${fail(e)} (${typed} was not deleted)` });
    }
  };

  if (loaded.error && !loaded.data) return <ErrorBox error={loaded.error} retry={loaded.reload} />;
  if (!isNew && !loaded.data) return <Loading what="the policy" />;

  return (
    <div className="editor-page">
      <h1>{isNew ? "New policy" : key}</h1>
      <div className="toolbar">
        <span className="seg">
          {(["yaml", "json"] as const).map((f) => (
            <button key={f} className={format === f ? "active" : "secondary"} onClick={() => switchFormat(f)}>
              {f.toUpperCase()}
            </button>
          ))}
        </span>
        {editable_ ? (
          <>
            <button className="secondary" onClick={() => send(true)} disabled={busy} data-testid="check">
              Check
            </button>
            <button onClick={() => send(false)} disabled={busy} data-testid="save">
              Save
            </button>
            {!isNew && (
              <button className="danger" onClick={() => setDeleting(true)} data-testid="delete">
                Delete
              </button>
            )}
          </>
        ) : (
          <span className="muted">Read only: your role cannot change policies.</span>
        )}
      </div>
      {message && (
        <div className={`message ${message.ok ? "ok" : "bad"}`} role="status" data-testid="message">
          {message.text}
        </div>
      )}
      <Conditions conditions={checked ?? saved?.status.conditions} />
      <div className="editor" ref={host} data-testid="editor" />
      {mapped.length > 0 && (
        <ul className="errors" data-testid="errors">
          {mapped.map((m, i) => (
            <li key={i}>
              {m.line ? (
                <button
                  className="link"
                  onClick={() => {
                    if (!m.range || !view.current) return;
                    view.current.dispatch({ selection: { anchor: m.range.from, head: m.range.to }, scrollIntoView: true });
                    view.current.focus();
                  }}
                >
                  line {m.line}
                </button>
              ) : null}{" "}
              <code>{m.field}</code>: {m.message}
            </li>
          ))}
        </ul>
      )}
      {saved && <Realization tenant={tenant} policy={saved} />}
      {conflict && (
        <div className="dialog wide" role="dialog" aria-label="Conflict">
          <h2>Changed by someone else since you opened it</h2>
          <p>Nothing was overwritten. Theirs (revision {conflict.theirs.revision}) is on the left, yours on the right.</p>
          <div className="side-by-side">
            <pre data-testid="theirs">{render(editable(conflict.theirs), format)}</pre>
            <pre data-testid="yours">{text()}</pre>
          </div>
          <div className="buttons">
            <button
              onClick={() => {
                setEtag(conflict.etag);
                setSaved(conflict.theirs);
                replaceText(render(editable(conflict.theirs), format));
                setConflict(null);
              }}
            >
              Take theirs and edit again
            </button>
            <button
              className="secondary"
              onClick={() => {
                setEtag(conflict.etag);
                setConflict(null);
                setMessage({ ok: false, text: "Yours is kept in the editor; Save now replaces theirs." });
              }}
            >
              Keep mine in the editor
            </button>
          </div>
        </div>
      )}
      {deleting && <DeleteDialog name={key} onCancel={() => setDeleting(false)} onDelete={remove} />}
    </div>
  );
}

function DeleteDialog({ name, onCancel, onDelete }: { name: string; onCancel: () => void; onDelete: (typed: string) => void }) {
  const [typed, setTyped] = useState("");
  return (
    <div className="dialog" role="dialog" aria-label="Delete">
      <h2>Delete {name}?</h2>
      <p>Type the policy's name to delete it. Endpoints it selected fall back to what the other policies say.</p>
      <input aria-label="Policy name" value={typed} onChange={(e) => setTyped(e.target.value)} />
      <div className="buttons">
        <button className="danger" disabled={typed !== name} onClick={() => onDelete(typed)} data-testid="confirm-delete">
          Delete
        </button>
        <button className="secondary" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </div>
  );
}

/** Per node of the policy's clusters: has it applied this revision yet. */
function Realization({ tenant, policy }: { tenant: string; policy: Policy }) {
  const nodes = useLoad(async () => {
    const clusters = policy.clusters ?? ok(await api.GET("/v1/tenants/{tenant}/clusters", { params: { path: { tenant }, query: { limit: 1000 } } })).items.map((c) => c.name);
    const lists = await Promise.all(
      clusters.map(async (c) => ok(await api.GET("/v1/tenants/{tenant}/clusters/{cluster}/nodes", { params: { path: { tenant, cluster: c }, query: { limit: 1000 } } })).items.map((n) => ({ cluster: c, n }))),
    );
    return lists.flat();
  }, [tenant, policy.id, policy.revision]);
  const list = nodes.data ?? [];
  const done = list.filter(({ n }) => n.status.applied_revision >= policy.revision).length;
  useInterval(nodes.reload, done < list.length || !nodes.data ? 1000 : null);
  return (
    <section className="realization">
      <h2>
        Realization of revision {policy.revision}:{" "}
        <Chip ok={nodes.data ? done === list.length : null}>
          <span data-testid="realized">
            {done}/{list.length}
          </span>
        </Chip>
      </h2>
      <ul className="nodes-realized">
        {list.map(({ cluster, n }) => (
          <li key={n.id}>
            {n.status.applied_revision >= policy.revision ? "✓" : "…"} {cluster}/{n.name} (applied {n.status.applied_revision})
          </li>
        ))}
      </ul>
    </section>
  );
}
