//! Network policies: rows with how many nodes have applied them, and the writes.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;
use weft_model::labels::Labels;
use weft_model::policy::PolicySpec;

use super::rows::Scope;
use crate::error::Result;
use crate::pagination::ListQuery;

/// A policy as stored, its cluster scope by name, with how many of the nodes in scope
/// have applied it.
#[derive(FromRow)]
pub struct PolicyRow {
    pub id: Uuid,
    pub name: String,
    #[sqlx(json)]
    pub labels: Labels,
    pub description: String,
    #[sqlx(json)]
    pub specs: Vec<PolicySpec>,
    pub clusters: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revision: i64,
    pub realized_nodes: i64,
    pub total_nodes: i64,
}

/// The writable part of a policy, as stored (`clusters`: `None` for every cluster).
pub struct PolicyWrite<'a> {
    pub name: &'a str,
    pub labels: &'a Labels,
    pub description: &'a str,
    pub specs: &'a [PolicySpec],
    pub clusters: Option<Vec<Uuid>>,
}

// Status counts come from the tenant's nodes grouped once per query by (cluster, applied
// revision) — a handful of rows once agents converge — not from a pass over the nodes per
// policy (a page of 100 policies at 10,000 nodes was 2 million rows).
const SELECT: &str = "WITH node_counts AS MATERIALIZED ( \
      SELECT cluster_id, applied_revision, count(*) AS n FROM nodes \
      WHERE tenant_id = weft_tenant() GROUP BY cluster_id, applied_revision) \
    SELECT p.id, p.name, p.labels, p.description, p.specs, \
    CASE WHEN p.cluster_ids IS NULL THEN NULL ELSE \
      array(SELECT c.name FROM clusters c WHERE c.id = ANY(p.cluster_ids) ORDER BY c.name) END AS clusters, \
    p.created_at, p.updated_at, p.revision, s.total_nodes, s.realized_nodes \
    FROM policies p CROSS JOIN LATERAL ( \
      SELECT coalesce(sum(c.n), 0)::bigint AS total_nodes, \
             coalesce(sum(c.n) FILTER (WHERE c.applied_revision >= p.revision), 0)::bigint AS realized_nodes \
      FROM node_counts c WHERE p.cluster_ids IS NULL OR c.cluster_id = ANY(p.cluster_ids)) s";

/// One page of the tenant's policies.
pub async fn list(
    conn: &mut PgConnection,
    tenant: Uuid,
    list: &ListQuery,
) -> Result<Vec<PolicyRow>> {
    super::rows::page(conn, SELECT, "p", Scope::tenant(tenant), list).await
}

pub async fn load(conn: &mut PgConnection, id: Uuid) -> Result<PolicyRow> {
    super::rows::by_id(conn, SELECT, "p", id).await
}

pub async fn insert(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    revision: i64,
    p: PolicyWrite<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO policies (id, tenant_id, name, labels, description, specs, cluster_ids, revision) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(tenant)
    .bind(p.name)
    .bind(sqlx::types::Json(p.labels))
    .bind(p.description)
    .bind(sqlx::types::Json(p.specs))
    .bind(p.clusters)
    .bind(revision)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    revision: i64,
    p: PolicyWrite<'_>,
) -> Result<()> {
    sqlx::query(
        "UPDATE policies SET name = $2, labels = $3, description = $4, specs = $5, \
         cluster_ids = $6, revision = $7, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(p.name)
    .bind(sqlx::types::Json(p.labels))
    .bind(p.description)
    .bind(sqlx::types::Json(p.specs))
    .bind(p.clusters)
    .bind(revision)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM policies WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
