//! Members: memberships of people who have signed in and pending invites, read as one
//! relation, and their writes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

use super::rows::Scope;
use super::tenant::Role;
use crate::error::Result;
use crate::pagination::ListQuery;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// A person who has signed in.
    Active,
    /// An invite waiting for the person's first sign-in with this e-mail.
    Invited,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct Member {
    /// The membership's id, or the invite's while it is pending.
    pub id: Uuid,
    #[schema(value_type = MemberStatus)]
    pub status: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// The person, once they have signed in.
    pub user_id: Option<Uuid>,
    #[schema(value_type = Role)]
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Member {
    /// The table this member's row lives in.
    fn table(&self) -> &'static str {
        if self.status == "active" {
            "memberships"
        } else {
            "invitations"
        }
    }
}

/// Memberships and pending invites as one relation.
const MEMBERS: &str = "(SELECT m.id, 'active'::text AS status, u.email, u.name, \
         m.user_id, m.role, m.created_at, m.updated_at, m.tenant_id \
     FROM memberships m JOIN users u ON u.id = m.user_id \
     UNION ALL \
     SELECT i.id, 'invited'::text, i.email, NULL::text, NULL::uuid, i.role, \
         i.created_at, i.updated_at, i.tenant_id \
     FROM invitations i) AS members";
const COLUMNS: &str = "id, status, email, name, user_id, role, created_at, updated_at";

/// One page of the tenant's members and invites.
pub async fn list(conn: &mut PgConnection, tenant: Uuid, list: &ListQuery) -> Result<Vec<Member>> {
    let select = format!("SELECT {COLUMNS} FROM {MEMBERS}");
    super::rows::page(conn, &select, "members", Scope::tenant(tenant), list).await
}

pub async fn load(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<Member> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM {MEMBERS} WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_one(conn)
    .await?)
}

/// A member by id or e-mail (a person before a pending invite).
pub async fn find(conn: &mut PgConnection, tenant: Uuid, key: &str) -> Result<Option<Member>> {
    let by_id = Uuid::parse_str(key).ok();
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM {MEMBERS} \
         WHERE tenant_id = $1 AND (id = $2 OR lower(email) = lower($3)) \
         ORDER BY status LIMIT 1"
    ))
    .bind(tenant)
    .bind(by_id)
    .bind(key)
    .fetch_optional(conn)
    .await?)
}

/// Locks the tenant's owner memberships for the rest of the transaction and counts them.
pub async fn lock_owners(conn: &mut PgConnection, tenant: Uuid) -> Result<usize> {
    let owners: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM memberships WHERE tenant_id = $1 AND role = 'owner' FOR UPDATE",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    Ok(owners.len())
}

/// Whether a person with this (lowercased) e-mail is already a member.
pub async fn has_member_with_email(
    conn: &mut PgConnection,
    tenant: Uuid,
    email: &str,
) -> Result<bool> {
    let member: Option<Uuid> = sqlx::query_scalar(
        "SELECT m.id FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.tenant_id = $1 AND lower(u.email) = $2",
    )
    .bind(tenant)
    .bind(email)
    .fetch_optional(conn)
    .await?;
    Ok(member.is_some())
}

pub async fn invite(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    email: &str,
    role: Role,
) -> Result<()> {
    sqlx::query("INSERT INTO invitations (id, tenant_id, email, role) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(tenant)
        .bind(email)
        .bind(role.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// Changes a membership's or a pending invite's role.
pub async fn set_role(conn: &mut PgConnection, m: &Member, role: Role) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE {} SET role = $2, updated_at = now() WHERE id = $1",
        m.table()
    ))
    .bind(m.id)
    .bind(role.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes a membership or withdraws a pending invite.
pub async fn remove(conn: &mut PgConnection, m: &Member) -> Result<()> {
    sqlx::query(&format!("DELETE FROM {} WHERE id = $1", m.table()))
        .bind(m.id)
        .execute(conn)
        .await?;
    Ok(())
}
