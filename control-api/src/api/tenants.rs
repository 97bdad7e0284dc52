//! `/v1/tenants`: organisations. Everything else a tenant owns hangs below its path.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weft_model::labels::Labels;

use super::common::{self, LabelMap, Name, ReadErrors, WriteErrors};
use crate::auth::{self as authz, need, Principal, Tenant as Authorized, TenantCtx};
use crate::error::{ApiError, Result};
use crate::extract::{IfMatch, Json};
use crate::pagination::{ListParams, Page, Query};
use crate::state::AppState;
use crate::store::audit::{self, Subject};
pub use crate::store::tenants::Tenant;
use crate::store::tenants::{self, TenantWrite, Visible};
use crate::store::{self, Op};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant, put_tenant, patch_tenant, delete_tenant))
}

/// Longest display name.
const MAX_DISPLAY_NAME: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantInput {
    /// Unique across Weft; a DNS label. Usable in paths instead of the id.
    #[schema(value_type = Name, example = "acme")]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = DisplayName)]
    pub display_name: String,
    #[serde(default)]
    #[schema(value_type = LabelMap)]
    pub labels: Labels,
}

weft_model::contract_schema! {
    /// A tenant's display name, as `TenantInput::validate` accepts it.
    DisplayName => weft_model::contract::string("Free text of at most 200 characters, without NUL.")
        .max_length(Some(MAX_DISPLAY_NAME))
        .pattern(Some(common::NO_NUL_PATTERN))
        .examples(["Acme Corp"])
}

impl TenantInput {
    fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        common::check_common(&mut errs, &self.name, &self.labels, "");
        if self.display_name.contains('\0') {
            errs.push(weft_model::error::FieldError::new(
                "display_name",
                "must not contain NUL",
            ));
        }
        if self.display_name.chars().count() > MAX_DISPLAY_NAME {
            errs.push(weft_model::error::FieldError::new(
                "display_name",
                format!("must be at most {MAX_DISPLAY_NAME} characters"),
            ));
        }
        common::finish(errs)
    }
}

impl From<Tenant> for TenantInput {
    fn from(t: Tenant) -> Self {
        TenantInput {
            name: t.name,
            display_name: t.display_name,
            labels: t.labels,
        }
    }
}

impl TenantInput {
    fn row(&self) -> TenantWrite<'_> {
        TenantWrite {
            name: &self.name,
            display_name: &self.display_name,
            labels: &self.labels,
        }
    }
}

/// List the tenants the caller can see (any caller; the operator sees all).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", params(ListParams),
    responses((status = 200, body = Page<Tenant>), ReadErrors),
    security(("bearer" = [])))]
async fn list_tenants(
    State(st): State<AppState>,
    who: Principal,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Page<Tenant>>> {
    let list = params.resolve()?;
    let mut tx = st.pool.begin().await?;
    let visible = match &who {
        Principal::ApiToken { tenant_id, .. } => Visible::One(*tenant_id),
        Principal::Operator => Visible::All,
        Principal::User { user_id, .. } => Visible::MemberOf(*user_id),
    };
    let rows = tenants::list(&mut tx, visible, &list).await?;
    Ok(axum::Json(list.page(rows, |t| t.id)))
}

/// Get a tenant by id or name (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = Tenant, headers(("ETag" = String))), ReadErrors),
    security(("bearer" = [])))]
async fn get_tenant(
    State(st): State<AppState>,
    Authorized(t, _): Authorized<need::Viewer>,
) -> Result<Response> {
    let mut conn = t.begin(&st.pool).await?;
    let row = tenants::load(&mut conn, t.id).await?;
    Ok(common::ok(row.revision, row))
}

/// Create a tenant: the operator, or a signed-in person, who becomes its owner.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = TenantInput,
    responses((status = 201, body = Tenant, headers(("ETag" = String), ("Location" = String))), WriteErrors),
    security(("bearer" = [])))]
