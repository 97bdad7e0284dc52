//! Views of what agents report and the control plane derives: nodes per cluster,
//! endpoints and identities per tenant; and a node's removal.

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weft_model::labels::Labels;

use super::common::{self, ReadErrors, Scope, WriteErrors};
use crate::auth::{need, Tenant};
use crate::error::{ApiError, Result};
use crate::extract::IfMatch;
use crate::pagination::{ListParams, Page, Query};
use crate::state::AppState;
use crate::store::audit::{self, Subject};
use crate::store::inventory::{self, NodeRow};
pub use crate::store::inventory::{Endpoint, Identity, CONNECTED_WITHIN_SECONDS};
use crate::store::{self as db, Op};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_nodes))
        .routes(routes!(get_node, delete_node))
        .routes(routes!(list_endpoints))
        .routes(routes!(get_endpoint))
        .routes(routes!(list_identities))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    pub connected: bool,
    pub last_seen: Option<DateTime<Utc>>,
    pub agent_version: Option<String>,
    pub kernel_version: Option<String>,
    /// Last desired-state revision the agent applied.
    pub applied_revision: i64,
    /// The agent's last health report.
    #[schema(value_type = Object)]
    pub health: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: Uuid,
    pub cluster_id: Uuid,
    pub name: String,
    pub labels: Labels,
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<String>,
    pub status: NodeStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revision: i64,
}

impl From<NodeRow> for Node {
    fn from(r: NodeRow) -> Self {
        Node {
            id: r.id,
            cluster_id: r.cluster_id,
            name: r.name,
            labels: r.labels,
            addresses: r.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            pod_cidrs: r.pod_cidrs,
            status: NodeStatus {
                connected: r.connected,
                last_seen: r.last_seen,
                agent_version: r.agent_version,
                kernel_version: r.kernel_version,
                applied_revision: r.applied_revision,
                health: r.health,
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
            revision: r.revision,
        }
    }
}

/// List a cluster's nodes with their agent status (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters/{cluster}/nodes", tag = "inventory",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"), ListParams),
    responses((status = 200, body = Page<Node>), ReadErrors),
    security(("bearer" = [])))]
async fn list_nodes(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, cluster)): Path<(String, String)>,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Page<Node>>> {
    let mut conn = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut conn, &t, &cluster).await?;
    let list = params.resolve()?;
    let rows = inventory::nodes(&mut conn, sc, &list).await?;
    let rows = rows.into_iter().map(Node::from).collect();
    Ok(axum::Json(list.page(rows, |n: &Node| n.id)))
}

/// Get a node by id or name (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters/{cluster}/nodes/{node}", tag = "inventory",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("node" = String, Path, description = "Node id or name")),
    responses((status = 200, body = Node, headers(("ETag" = String))), ReadErrors),
    security(("bearer" = [])))]
async fn get_node(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, cluster, node)): Path<(String, String, String)>,
) -> Result<Response> {
    let mut conn = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut conn, &t, &cluster).await?;
    let id = common::require_id(&mut conn, "nodes", "node", sc, &node).await?;
    let row = inventory::node(&mut conn, id).await?;
    let n = Node::from(row);
    Ok(common::ok(n.revision, n))
}

/// Delete a node (admin): its credential stops working, and its endpoints leave every
/// other node's state (ipcache, policy peers) with the next change. An agent still running
/// with it keeps what it enforces and is refused until registered again.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/clusters/{cluster}/nodes/{node}", tag = "inventory",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("node" = String, Path, description = "Node id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    responses((status = 204, description = "Deleted"), WriteErrors),
    security(("bearer" = [])))]
async fn delete_node(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Admin>,
    Path((_tenant, cluster, node)): Path<(String, String, String)>,
    IfMatch(expected): IfMatch,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    let id = common::lock_for_write(&mut tx, "nodes", "node", sc, &node, expected).await?;
    let before = Node::from(inventory::node(&mut tx, id).await?);
    db::bump_revision(&mut tx, t.id, "node", id, Op::Delete).await?;
    db::nodes::delete(&mut tx, id).await?;
    let subject = Subject {
        kind: "node",
        id,
        name: &before.name,
    };
    audit::deleted(&mut tx, &t, subject, &before).await?;
    tx.commit().await?;
    // Its credential stops working here at once (other replicas: on the change).
    st.node_credentials.invalidate(Some(t.id));
    tracing::info!(node = %before.name, "node deleted");
    Ok(common::no_content())
}

