import { useSearchParams } from "react-router";
import { api, ok } from "../api/client";
import { useLoad } from "./ui";

/**
 * The cluster a per-cluster page shows: `?cluster=` in the URL, else the tenant's first;
 * and the toolbar picker that changes it (kept in the URL, so a link or reload keeps it).
 */
export function useClusterChoice(tenant: string) {
  const [search, setSearch] = useSearchParams();
  const clusters = useLoad(
    async () => ok(await api.GET("/v1/tenants/{tenant}/clusters", { params: { path: { tenant }, query: { limit: 1000 } } })).items,
    [tenant],
  );
  const cluster = search.get("cluster") ?? clusters.data?.[0]?.name ?? "";
  const picker = (
    <label>
      Cluster{" "}
      <select aria-label="Cluster" value={cluster} onChange={(e) => setSearch({ cluster: e.target.value })}>
        {(clusters.data ?? []).map((c) => (
          <option key={c.id} value={c.name}>
            {c.name}
          </option>
        ))}
      </select>
    </label>
  );
  return { cluster, picker };
}
