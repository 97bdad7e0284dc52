//! The tenant transaction: every tenant-owned row is read and written in a transaction
//! confined to one tenant (row-level security), on behalf of an actor with a role.

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// A role in a tenant. Ordered: each role can do what the ones below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// Who did something, as the audit log records it.
#[derive(Debug, Clone)]
pub struct Actor {
    pub kind: &'static str,
    pub id: Option<Uuid>,
    pub name: String,
}

/// The tenant a request acts on, after authorization.
#[derive(Debug, Clone)]
pub struct TenantCtx {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub actor: Actor,
    /// The request's `x-request-id`, for the audit log.
    pub request_id: String,
}

impl TenantCtx {
    /// Opens a transaction confined to this tenant: row-level security shows and accepts
    /// only this tenant's rows in it, whatever a query forgets to filter.
    pub async fn begin(&self, pool: &PgPool) -> Result<Transaction<'static, Postgres>, ApiError> {
        begin(pool, self.id).await
    }
}

/// Opens a transaction confined to `tenant`'s rows.
pub async fn begin(
    pool: &PgPool,
    tenant: Uuid,
) -> Result<Transaction<'static, Postgres>, ApiError> {
    let mut tx = pool.begin().await?;
    set_tenant(&mut tx, tenant).await?;
    Ok(tx)
}

/// Confines the rest of a transaction to one tenant's rows.
pub async fn set_tenant(tx: &mut PgConnection, tenant: Uuid) -> Result<(), ApiError> {
    sqlx::query("SELECT set_config('weft.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Lets the rest of a transaction see this person's memberships in every tenant (and
/// those tenants), for `/v1/me`, the tenant list and role checks; nothing else.
pub async fn set_user(tx: &mut PgConnection, user: Uuid) -> Result<(), ApiError> {
    sqlx::query("SELECT set_config('weft.user_id', $1, true)")
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A person's role in a tenant, if they are a member.
pub async fn member_role(
    pool: &PgPool,
    tenant: Uuid,
    user: Uuid,
) -> Result<Option<Role>, ApiError> {
    let mut tx = begin(pool, tenant).await?;
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM memberships WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(role.as_deref().and_then(Role::parse))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(
            Role::Viewer < Role::Editor && Role::Editor < Role::Admin && Role::Admin < Role::Owner
        );
        for r in [Role::Viewer, Role::Editor, Role::Admin, Role::Owner] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}
