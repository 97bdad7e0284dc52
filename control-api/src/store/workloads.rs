//! Test workloads (echo servers an agent runs for connectivity tests): rows, address
//! bookkeeping and writes.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;
use weft_model::labels::Labels;
use weft_model::selector::LabelSelector;

use super::rows::Scope;
use crate::error::Result;
use crate::pagination::ListQuery;

/// A test workload as stored, with its node's name and whether it is ready.
#[derive(FromRow)]
pub struct WorkloadRow {
    pub id: Uuid,
    pub name: String,
    pub node: String,
    pub kind: String,
    pub ip: String,
    pub ip6: Option<String>,
    #[sqlx(json)]
    pub labels: Labels,
    pub echo_ports: Vec<i32>,
    pub created_at: DateTime<Utc>,
    pub revision: i64,
    pub ready: bool,
}

/// A new workload, its address already allocated.
pub struct NewWorkload<'a> {
    pub id: Uuid,
    pub node: Uuid,
    pub name: &'a str,
    pub kind: &'a str,
    pub ip: String,
    pub ip6: Option<String>,
    pub labels: &'a Labels,
    pub echo_ports: Vec<i32>,
    pub revision: i64,
}

const SELECT: &str =
    "SELECT w.id, w.name, n.name AS node, w.kind, host(w.ip) AS ip, host(w.ip6) AS ip6, \
    w.labels, \
    w.echo_ports, w.created_at, w.revision, \
    (n.applied_revision >= w.revision AND (w.kind = 'world' OR EXISTS ( \
        SELECT 1 FROM endpoints e WHERE e.tenant_id = w.tenant_id AND e.node_id = w.node_id \
        AND e.name = w.name AND e.identity IS NOT NULL))) AS ready \
    FROM test_workloads w JOIN nodes n ON n.id = w.node_id";

/// One page of a cluster's test workloads (`scope` names the cluster).
pub async fn list(
    conn: &mut PgConnection,
    scope: Scope,
    list: &ListQuery,
) -> Result<Vec<WorkloadRow>> {
    super::rows::page(conn, SELECT, "w", scope, list).await
}

pub async fn load(conn: &mut PgConnection, id: Uuid) -> Result<WorkloadRow> {
    super::rows::by_id(conn, SELECT, "w", id).await
}

/// A node's pod CIDRs, in their given order.
pub async fn pod_cidrs(conn: &mut PgConnection, node: Uuid) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT c::text FROM nodes, unnest(pod_cidrs) WITH ORDINALITY AS u(c, pos) \
         WHERE id = $1 ORDER BY pos",
    )
    .bind(node)
    .fetch_all(conn)
    .await?)
}

/// The IPv4 addresses a cluster's endpoints and test workloads hold.
pub async fn taken_addresses(conn: &mut PgConnection, scope: Scope) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT host(ipv4) FROM endpoints WHERE tenant_id = $1 AND cluster_id = $2 \
           AND ipv4 IS NOT NULL \
         UNION SELECT host(ip) FROM test_workloads WHERE tenant_id = $1 AND cluster_id = $2",
    )
    .bind(scope.tenant)
    .bind(scope.cluster)
    .fetch_all(conn)
    .await?)
}

/// The IPv6 addresses a cluster's endpoints and test workloads hold.
pub async fn taken_addresses6(conn: &mut PgConnection, scope: Scope) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT host(ipv6) FROM endpoints WHERE tenant_id = $1 AND cluster_id = $2 \
           AND ipv6 IS NOT NULL \
         UNION SELECT host(ip6) FROM test_workloads WHERE tenant_id = $1 AND cluster_id = $2 \
           AND ip6 IS NOT NULL",
    )
    .bind(scope.tenant)
    .bind(scope.cluster)
    .fetch_all(conn)
    .await?)
}

/// Whether an endpoint that is not a test workload already has this name on the node.
pub async fn endpoint_name_taken(conn: &mut PgConnection, node: Uuid, name: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM endpoints e WHERE e.node_id = $1 AND e.name = $2 \
         AND NOT EXISTS (SELECT 1 FROM test_workloads w WHERE w.node_id = e.node_id \
                         AND w.name = e.name))",
    )
    .bind(node)
    .bind(name)
    .fetch_one(conn)
    .await?)
}

/// One allocation at a time per cluster, until the transaction ends.
pub async fn lock_allocation(conn: &mut PgConnection, cluster: Option<Uuid>) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('test_workloads:' || $1::text, 0))")
        .bind(cluster)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert(conn: &mut PgConnection, scope: Scope, w: NewWorkload<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO test_workloads (id, tenant_id, cluster_id, node_id, name, kind, ip, labels, \
         echo_ports, revision, ip6) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8, $9, $10, $11::inet)",
    )
    .bind(w.id)
    .bind(scope.tenant)
    .bind(scope.cluster)
    .bind(w.node)
    .bind(w.name)
    .bind(w.kind)
    .bind(w.ip)
    .bind(sqlx::types::Json(w.labels))
    .bind(w.echo_ports)
    .bind(w.revision)
    .bind(w.ip6)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM test_workloads WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the cluster's workloads a selector matches (after the revision lock); their ids.
pub async fn lock_matching(
    conn: &mut PgConnection,
    scope: Scope,
    selector: &LabelSelector,
) -> Result<Vec<Uuid>> {
    super::rows::lock_matching(conn, "test_workloads", scope, selector).await
}
