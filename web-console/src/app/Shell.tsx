import { useState } from "react";
import { NavLink, Outlet, useNavigate, useParams, useLocation } from "react-router";
import { api, ok } from "../api/client";
import { useRole, useSession } from "./Root";

const NAV = [
  ["", "Overview"],
  ["nodes", "Nodes"],
  ["flows", "Flows"],
  ["map", "Service map"],
  ["services", "Services"],
  ["policies", "Policies"],
  ["connectivity", "Connectivity"],
  ["settings", "Settings"],
] as const;

export function Shell() {
  const { tenant } = useParams();
  const { me, banner, setBanner } = useSession();
  const { role } = useRole(tenant);
  const navigate = useNavigate();
  const location = useLocation();
  const [signedOut, setSignedOut] = useState(false);
  const signOut = async () => {
    ok(await api.POST("/auth/logout"));
    setSignedOut(true);
  };
  if (signedOut) {
    return (
      <div className="shell">
        <header className="top">
          <span className="brand">Weft</span>
        </header>
        <main className="page narrow">
        <h1>You are signed out</h1>
        <p>
          <a href={`/auth/login?return_to=${encodeURIComponent(`/console/t/${tenant}`)}`}>Sign in again</a>
        </p>
        </main>
      </div>
    );
  }
  const known = me.tenants.some((t) => t.name === tenant || t.id === tenant);
  return (
    <div className="shell">
      <header className="top">
        <span className="brand">Weft</span>
        <select
          aria-label="Tenant"
          value={tenant}
          onChange={(e) => {
            const rest = location.pathname.split("/").slice(3).join("/");
            navigate(`/t/${e.target.value}/${rest.split("/")[0] ?? ""}`);
          }}
        >
          {!known && <option value={tenant}>{tenant}</option>}
          {me.tenants.map((t) => (
            <option key={t.id} value={t.name}>
              {t.display_name || t.name}
            </option>
          ))}
        </select>
        <nav>
          {NAV.map(([to, label]) => (
            <NavLink key={to} to={to === "" ? `/t/${tenant}` : `/t/${tenant}/${to}`} end={to === ""}>
              {label}
            </NavLink>
          ))}
        </nav>
        <span className="who">
          {me.user?.email} {role && <span className="chip">{role}</span>}
        </span>
        <button className="link" onClick={signOut}>
          Sign out
        </button>
      </header>
      {banner && (
        <div className="banner" role="alert">
          {banner}{" "}
          <button className="link" onClick={() => setBanner(null)}>
            dismiss
          </button>
        </div>
      )}
      <main className="page">
        <Outlet key={tenant} />
      </main>
    </div>
  );
}
