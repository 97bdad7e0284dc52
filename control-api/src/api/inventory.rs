//! Read-only views of what agents report and the control plane derives: nodes per
//! cluster, endpoints and identities per tenant.

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weft_model::labels::Labels;

use super::common::{self, ReadErrors, Scope};
use crate::auth::{need, Tenant};
use crate::error::{ApiError, Result};
use crate::pagination::{ListParams, Page, Query};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_nodes))
        .routes(routes!(get_node))
        .routes(routes!(list_endpoints))
        .routes(routes!(get_endpoint))
        .routes(routes!(list_identities))
}

/// A node is connected when it reported within this many seconds.
pub const CONNECTED_WITHIN_SECONDS: i64 = 30;

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

#[derive(FromRow)]
struct NodeRow {
    id: Uuid,
    cluster_id: Uuid,
    name: String,
    #[sqlx(json)]
    labels: Labels,
    addresses: Vec<String>,
    pod_cidrs: Vec<String>,
    agent_version: Option<String>,
    kernel_version: Option<String>,
    last_seen: Option<DateTime<Utc>>,
    connected: bool,
    applied_revision: i64,
    health: serde_json::Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    revision: i64,
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
    let c = common::require_id(
        &mut conn,
        "clusters",
        "cluster",
        Scope::tenant(t.id),
        &cluster,
    )
    .await?;
    let list = params.resolve()?;
    let mut qb = QueryBuilder::new(format!("{} WHERE n.tenant_id = ", node_select()));
    qb.push_bind(t.id).push(" AND n.cluster_id = ").push_bind(c);
    list.push_tail(&mut qb, "n");
    let rows: Vec<NodeRow> = qb.build_query_as().fetch_all(&mut *conn).await?;
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
    let c = common::require_id(
        &mut conn,
        "clusters",
        "cluster",
        Scope::tenant(t.id),
        &cluster,
    )
    .await?;
    let id = common::require_id(&mut conn, "nodes", "node", Scope::cluster(t.id, c), &node).await?;
    let row: NodeRow = sqlx::query_as(&format!("{} WHERE n.id = $1", node_select()))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    let n = Node::from(row);
    Ok(common::ok(n.revision, n))
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
    let mut qb = QueryBuilder::new(format!("{ENDPOINT_SELECT} WHERE e.tenant_id = "));
    qb.push_bind(t.id);
    if let Some(cluster) = &p.cluster {
        let c = common::require_id(
            &mut conn,
            "clusters",
            "cluster",
            Scope::tenant(t.id),
            cluster,
        )
        .await?;
        qb.push(" AND e.cluster_id = ").push_bind(c);
    }
    if let Some(identity) = p.identity {
        qb.push(" AND e.identity = ").push_bind(identity);
    }
    list.push_tail(&mut qb, "e");
    let rows: Vec<Endpoint> = qb.build_query_as().fetch_all(&mut *conn).await?;
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
    let e: Endpoint = sqlx::query_as(&format!(
        "{ENDPOINT_SELECT} WHERE e.tenant_id = $1 AND e.id = $2"
    ))
    .bind(t.id)
    .bind(id)
    .fetch_optional(&mut *t.begin(&st.pool).await?)
    .await?
    .ok_or_else(|| ApiError::not_found("endpoint", &endpoint))?;
    Ok(common::ok(e.revision, e))
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
    let mut qb = QueryBuilder::new(
        "SELECT number, labels, created_at, last_used_at FROM identities WHERE tenant_id = ",
    );
    qb.push_bind(t.id);
    // Identities are ordered by number, which is also their cursor.
    if let Some(c) = &p.cursor {
        let bad = || ApiError::invalid_field("cursor", "not a cursor this API issued");
        let digits = c.strip_prefix(['+', '-']).unwrap_or(c);
        if digits.is_empty() || digits.len() > 18 {
            return Err(bad());
        }
        let after: i64 = c.parse().map_err(|_| bad())?;
        qb.push(" AND number > ").push_bind(after);
    }
    if let Some(sel) = &list.selector {
        crate::pagination::push_label_filter(&mut qb, "labels", sel);
    }
    qb.push(" ORDER BY number LIMIT ")
        .push_bind(i64::from(list.limit) + 1);
    let mut tx = t.begin(&st.pool).await?;
    let mut items: Vec<Identity> = qb.build_query_as().fetch_all(&mut *tx).await?;
    let next_cursor = if items.len() > list.limit as usize {
        items.truncate(list.limit as usize);
        items.last().map(|i| i.number.to_string())
    } else {
        None
    };
    Ok(axum::Json(Page { items, next_cursor }))
}
