//! `GET /v1/tenants/{tenant}/audit-log`: who changed what, when, with before and after.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::common::ReadErrors;
use crate::auth::{need, Tenant};
use crate::error::Result;
use crate::pagination::{ListParams, Page, Query};
use crate::state::AppState;
pub use crate::store::audit::AuditEntry;
use crate::store::audit::{self, AuditFilter};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_log))
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
    let filter = AuditFilter {
        resource_kind: p.resource_kind,
        resource_id: p.resource_id,
        action: p.action,
        actor: p.actor,
        since: p.since,
        until: p.until,
    };
    let mut tx = t.begin(&st.pool).await?;
    let rows = audit::list(&mut tx, t.id, filter, &list).await?;
    Ok(axum::Json(list.page(rows, |e| e.id)))
}
