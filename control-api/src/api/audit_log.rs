//! `GET /v1/tenants/{tenant}/audit-log`: who changed what, when, with before and after.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{FromRow, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::common::ReadErrors;
use crate::auth::{need, Tenant};
use crate::error::Result;
use crate::pagination::{ListParams, Page, Query};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_log))
}

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// `operator`, `api_token` or `user`.
    pub actor_kind: String,
    pub actor_id: Option<Uuid>,
    pub actor_name: String,
    /// `create`, `update`, `delete`, `revoke`, `import-create`, `import-update`.
    pub action: String,
    pub resource_kind: String,
    pub resource_id: Uuid,
    pub resource_name: String,
    pub request_id: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this kind of resource (`cluster`, `service`, `policy`, `api_token`, `tenant`).
    #[param(pattern = "^[^\\x00]*$")]
    pub resource_kind: Option<String>,
    /// Only this resource.
    pub resource_id: Option<Uuid>,
    /// Only this action.
    #[param(pattern = "^[^\\x00]*$")]
    pub action: Option<String>,
    /// Only changes by this actor (token or user name).
    #[param(pattern = "^[^\\x00]*$")]
    pub actor: Option<String>,
    /// Only changes at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only changes before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    #[param(schema_with = crate::pagination::limit_schema)]
    pub limit: Option<u32>,
    #[param(schema_with = crate::pagination::cursor_schema)]
    pub cursor: Option<String>,
}

/// Read the tenant's audit log, oldest first (admin).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit-log", tag = "audit",
    params(("tenant" = String, Path, description = "Tenant id or name"), AuditParams),
    responses((status = 200, body = Page<AuditEntry>), ReadErrors),
    security(("bearer" = [])))]
async fn list_audit_log(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Admin>,
    Query(p): Query<AuditParams>,
) -> Result<axum::Json<Page<AuditEntry>>> {
    let list = ListParams {
        limit: p.limit,
        cursor: p.cursor,
        labels: None,
    }
    .resolve()?;
    // PostgreSQL text cannot hold NUL: such a filter is a bad request, not a lookup.
    for (field, v) in [
        ("resource_kind", &p.resource_kind),
        ("action", &p.action),
        ("actor", &p.actor),
    ] {
        if v.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(crate::error::ApiError::invalid_field(
                field,
                "must not contain NUL",
            ));
        }
    }
    let mut qb = QueryBuilder::new(
        "SELECT id, at, actor_kind, actor_id, actor_name, action, resource_kind, resource_id, \
         resource_name, request_id, before, after FROM audit_log WHERE tenant_id = ",
    );
    qb.push_bind(t.id);
    if let Some(k) = p.resource_kind {
        qb.push(" AND resource_kind = ").push_bind(k);
    }
    if let Some(id) = p.resource_id {
        qb.push(" AND resource_id = ").push_bind(id);
    }
    if let Some(a) = p.action {
        qb.push(" AND action = ").push_bind(a);
    }
    if let Some(a) = p.actor {
        qb.push(" AND actor_name = ").push_bind(a);
    }
    if let Some(s) = p.since {
        qb.push(" AND at >= ").push_bind(s);
    }
    if let Some(u) = p.until {
        qb.push(" AND at < ").push_bind(u);
    }
    list.push_tail(&mut qb, "audit_log");
    let mut tx = t.begin(&st.pool).await?;
    let rows: Vec<AuditEntry> = qb.build_query_as().fetch_all(&mut *tx).await?;
    Ok(axum::Json(list.page(rows, |e| e.id)))
}
