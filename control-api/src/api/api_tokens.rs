//! `/v1/tenants/{tenant}/api-tokens`: secrets for automation. Shown once, stored hashed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, QueryBuilder};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::common::{self, Name, ReadErrors, WriteErrors};
use crate::auth::{self, need, Role, Tenant};
use crate::error::{ApiError, Result};
use crate::extract::Json;
use crate::pagination::{Page, PageParams, Query};
use crate::state::AppState;
use crate::store::audit::{self, Subject};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

/// Longest lifetime a token may be given: two years.
const MAX_TTL_SECONDS: u64 = 2 * 365 * 24 * 3600;

fn token_ttl_schema() -> utoipa::openapi::schema::Object {
    weft_model::contract::optional_integer(
        1,
        MAX_TTL_SECONDS as i64,
        "Lifetime in seconds, at most two years; absent: the token does not expire.",
    )
    .build()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    #[schema(value_type = Name, example = "terraform-ci")]
    pub name: String,
    pub role: Role,
    /// Lifetime in seconds (1 to 63,072,000: two years); absent: the token does not expire.
    #[schema(schema_with = token_ttl_schema)]
    pub expires_in_seconds: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = Role)]
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new token: the only time its secret is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub meta: ApiToken,
    /// The secret. Store it now: Weft keeps only its hash.
    pub token: String,
}

const COLUMNS: &str = "id, name, role, created_at, expires_at, last_used_at, revoked_at";

/// List API tokens (admin). Secrets are never returned.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/api-tokens", tag = "api-tokens",
    params(("tenant" = String, Path, description = "Tenant id or name"), PageParams),
    responses((status = 200, body = Page<ApiToken>), ReadErrors),
    security(("bearer" = [])))]
async fn list_tokens(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Admin>,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<Page<ApiToken>>> {
    let list = params.resolve()?;
    let mut qb = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE tenant_id = "
    ));
    qb.push_bind(t.id);
    list.push_tail(&mut qb, "api_tokens");
    let mut tx = t.begin(&st.pool).await?;
    let rows: Vec<ApiToken> = qb.build_query_as().fetch_all(&mut *tx).await?;
    Ok(axum::Json(list.page(rows, |t| t.id)))
}

/// Create an API token (admin; owner tokens only by owners). The secret is in the answer
/// and nowhere else.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/api-tokens", tag = "api-tokens",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    request_body = TokenInput,
    responses((status = 201, body = CreatedToken), WriteErrors),
    security(("bearer" = [])))]
async fn create_token(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Admin>,
    Json(input): Json<TokenInput>,
) -> Result<Response> {
    let mut errs = Vec::new();
    common::check_common(&mut errs, &input.name, &Default::default(), "");
    if let Some(ttl) = input.expires_in_seconds {
        if ttl == 0 || ttl > MAX_TTL_SECONDS {
            errs.push(weft_model::error::FieldError::new(
                "expires_in_seconds",
                format!("must be between 1 and {MAX_TTL_SECONDS}"),
            ));
        }
    }
    common::finish(errs)?;
    if input.role > t.role {
        return Err(ApiError::Forbidden(format!(
            "a {} cannot create a token with the {} role",
            t.role.as_str(),
            input.role.as_str()
        )));
    }
    let (secret, hash) = auth::new_token();
    let mut tx = t.begin(&st.pool).await?;
    let ttl = input.expires_in_seconds.map(|s| s as f64);
    let meta: ApiToken = sqlx::query_as(&format!(
        "INSERT INTO api_tokens (id, tenant_id, name, role, token_hash, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(t.id)
    .bind(&input.name)
    .bind(input.role.as_str())
    .bind(&hash)
    .bind(ttl)
    .fetch_one(&mut *tx)
    .await?;
    let subject = Subject {
        kind: "api_token",
        id: meta.id,
        name: &meta.name,
    };
    audit::record(&mut tx, &t, "create", subject, None, audit::snapshot(&meta)).await?;
    tx.commit().await?;
    tracing::info!(tenant = %t.name, token = %meta.name, role = %meta.role, "API token created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            meta,
            token: secret,
        }),
    )
        .into_response())
}

/// Revoke an API token (admin; owner tokens only by owners). Takes effect at once.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/api-tokens/{token}", tag = "api-tokens",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("token" = String, Path, description = "Token id or name")),
    responses((status = 204, description = "Revoked"), WriteErrors),
    security(("bearer" = [])))]
async fn revoke_token(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Admin>,
    Path((_tenant, token)): Path<(String, String)>,
) -> Result<Response> {
    let by_id = Uuid::parse_str(&token).ok();
    let mut tx = t.begin(&st.pool).await?;
    let row: Option<ApiToken> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE tenant_id = $1 AND (id = $2 OR name = $3) FOR UPDATE"
    ))
    .bind(t.id)
    .bind(by_id)
    .bind(&token)
    .fetch_optional(&mut *tx)
    .await?;
    let before = row.ok_or_else(|| ApiError::not_found("API token", &token))?;
    if Role::parse(&before.role).is_some_and(|r| r > t.role) {
        return Err(ApiError::Forbidden(format!(
            "a {} cannot revoke a {} token",
            t.role.as_str(),
            before.role
        )));
    }
    let after: ApiToken = sqlx::query_as(&format!(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(before.id)
    .fetch_one(&mut *tx)
    .await?;
    let subject = Subject {
        kind: "api_token",
        id: after.id,
        name: &after.name,
    };
    audit::record(
        &mut tx,
        &t,
        "revoke",
        subject,
        audit::snapshot(&before),
        audit::snapshot(&after),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant = %t.name, token = %after.id, "API token revoked");
    Ok(common::no_content())
}
