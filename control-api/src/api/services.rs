//! `/v1/tenants/{tenant}/clusters/{cluster}/services`: load-balanced services.

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weft_model::labels::Labels;
use weft_model::service::{Algorithm, Backend, Frontend, ServiceSpec, SessionAffinity};

use super::common::{self, LabelMap, Name, ReadErrors, WriteErrors};
use crate::auth::{need, Tenant, TenantCtx};
use crate::error::Result;
use crate::extract::{IfMatch, Json};
use crate::pagination::{ListParams, Page, Query};
use crate::state::AppState;
use crate::store::audit::{self, Subject};
use crate::store::services::{ServiceRow, ServiceWrite};
use crate::store::{self, Op};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_services, create_service))
        .routes(routes!(
            get_service,
            put_service,
            patch_service,
            delete_service
        ))
}

/// The writable part of a service.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceInput {
    #[schema(value_type = Name, example = "web")]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = LabelMap)]
    pub labels: Labels,
    #[schema(schema_with = weft_model::service::frontends_schema)]
    pub frontends: Vec<Frontend>,
    #[serde(default)]
    #[schema(schema_with = weft_model::service::backends_schema)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

impl ServiceInput {
    fn write(&self) -> ServiceWrite<'_> {
        ServiceWrite {
            name: &self.name,
            labels: &self.labels,
            frontends: &self.frontends,
            backends: &self.backends,
            algorithm: self.algorithm,
            session_affinity: self.session_affinity.as_ref(),
        }
    }

    fn spec(&self) -> ServiceSpec {
        ServiceSpec {
            frontends: self.frontends.clone(),
            backends: self.backends.clone(),
            algorithm: self.algorithm,
            session_affinity: self.session_affinity.clone(),
        }
    }

    fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        common::check_common(&mut errs, &self.name, &self.labels, "");
        if let Err(mut e) = self.spec().validate() {
            errs.append(&mut e);
        }
        common::finish(errs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Service {
    pub id: Uuid,
    pub cluster_id: Uuid,
    pub name: String,
    pub labels: Labels,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    pub algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revision: i64,
    /// "Realized on 41 of 42 nodes".
    pub status: common::Realization,
}

impl From<ServiceRow> for Service {
    fn from(r: ServiceRow) -> Self {
        Service {
            algorithm: r.algorithm(),
            session_affinity: r.session_affinity(),
            id: r.id,
            cluster_id: r.cluster_id,
            name: r.name,
            labels: r.labels,
            frontends: r.frontends,
            backends: r.backends,
            created_at: r.created_at,
            updated_at: r.updated_at,
            revision: r.revision,
            status: common::Realization {
                realized_nodes: r.realized_nodes,
                total_nodes: r.total_nodes,
            },
        }
    }
}

impl From<Service> for ServiceInput {
    fn from(s: Service) -> Self {
        ServiceInput {
            name: s.name,
            labels: s.labels,
            frontends: s.frontends,
            backends: s.backends,
            algorithm: s.algorithm,
            session_affinity: s.session_affinity,
        }
    }
}

async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Service> {
    Ok(store::services::load(conn, id).await?.into())
}

/// List a cluster's services (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters/{cluster}/services", tag = "services",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"), ListParams),
    responses((status = 200, body = Page<Service>), ReadErrors),
    security(("bearer" = [])))]
async fn list_services(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, cluster)): Path<(String, String)>,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Page<Service>>> {
    let mut conn = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut conn, &t, &cluster).await?;
    let list = params.resolve()?;
    let rows = store::services::list(&mut conn, sc.tenant, sc.cluster, &list).await?;
    let rows = rows.into_iter().map(Service::from).collect();
    Ok(axum::Json(list.page(rows, |s: &Service| s.id)))
}

/// Get a service by id or name (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters/{cluster}/services/{service}", tag = "services",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("service" = String, Path, description = "Service id or name")),
    responses((status = 200, body = Service, headers(("ETag" = String))), ReadErrors),
    security(("bearer" = [])))]