async fn create_tenant(
    State(st): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    Json(input): Json<TenantInput>,
) -> Result<Response> {
    let owner = match &who {
        Principal::Operator => None,
        Principal::User { user_id, .. } => Some(*user_id),
        Principal::ApiToken { .. } => {
            return Err(ApiError::Forbidden(
                "API tokens cannot create tenants: sign in, or use the operator token".into(),
            ))
        }
    };
    input.validate()?;
    let mut tx = st.pool.begin().await?;
    let id = Uuid::now_v7();
    // The new tenant's own transaction: RLS accepts the row only for this id.
    authz::set_tenant(&mut tx, id).await?;
    let rev = store::next_revision(&mut tx).await?;
    let t = tenants::insert(&mut tx, id, rev, input.row(), owner).await?;
    store::record_change(&mut tx, rev, id, "tenant", id, Op::Create).await?;
    let ctx = TenantCtx {
        id,
        name: t.name.clone(),
        role: authz::Role::Owner,
        actor: who.actor(),
        request_id: request_id(&headers),
    };
    audit::created(&mut tx, &ctx, subject(&t), &t).await?;
    tx.commit().await?;
    tracing::info!(tenant = %t.name, "tenant created");
    let location = format!("/v1/tenants/{}", t.id);
    Ok(common::created(rev, location, t))
}

fn subject(t: &Tenant) -> Subject<'_> {
    Subject {
        kind: "tenant",
        id: t.id,
        name: &t.name,
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

async fn update(
    st: &AppState,
    t: &TenantCtx,
    expected: Option<i64>,
    change: impl FnOnce(TenantInput) -> Result<TenantInput>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let current = store::rows::lock(&mut tx, "tenants", t.id).await?;
    let before = tenants::load(&mut tx, t.id).await?;
    let input = change(before.clone().into())?;
    input.validate()?;
    common::check_precondition(expected, current)?;
    let rev = store::bump_revision(&mut tx, t.id, "tenant", t.id, Op::Update).await?;
    let row = tenants::update(&mut tx, t.id, rev, input.row()).await?;
    audit::updated(&mut tx, t, subject(&row), &before, &row).await?;
    tx.commit().await?;
    Ok(common::ok(rev, row))
}

/// Replace a tenant's name, display name and labels (admin).
#[utoipa::path(put, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    request_body = TenantInput,
    responses((status = 200, body = Tenant, headers(("ETag" = String))), WriteErrors),
    security(("bearer" = [])))]
async fn put_tenant(
    State(st): State<AppState>,
    Authorized(t, _): Authorized<need::Admin>,
    IfMatch(expected): IfMatch,
    Json(input): Json<TenantInput>,
) -> Result<Response> {
    update(&st, &t, expected, |_| Ok(input)).await
}

/// Change some fields of a tenant with a JSON merge patch (admin).
#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = Tenant, headers(("ETag" = String))), WriteErrors),
    security(("bearer" = [])))]
async fn patch_tenant(
    State(st): State<AppState>,
    Authorized(t, _): Authorized<need::Admin>,
    IfMatch(expected): IfMatch,
    Json(patch): Json<serde_json::Map<String, Value>>,
) -> Result<Response> {
    update(&st, &t, expected, |cur| common::patched(&cur, &patch)).await
}

/// Delete a tenant and everything it owns (owner).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    responses((status = 204, description = "Deleted"), WriteErrors),
    security(("bearer" = [])))]
async fn delete_tenant(
    State(st): State<AppState>,
    Authorized(t, _): Authorized<need::Owner>,
    IfMatch(expected): IfMatch,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let current = store::rows::lock(&mut tx, "tenants", t.id).await?;
    common::check_precondition(expected, current)?;
    // The change log rows of the tenant go with it (cascade); the change is still announced,
    // so every replica forgets the tenant's node credentials and its agents' streams wake.
    let rev = store::next_revision(&mut tx).await?;
    tenants::delete(&mut tx, t.id).await?;
    store::announce(&mut tx, rev, t.id, "tenant", t.id, Op::Delete).await?;
    tx.commit().await?;
    st.node_credentials.invalidate(Some(t.id));
    tracing::info!(tenant = %t.name, "tenant deleted");
    Ok(common::no_content())
}
