//! What agents report and the control plane derives: nodes, endpoints, identities.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;
use weft_model::labels::Labels;
use weft_model::selector::LabelSelector;

use super::rows::Scope;
use crate::error::Result;
use crate::pagination::{push_label_filter, ListQuery};

/// A node is connected when it reported within this many seconds.
pub const CONNECTED_WITHIN_SECONDS: i64 = 30;

/// A node as stored, with whether its agent is connected.
#[derive(FromRow)]
pub struct NodeRow {
    pub id: Uuid,
    pub cluster_id: Uuid,
    pub name: String,
    #[sqlx(json)]
    pub labels: Labels,
    pub addresses: Vec<String>,
    pub pod_cidrs: Vec<String>,
    pub agent_version: Option<String>,
    pub kernel_version: Option<String>,
    pub last_seen: Option<DateTime<Utc>>,
    pub connected: bool,
    pub applied_revision: i64,
    pub health: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revision: i64,
}

fn node_select() -> String {
    format!(
        "SELECT n.id, n.cluster_id, n.name, n.labels, \
         array(SELECT host(a) FROM unnest(n.addresses) a) AS addresses, \
         array(SELECT c::text FROM unnest(n.pod_cidrs) c) AS pod_cidrs, \
         n.agent_version, n.kernel_version, n.last_seen, \
         coalesce(n.last_seen > now() - interval '{CONNECTED_WITHIN_SECONDS} seconds', false) AS connected, \
         n.applied_revision, n.health, n.created_at, n.updated_at, n.revision FROM nodes n"
    )
}

/// One page of a cluster's nodes (`scope` names the cluster).
pub async fn nodes(
    conn: &mut PgConnection,
    scope: Scope,
    list: &ListQuery,
) -> Result<Vec<NodeRow>> {
    super::rows::page(conn, &node_select(), "n", scope, list).await
}

pub async fn node(conn: &mut PgConnection, id: Uuid) -> Result<NodeRow> {
    Ok(
        sqlx::query_as(&format!("{} WHERE n.id = $1", node_select()))
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}

/// A node's id and name, by id.
pub async fn node_name(conn: &mut PgConnection, id: Uuid) -> Result<Option<(Uuid, String)>> {
    Ok(sqlx::query_as("SELECT id, name FROM nodes WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct Endpoint {
    pub id: Uuid,
    pub cluster_id: Uuid,
    pub node_id: Uuid,
    pub name: String,
    #[sqlx(json)]
    pub labels: Labels,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    /// Security identity derived from the labels.
    pub identity: Option<i64>,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revision: i64,
}

const ENDPOINT_SELECT: &str = "SELECT e.id, e.cluster_id, e.node_id, e.name, e.labels, \
    host(e.ipv4) AS ipv4, host(e.ipv6) AS ipv6, e.identity, e.state, e.created_at, \
    e.updated_at, e.revision FROM endpoints e";

/// One page of the tenant's endpoints, optionally of one cluster and one identity.
pub async fn endpoints(
    conn: &mut PgConnection,
    tenant: Uuid,
    cluster: Option<Uuid>,
    identity: Option<i64>,
    list: &ListQuery,
) -> Result<Vec<Endpoint>> {
    let mut qb = QueryBuilder::new(format!("{ENDPOINT_SELECT} WHERE e.tenant_id = "));
    qb.push_bind(tenant);
    if let Some(c) = cluster {
        qb.push(" AND e.cluster_id = ").push_bind(c);
    }
    if let Some(identity) = identity {
        qb.push(" AND e.identity = ").push_bind(identity);
    }
    list.push_tail(&mut qb, "e");
    Ok(qb.build_query_as().fetch_all(conn).await?)
}

pub async fn endpoint(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<Option<Endpoint>> {
    Ok(sqlx::query_as(&format!(
        "{ENDPOINT_SELECT} WHERE e.tenant_id = $1 AND e.id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct Identity {
    /// The number the datapath uses; the same label set has the same number in every
    /// cluster of the tenant.
    pub number: i64,
    #[sqlx(json)]
    pub labels: Labels,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

/// Up to `limit` of the tenant's identities by number, after `after`, matching `selector`.
pub async fn identities(
    conn: &mut PgConnection,
    tenant: Uuid,
    after: Option<i64>,
    selector: Option<&LabelSelector>,
    limit: i64,
) -> Result<Vec<Identity>> {
    let mut qb = QueryBuilder::new(
        "SELECT number, labels, created_at, last_used_at FROM identities WHERE tenant_id = ",
    );
    qb.push_bind(tenant);
    if let Some(after) = after {
        qb.push(" AND number > ").push_bind(after);
    }
    if let Some(sel) = selector {
        push_label_filter(&mut qb, "labels", sel);
    }
    qb.push(" ORDER BY number LIMIT ").push_bind(limit);
    Ok(qb.build_query_as().fetch_all(conn).await?)
}
