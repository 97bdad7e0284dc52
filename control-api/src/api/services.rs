//! `/v1/tenants/{tenant}/clusters/{cluster}/services`: load-balanced services.

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{FromRow, PgConnection, QueryBuilder};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weft_model::labels::Labels;
use weft_model::service::{Algorithm, Backend, Frontend, ServiceSpec, SessionAffinity};

use super::common::{self, LabelMap, Name, ReadErrors, Scope, WriteErrors};
use crate::audit::{self, Subject};
use crate::auth::{need, Tenant, TenantCtx};
use crate::db::{self, Op};
use crate::error::Result;
use crate::extract::{IfMatch, Json};
use crate::pagination::{ListParams, Page, Query};
use crate::state::AppState;

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

#[derive(FromRow)]
struct Row {
    id: Uuid,
    cluster_id: Uuid,
    name: String,
    #[sqlx(json)]
    labels: Labels,
    #[sqlx(json)]
    frontends: Vec<Frontend>,
    #[sqlx(json)]
    backends: Vec<Backend>,
    algorithm: String,
    affinity_timeout: Option<i32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    revision: i64,
    realized_nodes: i64,
    total_nodes: i64,
}

impl From<Row> for Service {
    fn from(r: Row) -> Self {
        Service {
            id: r.id,
            cluster_id: r.cluster_id,
            name: r.name,
            labels: r.labels,
            frontends: r.frontends,
            backends: r.backends,
            // The column's CHECK allows only these two.
            algorithm: if r.algorithm == "maglev" {
                Algorithm::Maglev
            } else {
                Algorithm::Random
            },
            session_affinity: r.affinity_timeout.map(|t| SessionAffinity {
                timeout_seconds: t.unsigned_abs(),
            }),
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

/// A service with its frontends and backends in one round trip, in their given order.
const SELECT: &str = "SELECT s.id, s.cluster_id, s.name, s.labels, s.algorithm, \
    s.affinity_timeout, s.created_at, s.updated_at, s.revision, \
    (SELECT count(*) FROM nodes n WHERE n.tenant_id = s.tenant_id AND n.cluster_id = s.cluster_id) AS total_nodes, \
    (SELECT count(*) FROM nodes n WHERE n.tenant_id = s.tenant_id AND n.cluster_id = s.cluster_id AND n.applied_revision >= s.revision) AS realized_nodes, \
    coalesce((SELECT json_agg(json_build_object('vip', host(f.vip), 'port', f.port, \
        'protocol', f.protocol) ORDER BY f.position) \
        FROM service_frontends f WHERE f.service_id = s.id), '[]'::json) AS frontends, \
    coalesce((SELECT json_agg(json_build_object('address', host(b.address), 'port', b.port, \
        'weight', b.weight, 'state', b.state) ORDER BY b.position) \
        FROM service_backends b WHERE b.service_id = s.id), '[]'::json) AS backends \
    FROM services s";

/// Every service of a tenant, for the desired-state compiler.
pub async fn all_of_tenant(conn: &mut PgConnection, tenant: Uuid) -> Result<Vec<Service>> {
    let rows: Vec<Row> = sqlx::query_as(&format!("{SELECT} WHERE s.tenant_id = $1 ORDER BY s.id"))
        .bind(tenant)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(Service::from).collect())
}

async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Service> {
    let row: Row = sqlx::query_as(&format!("{SELECT} WHERE s.id = $1"))
        .bind(id)
        .fetch_one(conn)
        .await?;
    Ok(row.into())
}

/// Resolves the `{cluster}` within the authorized tenant.
async fn scope(t: &TenantCtx, cluster: &str, conn: &mut PgConnection) -> Result<Scope> {
    let c = common::require_id(conn, "clusters", "cluster", Scope::tenant(t.id), cluster).await?;
    Ok(Scope::cluster(t.id, c))
}

/// Writes frontends and backends (replacing what was there).
async fn write_children(
    conn: &mut PgConnection,
    scope: Scope,
    id: Uuid,
    input: &ServiceInput,
) -> Result<()> {
    sqlx::query("DELETE FROM service_frontends WHERE service_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM service_backends WHERE service_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let vips: Vec<String> = input.frontends.iter().map(|f| f.vip.to_string()).collect();
    let ports: Vec<i32> = input.frontends.iter().map(|f| i32::from(f.port)).collect();
    let protos: Vec<&str> = input
        .frontends
        .iter()
        .map(|f| f.protocol.as_str())
        .collect();
    sqlx::query(
        "INSERT INTO service_frontends (service_id, tenant_id, cluster_id, position, vip, port, protocol) \
         SELECT $1, $2, $3, pos - 1, vip::inet, port, proto \
         FROM unnest($4::text[], $5::int[], $6::text[]) WITH ORDINALITY AS f(vip, port, proto, pos)",
    )
    .bind(id)
    .bind(scope.tenant)
    .bind(scope.cluster)
    .bind(&vips)
    .bind(&ports)
    .bind(&protos)
    .execute(&mut *conn)
    .await?;
    let addrs: Vec<String> = input
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    let ports: Vec<i32> = input.backends.iter().map(|b| i32::from(b.port)).collect();
    let weights: Vec<i64> = input.backends.iter().map(|b| i64::from(b.weight)).collect();
    let states: Vec<&str> = input.backends.iter().map(|b| b.state.as_str()).collect();
    sqlx::query(
        "INSERT INTO service_backends (service_id, tenant_id, position, address, port, weight, state) \
         SELECT $1, $2, pos - 1, addr::inet, port, weight, state \
         FROM unnest($3::text[], $4::int[], $5::bigint[], $6::text[]) WITH ORDINALITY AS b(addr, port, weight, state, pos)",
    )
    .bind(id)
    .bind(scope.tenant)
    .bind(&addrs)
    .bind(&ports)
    .bind(&weights)
    .bind(&states)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn affinity(input: &ServiceInput) -> Option<i32> {
    input
        .session_affinity
        .as_ref()
        .and_then(|a| i32::try_from(a.timeout_seconds).ok())
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
    let sc = scope(&t, &cluster, &mut conn).await?;
    let list = params.resolve()?;
    let mut qb = QueryBuilder::new(format!("{SELECT} WHERE s.tenant_id = "));
    qb.push_bind(sc.tenant)
        .push(" AND s.cluster_id = ")
        .push_bind(sc.cluster);
    list.push_tail(&mut qb, "s");
    let rows: Vec<Row> = qb.build_query_as().fetch_all(&mut *conn).await?;
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
    let sc = scope(&t, &cluster, &mut conn).await?;
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
    let sc = scope(&t, &cluster, &mut tx).await?;
    input.validate()?;
    let id = Uuid::now_v7();
    let rev = db::bump_revision(&mut tx, sc.tenant, "service", id, Op::Create).await?;
    sqlx::query(
        "INSERT INTO services (id, tenant_id, cluster_id, name, labels, algorithm, affinity_timeout, revision) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(sc.tenant)
    .bind(sc.cluster)
    .bind(&input.name)
    .bind(sqlx::types::Json(&input.labels))
    .bind(input.algorithm.as_str())
    .bind(affinity(&input))
    .bind(rev)
    .execute(&mut *tx)
    .await?;
    write_children(&mut tx, sc, id, &input).await?;
    let s = load(&mut tx, id).await?;
    audit::record(
        &mut tx,
        &t,
        "create",
        subject(&s),
        None,
        audit::snapshot(&s),
    )
    .await?;
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
    let sc = scope(t, &cluster, &mut tx).await?;
    let (id, current) = common::lock_row(&mut tx, "services", "service", sc, &service).await?;
    let before = load(&mut tx, id).await?;
    let input = change(before.clone().into())?;
    input.validate()?;
    common::check_precondition(expected, current)?;
    let rev = db::bump_revision(&mut tx, sc.tenant, "service", id, Op::Update).await?;
    sqlx::query(
        "UPDATE services SET name = $2, labels = $3, algorithm = $4, affinity_timeout = $5, \
         revision = $6, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(&input.name)
    .bind(sqlx::types::Json(&input.labels))
    .bind(input.algorithm.as_str())
    .bind(affinity(&input))
    .bind(rev)
    .execute(&mut *tx)
    .await?;
    write_children(&mut tx, sc, id, &input).await?;
    let s = load(&mut tx, id).await?;
    audit::record(
        &mut tx,
        t,
        "update",
        subject(&s),
        audit::snapshot(&before),
        audit::snapshot(&s),
    )
    .await?;
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
    let sc = scope(&t, &cluster, &mut tx).await?;
    let id = common::lock_for_write(&mut tx, "services", "service", sc, &service, expected).await?;
    let before = load(&mut tx, id).await?;
    db::bump_revision(&mut tx, sc.tenant, "service", id, Op::Delete).await?;
    sqlx::query("DELETE FROM services WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        &t,
        "delete",
        subject(&before),
        audit::snapshot(&before),
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(common::no_content())
}
