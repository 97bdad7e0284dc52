//! Probes (one connection attempt an agent makes for a connectivity test): rows, the
//! workload a probe starts from, and writes.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;
use weft_model::labels::Labels;
use weft_model::selector::LabelSelector;
use weft_model::workload::{HttpProbe, ResolveProbe};

use super::rows::Scope;
use crate::error::Result;
use crate::pagination::ListQuery;

/// A probe as stored, with its node's name and, once reported, its result.
#[derive(FromRow)]
pub struct ProbeRow {
    pub id: Uuid,
    pub node: String,
    pub from_workload: Option<String>,
    pub target_ip: String,
    pub target_port: i32,
    pub timeout_ms: i32,
    #[sqlx(json)]
    pub labels: Labels,
    pub created_at: DateTime<Utc>,
    pub revision: i64,
    pub outcome: Option<String>,
    pub detail: Option<String>,
    pub latency_us: Option<i64>,
    pub reply_from: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    pub http_method: Option<String>,
    pub http_path: Option<String>,
    pub resolve_name: Option<String>,
    pub resolver: Option<String>,
    pub http_status: Option<i32>,
    pub dns_rcode: Option<String>,
}

/// A new probe, its node resolved.
pub struct NewProbe<'a> {
    pub id: Uuid,
    pub node: Uuid,
    pub from_workload: Option<&'a str>,
    pub target_ip: String,
    pub target_port: i32,
    pub timeout_ms: i32,
    pub labels: &'a Labels,
    pub revision: i64,
    pub http: Option<&'a HttpProbe>,
    pub resolve: Option<&'a ResolveProbe>,
}

const SELECT: &str =
    "SELECT p.id, n.name AS node, p.from_workload, host(p.target_ip) AS target_ip, \
    p.target_port, p.timeout_ms, p.labels, p.created_at, p.revision, p.outcome, p.detail, \
    p.latency_us, p.reply_from, p.finished_at, p.http_method, p.http_path, p.resolve_name, \
    host(p.resolver) AS resolver, p.http_status, p.dns_rcode \
    FROM probes p JOIN nodes n ON n.id = p.node_id";

/// One page of a cluster's probes (`scope` names the cluster).
pub async fn list(
    conn: &mut PgConnection,
    scope: Scope,
    list: &ListQuery,
) -> Result<Vec<ProbeRow>> {
    super::rows::page(conn, SELECT, "p", scope, list).await
}

pub async fn load(conn: &mut PgConnection, id: Uuid) -> Result<ProbeRow> {
    super::rows::by_id(conn, SELECT, "p", id).await
}

/// The probe `id` of the scope's cluster, if there is one; with `lock`, locked for the
/// rest of the transaction (after the revision lock).
pub async fn find(
    conn: &mut PgConnection,
    scope: Scope,
    id: Uuid,
    lock: bool,
) -> Result<Option<Uuid>> {
    if lock {
        super::lock_revisions(&mut *conn).await?;
    }
    let sql = format!(
        "SELECT id FROM probes WHERE tenant_id = $1 AND cluster_id = $2 AND id = $3{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(scope.tenant)
        .bind(scope.cluster)
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

/// The node (id and name) a cluster's test workload runs on.
pub async fn workload_node(
    conn: &mut PgConnection,
    scope: Scope,
    workload: &str,
) -> Result<Option<(Uuid, String)>> {
    Ok(sqlx::query_as(
        "SELECT n.id, n.name FROM test_workloads w JOIN nodes n ON n.id = w.node_id \
         WHERE w.tenant_id = $1 AND w.cluster_id = $2 AND w.name = $3",
    )
    .bind(scope.tenant)
    .bind(scope.cluster)
    .bind(workload)
    .fetch_optional(conn)
    .await?)
}

pub async fn insert(conn: &mut PgConnection, scope: Scope, p: NewProbe<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO probes (id, tenant_id, cluster_id, node_id, from_workload, target_ip, \
         target_port, timeout_ms, labels, revision, http_method, http_path, resolve_name, \
         resolver) \
         VALUES ($1, $2, $3, $4, $5, $6::inet, $7, $8, $9, $10, $11, $12, $13, $14::inet)",
    )
    .bind(p.id)
    .bind(scope.tenant)
    .bind(scope.cluster)
    .bind(p.node)
    .bind(p.from_workload)
    .bind(p.target_ip)
    .bind(p.target_port)
    .bind(p.timeout_ms)
    .bind(sqlx::types::Json(p.labels))
    .bind(p.revision)
    .bind(p.http.map(|h| h.method.as_str()))
    .bind(p.http.map(|h| h.path.as_str()))
    .bind(p.resolve.map(|r| r.name.as_str()))
    .bind(p.resolve.map(|r| r.server.to_string()))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM probes WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the cluster's probes a selector matches (after the revision lock); their ids.
pub async fn lock_matching(
    conn: &mut PgConnection,
    scope: Scope,
    selector: &LabelSelector,
) -> Result<Vec<Uuid>> {
    super::rows::lock_matching(conn, "probes", scope, selector).await
}

/// A probe's result as its node reports it.
pub struct ProbeResult<'a> {
    pub outcome: &'a str,
    pub detail: String,
    pub latency_us: i64,
    /// Empty: no reply.
    pub reply_from: String,
    /// 0: no HTTP answer.
    pub http_status: u32,
    /// Empty: no DNS answer.
    pub dns_rcode: String,
}

/// Stores the result of one of the node's own pending probes; `false` when the probe is
/// unknown, another node's, or already done.
pub async fn record_result(
    conn: &mut PgConnection,
    node: Uuid,
    id: Uuid,
    r: ProbeResult<'_>,
) -> Result<bool> {
    let updated: Option<Uuid> = sqlx::query_scalar(
        "UPDATE probes SET outcome = $3, detail = $4, latency_us = $5, \
         reply_from = nullif($6, ''), http_status = $7, dns_rcode = nullif($8, ''), \
         finished_at = now() \
         WHERE id = $1 AND node_id = $2 AND outcome IS NULL RETURNING id",
    )
    .bind(id)
    .bind(node)
    .bind(r.outcome)
    .bind(r.detail)
    .bind(r.latency_us)
    .bind(r.reply_from)
    // A status outside 100-999 is no HTTP status: none.
    .bind(
        i32::try_from(r.http_status)
            .ok()
            .filter(|s| (100..=999).contains(s)),
    )
    .bind(r.dns_rcode)
    .fetch_optional(conn)
    .await?;
    Ok(updated.is_some())
}

/// Sets a probe's revision (the change its result made).
pub async fn set_revision(conn: &mut PgConnection, id: Uuid, revision: i64) -> Result<()> {
    sqlx::query("UPDATE probes SET revision = $2 WHERE id = $1")
        .bind(id)
        .bind(revision)
        .execute(conn)
        .await?;
    Ok(())
}
