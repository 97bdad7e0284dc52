//! `/v1/tenants/{tenant}/clusters/{cluster}/join-tokens`: what a node agent presents once
//! to register. Shown once, stored hashed, expiring, single- or multi-use.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use weft_model::error::FieldError;

use super::common::{self, Name, ReadErrors, WriteErrors};
use crate::auth::{self, need, Tenant};
use crate::error::Result;
use crate::extract::Json;
use crate::pagination::{Page, PageParams, Query};
use crate::state::AppState;
use crate::store::audit::{self, Subject};
pub use crate::store::join_tokens::JoinToken;
use crate::store::join_tokens::{self, NewJoinToken};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_join_tokens, create_join_token))
        .routes(routes!(revoke_join_token))
}

/// Default and longest lifetime of a join token.
const DEFAULT_TTL_SECONDS: u64 = 3600;
const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// Most registrations one token may allow (what the database column holds).
const MAX_USES: u32 = i32::MAX as u32;

fn ttl_schema() -> utoipa::openapi::schema::Object {
    weft_model::contract::optional_integer(
        1,
        MAX_TTL_SECONDS as i64,
        "Lifetime in seconds, at most 30 days (default 3600).",
    )
    .build()
}

fn max_uses_schema() -> utoipa::openapi::schema::Object {
    weft_model::contract::optional_integer(
        0,
        i64::from(MAX_USES),
        "How many nodes may register with it (default 1); `0` for no limit.",
    )
    .build()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenInput {
    #[schema(value_type = Name, example = "rack-12")]
    pub name: String,
    /// Lifetime in seconds (default 3600, at most 30 days).
    #[schema(schema_with = ttl_schema)]
    pub expires_in_seconds: Option<u64>,
    /// How many nodes may register with it (default 1); `0` for no limit.
    #[schema(schema_with = max_uses_schema)]
    pub max_uses: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedJoinToken {
    #[serde(flatten)]
    pub meta: JoinToken,
    /// The secret for `node-agent run --join-token`. Shown only now.
    pub token: String,
    /// The one-line command that installs an agent on a machine and registers it with
    /// this token; absent when this API's URL is unknown (no `--public-url` and no
    /// `Host` header).
    #[schema(
        example = "curl -fsSL https://api.weft.example/install.sh | WEFT_JOIN_TOKEN=weft_join_… sudo --preserve-env=WEFT_JOIN_TOKEN sh -s"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install_command: Option<String>,
}

/// List a cluster's join tokens (admin). Secrets are never returned.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters/{cluster}/join-tokens", tag = "clusters",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"), PageParams),
    responses((status = 200, body = Page<JoinToken>), ReadErrors),
    security(("bearer" = [])))]
async fn list_join_tokens(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Admin>,
    Path((_tenant, cluster)): Path<(String, String)>,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<Page<JoinToken>>> {
    let list = params.resolve()?;
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    let rows = join_tokens::list(&mut tx, sc, &list).await?;
    Ok(axum::Json(list.page(rows, |j| j.id)))
}

/// Create a join token for a cluster (admin). The secret is in the answer only.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/clusters/{cluster}/join-tokens", tag = "clusters",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name")),
    request_body = JoinTokenInput,
    responses((status = 201, body = CreatedJoinToken), WriteErrors),
    security(("bearer" = [])))]
async fn create_join_token(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Admin>,
    Path((_tenant, cluster)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    Json(input): Json<JoinTokenInput>,
) -> Result<Response> {
    let mut errs = Vec::new();
    common::check_common(&mut errs, &input.name, &Default::default(), "");
    let ttl = input.expires_in_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if ttl == 0 || ttl > MAX_TTL_SECONDS {
        errs.push(FieldError::new(
            "expires_in_seconds",
            format!("must be between 1 and {MAX_TTL_SECONDS}"),
        ));
    }
    let max_uses = match input.max_uses.unwrap_or(1) {
        0 => None,
        n if n > MAX_USES => {
            errs.push(FieldError::new(
                "max_uses",
                format!("must be at most {MAX_USES}"),
            ));
            None
        }
        n => Some(n as i32),
    };
    common::finish(errs)?;
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    let secret = auth::random_secret(auth::JOIN_TOKEN_PREFIX);
    let hash = auth::hash_token(&secret);
    let meta = join_tokens::insert(
        &mut tx,
        sc,
        NewJoinToken {
            name: &input.name,
            hash: &hash,
            max_uses,
            ttl_seconds: ttl as f64,
        },
    )
    .await?;
    let subject = Subject {
        kind: "join_token",
        id: meta.id,
        name: &meta.name,
    };
    audit::created(&mut tx, &t, subject, &meta).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedJoinToken {
            meta,
            install_command: st.install.command(&headers, &secret).ok(),
            token: secret,
        }),
    )
        .into_response())
}

/// Revoke a join token (admin). Nodes already registered keep their credentials.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/clusters/{cluster}/join-tokens/{token}", tag = "clusters",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("token" = String, Path, description = "Join token id or name")),
    responses((status = 204, description = "Revoked"), WriteErrors),
    security(("bearer" = [])))]
async fn revoke_join_token(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Admin>,
    Path((_tenant, cluster, token)): Path<(String, String, String)>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    let id = common::require_id(&mut tx, "join_tokens", "join token", sc, &token).await?;
    let after = join_tokens::revoke(&mut tx, id).await?;
    let subject = Subject {
        kind: "join_token",
        id,
        name: &after.name,
    };
    audit::record(
        &mut tx,
        &t,
        "revoke",
        subject,
        None,
        audit::snapshot(&after),
    )
    .await?;
    tx.commit().await?;
    Ok(common::no_content())
}
