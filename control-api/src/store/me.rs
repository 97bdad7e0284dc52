//! The caller's own view: the person and the tenants they belong to, or an API token's
//! one tenant.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

use super::tenant::Role;
use crate::error::Result;

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct UserInfo {
    pub id: Uuid,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct MyTenant {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    #[schema(value_type = Role)]
    pub role: String,
}

/// An API token's tenant with the token's role (confines the transaction to it).
pub async fn token_tenant(
    conn: &mut PgConnection,
    tenant: Uuid,
    role: Role,
) -> Result<Vec<MyTenant>> {
    super::set_tenant(&mut *conn, tenant).await?;
    Ok(
        sqlx::query_as("SELECT id, name, display_name, $2 AS role FROM tenants WHERE id = $1")
            .bind(tenant)
            .bind(role.as_str())
            .fetch_all(conn)
            .await?,
    )
}

/// A person and their tenants with their role in each, by name (lets the transaction see
/// this person's memberships).
pub async fn person(conn: &mut PgConnection, user: Uuid) -> Result<(UserInfo, Vec<MyTenant>)> {
    super::set_user(&mut *conn, user).await?;
    let info: UserInfo = sqlx::query_as(
        "SELECT id, email, email_verified, name, created_at, last_login_at \
         FROM users WHERE id = $1",
    )
    .bind(user)
    .fetch_one(&mut *conn)
    .await?;
    let tenants: Vec<MyTenant> = sqlx::query_as(
        "SELECT t.id, t.name, t.display_name, m.role \
         FROM memberships m JOIN tenants t ON t.id = m.tenant_id \
         WHERE m.user_id = $1 ORDER BY t.name",
    )
    .bind(user)
    .fetch_all(conn)
    .await?;
    Ok((info, tenants))
}
