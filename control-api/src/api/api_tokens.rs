//! `/v1/tenants/{tenant}/api-tokens`: secrets for automation. Shown once, stored hashed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::common::{self, Name, ReadErrors, WriteErrors};
use crate::auth::{self, need, Role, Tenant};
use crate::error::{ApiError, Result};
use crate::extract::Json;
use crate::pagination::{Page, PageParams, Query};
use crate::state::AppState;
use crate::store::api_tokens;
pub use crate::store::api_tokens::ApiToken;
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

/// A new token: the only time its secret is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub meta: ApiToken,
    /// The secret. Store it now: Weft keeps only its hash.
    pub token: String,
}

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
    let mut tx = t.begin(&st.pool).await?;
    let rows = api_tokens::list(&mut tx, t.id, &list).await?;
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
    let meta = api_tokens::insert(&mut tx, t.id, &input.name, input.role, &hash, ttl).await?;
    let subject = Subject {
        kind: "api_token",
        id: meta.id,
        name: &meta.name,
    };
    audit::created(&mut tx, &t, subject, &meta).await?;
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
    let mut tx = t.begin(&st.pool).await?;
    let row = api_tokens::lock(&mut tx, t.id, &token).await?;
    let before = row.ok_or_else(|| ApiError::not_found("API token", &token))?;
    if Role::parse(&before.role).is_some_and(|r| r > t.role) {
        return Err(ApiError::Forbidden(format!(
            "a {} cannot revoke a {} token",
            t.role.as_str(),
            before.role
        )));
    }
    let after = api_tokens::revoke(&mut tx, before.id).await?;
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
