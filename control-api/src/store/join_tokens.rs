//! Join tokens of a cluster (a node's first credential): what is shown of them (never
//! the secret) and the writes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

use super::rows::Scope;
use crate::error::Result;
use crate::pagination::ListQuery;

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct JoinToken {
    pub id: Uuid,
    pub cluster_id: Uuid,
    pub name: String,
    pub max_uses: Option<i32>,
    pub uses: i32,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A new join token, stored by the hash of its secret.
pub struct NewJoinToken<'a> {
    pub name: &'a str,
    pub hash: &'a [u8],
    /// `None`: no limit.
    pub max_uses: Option<i32>,
    pub ttl_seconds: f64,
}

const COLUMNS: &str = "id, cluster_id, name, max_uses, uses, expires_at, revoked_at, created_at";

/// One page of a cluster's join tokens (`scope` names the cluster).
pub async fn list(
    conn: &mut PgConnection,
    scope: Scope,
    list: &ListQuery,
) -> Result<Vec<JoinToken>> {
    let select = format!("SELECT {COLUMNS} FROM join_tokens");
    super::rows::page(conn, &select, "join_tokens", scope, list).await
}

pub async fn insert(
    conn: &mut PgConnection,
    scope: Scope,
    j: NewJoinToken<'_>,
) -> Result<JoinToken> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO join_tokens (id, tenant_id, cluster_id, name, token_hash, max_uses, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(scope.tenant)
    .bind(scope.cluster)
    .bind(j.name)
    .bind(j.hash)
    .bind(j.max_uses)
    .bind(j.ttl_seconds)
    .fetch_one(conn)
    .await?)
}

/// Revokes a join token (a revoked one keeps its first revocation time).
pub async fn revoke(conn: &mut PgConnection, id: Uuid) -> Result<JoinToken> {
    Ok(sqlx::query_as(&format!(
        "UPDATE join_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await?)
}
