//! The tenant's view: everything the desired-state compiler needs of one tenant, read
//! inside the caller's transaction (a consistent snapshot when it is REPEATABLE READ).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;
use weft_model::desired::{
    ClusterView, EndpointView, NodeView, PolicyView, ProbeView, ServiceView, TenantView,
    WorkloadView,
};
use weft_model::labels::Labels;
use weft_model::policy::{NamedPort, PolicySpec};
use weft_model::service::ServiceSpec;
use weft_model::workload::{DesiredProbe, DesiredWorkload, HttpProbe, ResolveProbe};

use crate::error::Result;

type NodeRow = (Uuid, Uuid, String, Vec<String>, Json<Labels>, Vec<String>);
type EndpointRow = (
    Uuid,
    Uuid,
    Uuid,
    String,
    Json<Labels>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Json<Vec<NamedPort>>,
);
type PolicyRow = (Uuid, String, Json<Vec<PolicySpec>>, Option<Vec<Uuid>>);

/// Makes the rest of a fresh transaction one read-only snapshot (call first): the
/// revision and the view it reads agree.
pub async fn snapshot(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(conn)
        .await?;
    Ok(())
}

/// Reads the tenant's view inside the caller's transaction.
#[tracing::instrument(name = "db.load_view", skip_all, fields(%tenant))]
pub async fn load_view(conn: &mut PgConnection, tenant: Uuid) -> Result<TenantView> {
    let nodes: Vec<NodeRow> = sqlx::query_as(
        "SELECT id, cluster_id, name, array(SELECT host(a) FROM unnest(addresses) a), labels, \
         array(SELECT text(c) FROM unnest(pod_cidrs) c) FROM nodes WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let endpoints: Vec<EndpointRow> = sqlx::query_as(
        "SELECT id, cluster_id, node_id, name, labels, host(ipv4), host(ipv6), identity, \
         named_ports FROM endpoints WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let policies: Vec<PolicyRow> =
        sqlx::query_as("SELECT id, name, specs, cluster_ids FROM policies WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
    let clusters: Vec<(Uuid, bool, String)> = sqlx::query_as(
        "SELECT id, allow_host_to_local_pods, routing_mode FROM clusters WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let services = super::services::all_of_tenant(conn, tenant).await?;
    let workloads = workloads_of_tenant(conn, tenant).await?;
    let probes = pending_probes_of_tenant(conn, tenant).await?;
    let ip = |s: &str| s.parse::<IpAddr>().ok();
    // One map per label set and one string per cluster and node, shared by the endpoints
    // (and nodes) that have them.
    let mut label_sets: HashSet<Arc<Labels>> = HashSet::new();
    let mut shared_labels = |labels: Labels| match label_sets.get(&labels) {
        Some(known) => known.clone(),
        None => {
            let new = Arc::new(labels);
            label_sets.insert(new.clone());
            new
        }
    };
    let mut ids: HashMap<Uuid, Arc<str>> = HashMap::new();
    let mut shared_id = |id: Uuid| {
        ids.entry(id)
            .or_insert_with(|| id.to_string().into())
            .clone()
    };
    let mut nodes: Vec<NodeView> = nodes
        .into_iter()
        .map(|(node, cluster, name, addrs, labels, cidrs)| NodeView {
            id: node.to_string(),
            cluster_id: cluster.to_string(),
            name,
            addresses: addrs.iter().filter_map(|a| ip(a)).collect(),
            labels: shared_labels(labels.0),
            pod_cidrs: cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
        })
        .collect();
    let mut endpoints: Vec<EndpointView> = endpoints
        .into_iter()
        // An endpoint without an identity yet is not programmed anywhere.
        .filter_map(
            |(ep, cluster, node, name, labels, v4, v6, identity, ports)| {
                Some(EndpointView {
                    id: ep.to_string(),
                    cluster_id: shared_id(cluster),
                    node_id: shared_id(node),
                    name,
                    labels: shared_labels(labels.0),
                    ips: [v4, v6].iter().flatten().filter_map(|a| ip(a)).collect(),
                    identity: u32::try_from(identity?).ok()?,
                    named_ports: ports.0,
                })
            },
        )
        .collect();
    // Collected in place into the rows' vectors (grown by doubling, and rows are larger):
    // a view lives for as long as a change is being sent.
    nodes.shrink_to_fit();
    endpoints.shrink_to_fit();
    Ok(TenantView {
        nodes,
        endpoints,
        policies: policies
            .into_iter()
            .map(|(id, name, specs, clusters)| PolicyView {
                id: id.to_string(),
                name,
                specs: specs.0,
                clusters: clusters.map(|c| c.iter().map(Uuid::to_string).collect()),
            })
            .collect(),
        services: services
            .into_iter()
            .map(|s| {
                let spec = ServiceSpec {
                    algorithm: s.algorithm(),
                    session_affinity: s.session_affinity(),
                    frontends: s.frontends,
                    backends: s.backends,
                };
                ServiceView {
                    id: s.id.to_string(),
                    cluster_id: s.cluster_id.to_string(),
                    name: s.name,
                    spec,
                }
            })
            .collect(),
        workloads,
        probes,
        clusters: clusters
            .into_iter()
            .map(|(id, allow_host_to_local_pods, routing)| ClusterView {
                id: id.to_string(),
                allow_host_to_local_pods,
                // The column's check constraint admits only the mode names.
                routing: routing.parse().unwrap_or_default(),
            })
            .collect(),
    })
}

/// Every test workload of a tenant, with its node, for the desired-state compiler.
pub async fn workloads_of_tenant(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<Vec<WorkloadView>> {
    type ViewRow = (
        Uuid,
        String,
        String,
        String,
        sqlx::types::Json<Labels>,
        Vec<i32>,
        Option<String>,
    );
    let rows: Vec<ViewRow> = sqlx::query_as(
        "SELECT node_id, name, kind, host(ip), labels, echo_ports, host(ip6) FROM test_workloads \
         WHERE tenant_id = $1 ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(node, name, kind, ip, labels, ports, ip6)| {
            Some(WorkloadView {
                node_id: node.to_string(),
                workload: DesiredWorkload {
                    name,
                    kind: kind.parse().ok()?,
                    ip: ip.parse().ok()?,
                    ip6: ip6.and_then(|a| a.parse().ok()),
                    labels: labels.0,
                    echo_ports: ports
                        .iter()
                        .filter_map(|p| u16::try_from(*p).ok())
                        .collect(),
                },
            })
        })
        .collect())
}

/// The tenant's probes without a result, with their nodes, for the desired-state compiler.
pub async fn pending_probes_of_tenant(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<Vec<ProbeView>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
        node_id: Uuid,
        from_workload: Option<String>,
        target_ip: String,
        target_port: i32,
        timeout_ms: i32,
        http_method: Option<String>,
        http_path: Option<String>,
        resolve_name: Option<String>,
        resolver: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, node_id, from_workload, host(target_ip) AS target_ip, target_port, \
         timeout_ms, http_method, http_path, resolve_name, host(resolver) AS resolver \
         FROM probes WHERE tenant_id = $1 AND outcome IS NULL ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(ProbeView {
                node_id: r.node_id.to_string(),
                probe: DesiredProbe {
                    id: r.id.to_string(),
                    from_workload: r.from_workload,
                    target: SocketAddr::new(
                        r.target_ip.parse().ok()?,
                        u16::try_from(r.target_port).ok()?,
                    ),
                    timeout_ms: r.timeout_ms.unsigned_abs(),
                    // The columns' CHECKs keep each pair together.
                    http: r
                        .http_method
                        .zip(r.http_path)
                        .map(|(method, path)| HttpProbe { method, path }),
                    resolve: match (r.resolve_name, r.resolver) {
                        (Some(name), Some(server)) => Some(ResolveProbe {
                            name,
                            server: server.parse().ok()?,
                        }),
                        _ => None,
                    },
                },
            })
        })
        .collect())
}
