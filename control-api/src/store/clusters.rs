//! Clusters: the row (also the REST resource) and its reads and writes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;
use weft_model::labels::Labels;
use weft_model::routing::RoutingMode;

use super::rows::Scope;
use crate::error::Result;
use crate::pagination::ListQuery;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, FromRow)]
pub struct Cluster {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    #[sqlx(json)]
    pub labels: Labels,
    /// See [`ClusterInput::allow_host_to_local_pods`].
    pub allow_host_to_local_pods: bool,
    #[sqlx(try_from = "String", rename = "routing_mode")]
    pub routing: Routing,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Revision of the last change; also the ETag.
    pub revision: i64,
}

/// How the cluster's nodes carry pod traffic to each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// `tunnel` (the default, as in Cilium): each agent encapsulates traffic to another
    /// node's pods in VXLAN (UDP 8472) to that node's IPv4 address, so the network between
    /// nodes only has to carry node addresses. `native`: each agent routes every other
    /// node's pod CIDR via that node's address, so the network must carry pod addresses.
    #[serde(default)]
    pub mode: RoutingMode,
}

impl TryFrom<String> for Routing {
    type Error = String;

    fn try_from(mode: String) -> std::result::Result<Self, String> {
        Ok(Routing {
            mode: mode.parse()?,
        })
    }
}

/// The writable part of a cluster, as stored.
pub struct ClusterWrite<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub labels: &'a Labels,
    pub allow_host_to_local_pods: bool,
    pub routing: Routing,
}

const COLUMNS: &str = "id, name, description, labels, allow_host_to_local_pods, routing_mode, \
                       created_at, updated_at, revision";

/// One page of the tenant's clusters.
pub async fn list(conn: &mut PgConnection, tenant: Uuid, list: &ListQuery) -> Result<Vec<Cluster>> {
    let select = format!("SELECT {COLUMNS} FROM clusters");
    super::rows::page(conn, &select, "clusters", Scope::tenant(tenant), list).await
}

pub async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Cluster> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM clusters WHERE id = $1"))
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}

pub async fn insert(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    revision: i64,
    c: &ClusterWrite<'_>,
) -> Result<Cluster> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO clusters (id, tenant_id, name, description, labels, revision, \
         allow_host_to_local_pods, routing_mode) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(tenant)
    .bind(c.name)
    .bind(c.description)
    .bind(sqlx::types::Json(c.labels))
    .bind(revision)
    .bind(c.allow_host_to_local_pods)
    .bind(c.routing.mode.as_str())
    .fetch_one(conn)
    .await?)
}

pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    revision: i64,
    c: &ClusterWrite<'_>,
) -> Result<Cluster> {
    Ok(sqlx::query_as(&format!(
        "UPDATE clusters SET name = $2, description = $3, labels = $4, revision = $5, \
         allow_host_to_local_pods = $6, routing_mode = $7, updated_at = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(c.name)
    .bind(c.description)
    .bind(sqlx::types::Json(c.labels))
    .bind(revision)
    .bind(c.allow_host_to_local_pods)
    .bind(c.routing.mode.as_str())
    .fetch_one(conn)
    .await?)
}

/// Deletes a cluster and, through the foreign keys, everything in it.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM clusters WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
