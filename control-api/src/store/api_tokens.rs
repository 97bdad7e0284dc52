//! API tokens of a tenant: what is shown of them (never the secret) and the writes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

use super::rows::Scope;
use super::tenant::Role;
use crate::error::Result;
use crate::pagination::ListQuery;

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

const COLUMNS: &str = "id, name, role, created_at, expires_at, last_used_at, revoked_at";

/// One page of the tenant's tokens.
pub async fn list(
    conn: &mut PgConnection,
    tenant: Uuid,
    list: &ListQuery,
) -> Result<Vec<ApiToken>> {
    let select = format!("SELECT {COLUMNS} FROM api_tokens");
    super::rows::page(conn, &select, "api_tokens", Scope::tenant(tenant), list).await
}

/// Stores a new token by the hash of its secret; `ttl_seconds`: `None` never expires.
pub async fn insert(
    conn: &mut PgConnection,
    tenant: Uuid,
    name: &str,
    role: Role,
    hash: &[u8],
    ttl_seconds: Option<f64>,
) -> Result<ApiToken> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO api_tokens (id, tenant_id, name, role, token_hash, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(name)
    .bind(role.as_str())
    .bind(hash)
    .bind(ttl_seconds)
    .fetch_one(conn)
    .await?)
}

/// A token by id or name, locked for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, tenant: Uuid, key: &str) -> Result<Option<ApiToken>> {
    let by_id = Uuid::parse_str(key).ok();
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE tenant_id = $1 AND (id = $2 OR name = $3) FOR UPDATE"
    ))
    .bind(tenant)
    .bind(by_id)
    .bind(key)
    .fetch_optional(conn)
    .await?)
}

/// Revokes a token (a revoked one keeps its first revocation time).
pub async fn revoke(conn: &mut PgConnection, id: Uuid) -> Result<ApiToken> {
    Ok(sqlx::query_as(&format!(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await?)
}
