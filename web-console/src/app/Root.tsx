import { createContext, useContext, useEffect, useState, type FormEvent } from "react";
import { Navigate, Outlet, useNavigate } from "react-router";
import { api, ApiFailure, describe, MAX_TRIES, ok, onRateLimit, type RateLimitWait, type Schemas } from "../api/client";
import { ErrorBox, Loading, useLoad } from "./ui";

export type Role = Schemas["Role"];
const RANK: Record<Role, number> = { viewer: 0, editor: 1, admin: 2, owner: 3 };

export interface Session {
  me: Schemas["Me"];
  reload: () => void;
  /** A message across the top (a 403, a failure) until dismissed. */
  banner: string | null;
  setBanner: (msg: string | null) => void;
  /** Shows a failure: 403 and 5xx in the banner, returns the text for the rest. */
  fail: (e: unknown) => string;
}

const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const s = useContext(SessionContext);
  if (!s) throw new Error("no session");
  return s;
}

/** The caller's role in `tenant`, and whether it reaches `need`. */
export function useRole(tenant: string | undefined) {
  const { me } = useSession();
  const t = me.tenants.find((x) => x.name === tenant || x.id === tenant);
  const role: Role | undefined = t?.role;
  return { role, can: (need: Role) => role !== undefined && RANK[role] >= RANK[need] };
}

/** "Too many requests": shown while a 429's `Retry-After` is waited out, with a countdown. */
export function RateLimitNotice() {
  const [wait, setWait] = useState<RateLimitWait | null>(null);
  const [now, setNow] = useState(Date.now());
  useEffect(() => onRateLimit(setWait), []);
  useEffect(() => {
    if (!wait) return;
    const id = setInterval(() => setNow(Date.now()), 500);
    return () => clearInterval(id);
  }, [wait]);
  if (!wait) return null;
  const left = Math.min(wait.seconds, Math.max(0, Math.ceil((wait.until - now) / 1000)));
  return (
    <div className="banner" role="status" data-testid="rate-limited">
      Too many requests: the server asked to wait {wait.seconds} s (Retry-After). Trying again in {left} s (try {wait.attempt} of {MAX_TRIES}).
    </div>
  );
}

export function Root() {
  const me = useLoad(async () => ok(await api.GET("/v1/me")), []);
  const [banner, setBanner] = useState<string | null>(null);
  if (me.error && !me.data) {
    // A 401 already sent the browser to sign in.
    if (me.error instanceof ApiFailure && me.error.status === 401) return <Loading what="sign-in" />;
    return (
      <>
        <RateLimitNotice />
        <ErrorBox error={me.error} retry={me.reload} />
      </>
    );
  }
  if (!me.data)
    return (
      <>
        <RateLimitNotice />
        <Loading what="your account" />
      </>
    );
  const fail = (e: unknown) => {
    const text = describe(e);
    if (e instanceof ApiFailure && (e.status === 403 || e.status === 429 || e.status >= 500)) setBanner(text);
    return text;
  };
  return (
    <SessionContext.Provider value={{ me: me.data, reload: me.reload, banner, setBanner, fail }}>
      <RateLimitNotice />
      <Outlet />
    </SessionContext.Provider>
  );
}

/** `/console/`: the first tenant, or creating one. */
export function Home() {
  const { me, reload } = useSession();
  const navigate = useNavigate();
  const [name, setName] = useState("");
  const [error, setError] = useState<string | null>(null);
  if (me.tenants.length > 0) return <Navigate to={`/t/${me.tenants[0].name}`} replace />;
  const create = async (e: FormEvent) => {
    e.preventDefault();
    try {
      ok(await api.POST("/v1/tenants", { body: { name } }));
      reload();
      navigate(`/t/${name}`);
    } catch (err) {
      setError(describe(err));
    }
  };
  return (
    <main className="page narrow">
      <h1>Welcome to Weft</h1>
      <p>You belong to no tenant yet. Ask an admin to invite {me.user?.email ?? "you"}, or create one:</p>
      <form onSubmit={create} className="form">
        <label>
          Tenant name <input value={name} onChange={(e) => setName(e.target.value)} placeholder="acme" required />
        </label>
        {error && <div className="field-error">{error}</div>}
        <button type="submit">Create tenant</button>
      </form>
    </main>
  );
}