async fn get_service(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, cluster, service)): Path<(String, String, String)>,
) -> Result<Response> {
    let mut conn = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut conn, &t, &cluster).await?;
    let id = common::require_id(&mut conn, "services", "service", sc, &service).await?;
    let s = load(&mut conn, id).await?;
    Ok(common::ok(s.revision, s))
}

/// Create a service (editor).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/clusters/{cluster}/services", tag = "services",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name")),
    request_body = ServiceInput,
    responses((status = 201, body = Service, headers(("ETag" = String), ("Location" = String))), WriteErrors),
    security(("bearer" = [])))]
async fn create_service(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster)): Path<(String, String)>,
    Json(input): Json<ServiceInput>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    input.validate()?;
    let id = Uuid::now_v7();
    let rev = store::bump_revision(&mut tx, sc.tenant, "service", id, Op::Create).await?;
    store::services::insert(&mut tx, (sc.tenant, sc.cluster), id, rev, &input.write()).await?;
    let s = load(&mut tx, id).await?;
    audit::created(&mut tx, &t, subject(&s), &s).await?;
    tx.commit().await?;
    let location = format!(
        "/v1/tenants/{}/clusters/{}/services/{}",
        sc.tenant, s.cluster_id, s.id
    );
    Ok(common::created(rev, location, s))
}

fn subject(s: &Service) -> Subject<'_> {
    Subject {
        kind: "service",
        id: s.id,
        name: &s.name,
    }
}

async fn update(
    st: &AppState,
    t: &TenantCtx,
    (_tenant, cluster, service): (String, String, String),
    expected: Option<i64>,
    change: impl FnOnce(ServiceInput) -> Result<ServiceInput>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, t, &cluster).await?;
    let (id, current) = common::lock_row(&mut tx, "services", "service", sc, &service).await?;
    let before = load(&mut tx, id).await?;
    let input = change(before.clone().into())?;
    input.validate()?;
    common::check_precondition(expected, current)?;
    let rev = store::bump_revision(&mut tx, sc.tenant, "service", id, Op::Update).await?;
    store::services::update(&mut tx, (sc.tenant, sc.cluster), id, rev, &input.write()).await?;
    let s = load(&mut tx, id).await?;
    audit::updated(&mut tx, t, subject(&s), &before, &s).await?;
    tx.commit().await?;
    Ok(common::ok(rev, s))
}

/// Replace a service (editor): its frontends and backends become exactly these.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/clusters/{cluster}/services/{service}", tag = "services",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("service" = String, Path, description = "Service id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    request_body = ServiceInput,
    responses((status = 200, body = Service, headers(("ETag" = String))), WriteErrors),
    security(("bearer" = [])))]
async fn put_service(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path(path): Path<(String, String, String)>,
    IfMatch(expected): IfMatch,
    Json(input): Json<ServiceInput>,
) -> Result<Response> {
    update(&st, &t, path, expected, |_| Ok(input)).await
}

/// Change some fields of a service with a JSON merge patch (editor). Lists such as
/// `backends` are replaced whole, as RFC 7396 says.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/clusters/{cluster}/services/{service}", tag = "services",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("service" = String, Path, description = "Service id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = Service, headers(("ETag" = String))), WriteErrors),
    security(("bearer" = [])))]
async fn patch_service(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path(path): Path<(String, String, String)>,
    IfMatch(expected): IfMatch,
    Json(patch): Json<serde_json::Map<String, Value>>,
) -> Result<Response> {
    update(&st, &t, path, expected, |cur| common::patched(&cur, &patch)).await
}

/// Delete a service (editor).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/clusters/{cluster}/services/{service}", tag = "services",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("service" = String, Path, description = "Service id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    responses((status = 204, description = "Deleted"), WriteErrors),
    security(("bearer" = [])))]
async fn delete_service(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster, service)): Path<(String, String, String)>,
    IfMatch(expected): IfMatch,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    let id = common::lock_for_write(&mut tx, "services", "service", sc, &service, expected).await?;
    let before = load(&mut tx, id).await?;
    store::bump_revision(&mut tx, sc.tenant, "service", id, Op::Delete).await?;
    store::services::delete(&mut tx, id).await?;
    audit::deleted(&mut tx, &t, subject(&before), &before).await?;
    tx.commit().await?;
    Ok(common::no_content())
}