/// Endpoint filters beyond the common ones.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EndpointParams {
    /// Only endpoints of this cluster (id or name).
    pub cluster: Option<String>,
    /// Only endpoints with this identity.
    pub identity: Option<i64>,
    #[param(schema_with = crate::pagination::limit_schema)]
    pub limit: Option<u32>,
    #[param(schema_with = crate::pagination::cursor_schema)]
    pub cursor: Option<String>,
    /// Label selector in Kubernetes syntax.
    #[param(schema_with = weft_model::selector::selector_query_schema)]
    pub labels: Option<String>,
}

/// List the tenant's endpoints (workloads), across clusters (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints", tag = "inventory",
    params(("tenant" = String, Path, description = "Tenant id or name"), EndpointParams),
    responses((status = 200, body = Page<Endpoint>), ReadErrors),
    security(("bearer" = [])))]
async fn list_endpoints(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Query(p): Query<EndpointParams>,
) -> Result<axum::Json<Page<Endpoint>>> {
    let mut conn = t.begin(&st.pool).await?;
    let list = ListParams {
        limit: p.limit,
        cursor: p.cursor,
        labels: p.labels,
    }
    .resolve()?;
    let mut in_cluster = None;
    if let Some(cluster) = &p.cluster {
        let c = common::require_id(
            &mut conn,
            "clusters",
            "cluster",
            Scope::tenant(t.id),
            cluster,
        )
        .await?;
        in_cluster = Some(c);
    }
    let rows = inventory::endpoints(&mut conn, t.id, in_cluster, p.identity, &list).await?;
    Ok(axum::Json(list.page(rows, |e| e.id)))
}

/// Get an endpoint by id (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{endpoint}", tag = "inventory",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("endpoint" = Uuid, Path, description = "Endpoint id")),
    responses((status = 200, body = Endpoint, headers(("ETag" = String))), ReadErrors),
    security(("bearer" = [])))]
async fn get_endpoint(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, endpoint)): Path<(String, String)>,
) -> Result<Response> {
    let id = Uuid::parse_str(&endpoint).map_err(|_| ApiError::not_found("endpoint", &endpoint))?;
    let e = inventory::endpoint(&mut *t.begin(&st.pool).await?, t.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint", &endpoint))?;
    Ok(common::ok(e.revision, e))
}

/// Identity filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IdentityParams {
    #[param(schema_with = crate::pagination::limit_schema)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (an identity number).
    #[param(pattern = "^[+-]?[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// Label selector in Kubernetes syntax.
    #[param(schema_with = weft_model::selector::selector_query_schema)]
    pub labels: Option<String>,
}

/// List the tenant's security identities, by number (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/identities", tag = "inventory",
    params(("tenant" = String, Path, description = "Tenant id or name"), IdentityParams),
    responses((status = 200, body = Page<Identity>), ReadErrors),
    security(("bearer" = [])))]
async fn list_identities(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Query(p): Query<IdentityParams>,
) -> Result<axum::Json<Page<Identity>>> {
    let list = ListParams {
        limit: p.limit,
        cursor: None,
        labels: p.labels,
    }
    .resolve()?;
    let mut after = None;
    // Identities are ordered by number, which is also their cursor.
    if let Some(c) = &p.cursor {
        let bad = || ApiError::invalid_field("cursor", "not a cursor this API issued");
        let digits = c.strip_prefix(['+', '-']).unwrap_or(c);
        if digits.is_empty() || digits.len() > 18 {
            return Err(bad());
        }
        after = Some(c.parse::<i64>().map_err(|_| bad())?);
    }
    let mut tx = t.begin(&st.pool).await?;
    let limit = i64::from(list.limit) + 1;
    let mut items =
        inventory::identities(&mut tx, t.id, after, list.selector.as_ref(), limit).await?;
    let next_cursor = if items.len() > list.limit as usize {
        items.truncate(list.limit as usize);
        items.last().map(|i| i.number.to_string())
    } else {
        None
    };
    Ok(axum::Json(Page { items, next_cursor }))
}
