//! `/v1/tenants/{tenant}/clusters`: the tenant's clusters, each a set of nodes.

use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weft_model::labels::Labels;

use super::common::{self, Description, LabelMap, Name, ReadErrors, Scope, WriteErrors};
use crate::auth::{need, Tenant, TenantCtx};
use crate::error::Result;
use crate::extract::{IfMatch, Json};
use crate::pagination::{ListParams, Page, Query};
use crate::state::AppState;
use crate::store::audit::{self, Subject};
pub use crate::store::clusters::Cluster;
use crate::store::clusters::{self, ClusterWrite, Routing};
use crate::store::{self, Op};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(
            get_cluster,
            put_cluster,
            patch_cluster,
            delete_cluster
        ))
}

/// The writable part of a cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterInput {
    /// Unique in the tenant; a DNS label.
    #[schema(value_type = Name, example = "prod-eu")]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = LabelMap)]
    pub labels: Labels,
    #[serde(default)]
    #[schema(value_type = Description)]
    pub description: String,
    /// Let each node's own host reach the endpoints on that node whatever their ingress
    /// policy (kubelet probes), as Cilium does on Kubernetes; deny rules still win.
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub allow_host_to_local_pods: bool,
    /// How the cluster's nodes carry pod traffic to each other; changing it reconfigures
    /// every node (connections between nodes' pods break while they switch).
    #[serde(default)]
    pub routing: Routing,
}

fn yes() -> bool {
    true
}

impl ClusterInput {
    fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        common::check_common(&mut errs, &self.name, &self.labels, &self.description);
        common::finish(errs)
    }
}

impl From<Cluster> for ClusterInput {
    fn from(c: Cluster) -> Self {
        ClusterInput {
            name: c.name,
            labels: c.labels,
            description: c.description,
            allow_host_to_local_pods: c.allow_host_to_local_pods,
            routing: c.routing,
        }
    }
}

fn subject(c: &Cluster) -> Subject<'_> {
    Subject {
        kind: "cluster",
        id: c.id,
        name: &c.name,
    }
}

/// List clusters (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters", tag = "clusters",
    params(("tenant" = String, Path, description = "Tenant id or name"), ListParams),
    responses((status = 200, body = Page<Cluster>), ReadErrors),
    security(("bearer" = [])))]
async fn list_clusters(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Page<Cluster>>> {
    let list = params.resolve()?;
    let mut tx = t.begin(&st.pool).await?;
    let rows = clusters::list(&mut tx, t.id, &list).await?;
    Ok(axum::Json(list.page(rows, |c| c.id)))
}

impl ClusterInput {
    fn row(&self) -> ClusterWrite<'_> {
        ClusterWrite {
            name: &self.name,
            description: &self.description,
            labels: &self.labels,
            allow_host_to_local_pods: self.allow_host_to_local_pods,
            routing: self.routing,
        }
    }
}

/// Get a cluster by id or name (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters/{cluster}", tag = "clusters",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name")),
    responses((status = 200, body = Cluster, headers(("ETag" = String))), ReadErrors),
    security(("bearer" = [])))]
async fn get_cluster(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, cluster)): Path<(String, String)>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let id = common::require_id(
        &mut tx,
        "clusters",
        "cluster",
        Scope::tenant(t.id),
        &cluster,
    )
    .await?;
    let c = clusters::load(&mut tx, id).await?;
    Ok(common::ok(c.revision, c))
}

/// Create a cluster (editor).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/clusters", tag = "clusters",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    request_body = ClusterInput,
    responses((status = 201, body = Cluster, headers(("ETag" = String), ("Location" = String))), WriteErrors),
    security(("bearer" = [])))]
async fn create_cluster(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Json(input): Json<ClusterInput>,
) -> Result<Response> {
    input.validate()?;
    let mut tx = t.begin(&st.pool).await?;
    let id = Uuid::now_v7();
    let rev = store::bump_revision(&mut tx, t.id, "cluster", id, Op::Create).await?;
    let c = clusters::insert(&mut tx, t.id, id, rev, &input.row()).await?;
    audit::created(&mut tx, &t, subject(&c), &c).await?;
    tx.commit().await?;
    tracing::info!(tenant = %t.name, cluster = %c.name, revision = rev, "cluster created");
    let location = format!("/v1/tenants/{}/clusters/{}", t.id, c.id);
    Ok(common::created(rev, location, c))
}

async fn update(
    st: &AppState,
    t: &TenantCtx,
    key: &str,
    expected: Option<i64>,
    change: impl FnOnce(ClusterInput) -> Result<ClusterInput>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let (id, current) =
        common::lock_row(&mut tx, "clusters", "cluster", Scope::tenant(t.id), key).await?;
    let before = clusters::load(&mut tx, id).await?;
    let input = change(before.clone().into())?;
    input.validate()?;
    common::check_precondition(expected, current)?;
    let rev = store::bump_revision(&mut tx, t.id, "cluster", id, Op::Update).await?;
    let c = clusters::update(&mut tx, id, rev, &input.row()).await?;
    audit::updated(&mut tx, t, subject(&c), &before, &c).await?;
    tx.commit().await?;
    Ok(common::ok(rev, c))
}

/// Replace a cluster (editor). `If-Match` guards against lost updates.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/clusters/{cluster}", tag = "clusters",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    request_body = ClusterInput,
    responses((status = 200, body = Cluster, headers(("ETag" = String))), WriteErrors),
    security(("bearer" = [])))]
async fn put_cluster(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
    Json(input): Json<ClusterInput>,
) -> Result<Response> {
    update(&st, &t, &cluster, expected, |_| Ok(input)).await
}

/// Change some fields of a cluster with a JSON merge patch (editor).
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/clusters/{cluster}", tag = "clusters",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = Cluster, headers(("ETag" = String))), WriteErrors),
    security(("bearer" = [])))]
async fn patch_cluster(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
    Json(patch): Json<serde_json::Map<String, Value>>,
) -> Result<Response> {
    update(&st, &t, &cluster, expected, |cur| {
        common::patched(&cur, &patch)
    })
    .await
}

/// Delete a cluster and everything in it: nodes, endpoints, services (editor).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/clusters/{cluster}", tag = "clusters",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    responses((status = 204, description = "Deleted"), WriteErrors),
    security(("bearer" = [])))]
async fn delete_cluster(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let id = common::lock_for_write(
        &mut tx,
        "clusters",
        "cluster",
        Scope::tenant(t.id),
        &cluster,
        expected,
    )
    .await?;
    let before = clusters::load(&mut tx, id).await?;
    store::bump_revision(&mut tx, t.id, "cluster", id, Op::Delete).await?;
    clusters::delete(&mut tx, id).await?;
    audit::deleted(&mut tx, &t, subject(&before), &before).await?;
    tx.commit().await?;
    // Its nodes' credentials stop working here at once (other replicas: on the change).
    st.node_credentials.invalidate(Some(t.id));
    Ok(common::no_content())
}
