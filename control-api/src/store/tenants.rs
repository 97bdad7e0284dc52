//! Tenants: the row (also the REST resource), who can list which, and the writes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;
use weft_model::labels::Labels;

use crate::error::Result;
use crate::pagination::ListQuery;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    #[sqlx(json)]
    pub labels: Labels,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revision: i64,
}

/// The writable part of a tenant, as stored.
pub struct TenantWrite<'a> {
    pub name: &'a str,
    pub display_name: &'a str,
    pub labels: &'a Labels,
}

/// Which tenants a caller may list.
#[derive(Debug, Clone, Copy)]
pub enum Visible {
    /// One tenant (an API token's).
    One(Uuid),
    /// Every tenant: the operator's list, the one cross-tenant read.
    All,
    /// The tenants this person is a member of.
    MemberOf(Uuid),
}

const COLUMNS: &str = "id, name, display_name, labels, created_at, updated_at, revision";

/// One page of the tenants the caller sees; sets the transaction's scope to match.
pub async fn list(conn: &mut PgConnection, who: Visible, list: &ListQuery) -> Result<Vec<Tenant>> {
    let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM tenants WHERE true"));
    match who {
        Visible::One(tenant) => {
            super::set_tenant(&mut *conn, tenant).await?;
            qb.push(" AND id = ").push_bind(tenant);
        }
        Visible::All => {
            sqlx::query("SELECT set_config('weft.all_tenants', 'on', true)")
                .execute(&mut *conn)
                .await?;
        }
        Visible::MemberOf(user) => {
            super::set_user(&mut *conn, user).await?;
            qb.push(" AND id IN (SELECT tenant_id FROM memberships WHERE user_id = ")
                .push_bind(user)
                .push(")");
        }
    }
    list.push_tail(&mut qb, "tenants");
    Ok(qb.build_query_as().fetch_all(conn).await?)
}

pub async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Tenant> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM tenants WHERE id = $1"))
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}

/// Inserts a tenant (the transaction is already confined to `id`) and, for a person who
/// creates one, their owner membership.
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    revision: i64,
    t: TenantWrite<'_>,
    owner: Option<Uuid>,
) -> Result<Tenant> {
    let row: Tenant = sqlx::query_as(&format!(
        "INSERT INTO tenants (id, name, display_name, labels, revision) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(t.name)
    .bind(t.display_name)
    .bind(sqlx::types::Json(t.labels))
    .bind(revision)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(user_id) = owner {
        sqlx::query(
            "INSERT INTO memberships (id, tenant_id, user_id, role) VALUES ($1, $2, $3, 'owner')",
        )
        .bind(Uuid::now_v7())
        .bind(id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(row)
}

pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    revision: i64,
    t: TenantWrite<'_>,
) -> Result<Tenant> {
    Ok(sqlx::query_as(&format!(
        "UPDATE tenants SET name = $2, display_name = $3, labels = $4, revision = $5, \
         updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(t.name)
    .bind(t.display_name)
    .bind(sqlx::types::Json(t.labels))
    .bind(revision)
    .fetch_one(conn)
    .await?)
}

/// Deletes a tenant and, through the foreign keys, everything it owns.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
