//! The narrow lookups that run before a tenant is known, through the functions that may
//! look across tenants (see migration 0002): a credential's owner, a tenant by id or name.

use sqlx::PgPool;
use uuid::Uuid;

/// An API token found by the hash of its secret.
pub struct ApiTokenRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: String,
    /// Last use was recorded over a minute ago.
    pub stale: bool,
}

pub async fn api_token(pool: &PgPool, hash: &[u8]) -> sqlx::Result<Option<ApiTokenRow>> {
    let row: Option<(Uuid, Uuid, String, String, bool)> =
        sqlx::query_as("SELECT id, tenant_id, name, role, stale FROM weft_find_api_token($1)")
            .bind(hash)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(id, tenant_id, name, role, stale)| ApiTokenRow {
        id,
        tenant_id,
        name,
        role,
        stale,
    }))
}

/// Records a token's use (at most once a minute: keeps reads from turning into writes).
pub async fn touch_api_token(pool: &PgPool, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("SELECT weft_touch_api_token($1)")
        .bind(id)
        .execute(pool)
        .await
        .map(drop)
}

/// A tenant's id and name from either.
pub async fn tenant(pool: &PgPool, key: &str) -> sqlx::Result<Option<(Uuid, String)>> {
    sqlx::query_as("SELECT id, name FROM weft_resolve_tenant($1)")
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// A node found by the hash of its credential.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub cluster_id: Uuid,
    pub name: String,
}

pub async fn node(pool: &PgPool, credential_hash: &[u8]) -> sqlx::Result<Option<NodeRow>> {
    let row: Option<(Uuid, Uuid, Uuid, String)> =
        sqlx::query_as("SELECT id, tenant_id, cluster_id, name FROM weft_find_node($1)")
            .bind(credential_hash)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(id, tenant_id, cluster_id, name)| NodeRow {
        id,
        tenant_id,
        cluster_id,
        name,
    }))
}
