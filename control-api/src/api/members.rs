//! `/v1/tenants/{tenant}/members`: the people of a tenant and their roles, and invites by
//! e-mail that become memberships on the person's sign-in with that (verified) address.
//!
//! Viewers read; admins manage. No one grants or changes a role above their own (an
//! admin cannot make or touch an owner), and the last owner can be neither demoted nor
//! removed.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection, QueryBuilder};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::common::{self, ReadErrors, WriteErrors};
use crate::auth::{need, Principal, Role, Tenant as Authorized, TenantCtx};
use crate::error::{ApiError, Result};
use crate::extract::Json;
use crate::pagination::{Page, PageParams, Query};
use crate::state::AppState;
use crate::store::audit::{self, Subject};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_members, invite_member))
        .routes(routes!(update_member, remove_member))
}

/// Longest e-mail address (RFC 5321).
const MAX_EMAIL: usize = 254;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteInput {
    #[schema(value_type = Email)]
    pub email: String,
    pub role: Role,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberUpdate {
    pub role: Role,
}

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

/// Memberships and pending invites as one relation.
const MEMBERS: &str = "(SELECT m.id, 'active'::text AS status, u.email, u.name, \
         m.user_id, m.role, m.created_at, m.updated_at, m.tenant_id \
     FROM memberships m JOIN users u ON u.id = m.user_id \
     UNION ALL \
     SELECT i.id, 'invited'::text, i.email, NULL::text, NULL::uuid, i.role, \
         i.created_at, i.updated_at, i.tenant_id \
     FROM invitations i) AS members";
const COLUMNS: &str = "id, status, email, name, user_id, role, created_at, updated_at";

/// [`validate_email`] as a regular expression: printable ASCII without spaces, one `@`
/// after a non-empty local part, a `.` in the domain.
const EMAIL_PATTERN: &str = r"^[!-?A-~]+@[!-?A-~]*\.[!-?A-~]*$";

weft_model::contract_schema! {
    /// An e-mail address, as `validate_email` accepts it.
    Email => weft_model::contract::string(
        "An e-mail address (printable ASCII, at most 254 characters); stored lowercased.",
    )
    .pattern(Some(EMAIL_PATTERN))
    .max_length(Some(MAX_EMAIL))
    .examples(["ada@example.com"])
}

fn validate_email(email: &str) -> Result<String> {
    let ok = email.len() <= MAX_EMAIL
        && email.bytes().all(|b| (b'!'..=b'~').contains(&b))
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if ok {
        Ok(email.to_ascii_lowercase())
    } else {
        Err(ApiError::invalid_field(
            "email",
            "must be an e-mail address like ada@example.com",
        ))
    }
}

fn require(t: &TenantCtx, need: Role) -> Result<()> {
    if t.role < need {
        return Err(ApiError::Forbidden(format!(
            "this needs the {} role in tenant {:?}; the caller has {}",
            need.as_str(),
            t.name,
            t.role.as_str()
        )));
    }
    Ok(())
}

/// Nobody hands out or touches a role above their own.
fn check_grant(t: &TenantCtx, role: Role, what: &str) -> Result<()> {
    if role > t.role {
        return Err(ApiError::Forbidden(format!(
            "a {} cannot {what} {}",
            t.role.as_str(),
            match role {
                Role::Owner => "an owner",
                Role::Admin => "an admin",
                Role::Editor => "an editor",
                Role::Viewer => "a viewer",
            }
        )));
    }
    Ok(())
}

async fn load(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<Member> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM {MEMBERS} WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_one(conn)
    .await?)
}

/// Finds a member by id or e-mail (a person before a pending invite).
async fn locate(conn: &mut PgConnection, tenant: Uuid, key: &str) -> Result<Member> {
    let by_id = Uuid::parse_str(key).ok();
    let found: Option<Member> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM {MEMBERS} \
         WHERE tenant_id = $1 AND (id = $2 OR lower(email) = lower($3)) \
         ORDER BY status LIMIT 1"
    ))
    .bind(tenant)
    .bind(by_id)
    .bind(key)
    .fetch_optional(conn)
    .await?;
    found.ok_or_else(|| ApiError::not_found("member", key))
}

/// Locks the tenant's owner memberships for the rest of the transaction and counts them,
/// so two concurrent demotions cannot leave the tenant without an owner.
async fn lock_owners(conn: &mut PgConnection, tenant: Uuid) -> Result<usize> {
    let owners: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM memberships WHERE tenant_id = $1 AND role = 'owner' FOR UPDATE",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    Ok(owners.len())
}

fn role_of(m: &Member) -> Result<Role> {
    Role::parse(&m.role)
        .ok_or_else(|| anyhow::anyhow!("member {} has unknown role {:?}", m.id, m.role).into())
}

fn subject(m: &Member) -> Subject<'_> {
    Subject {
        kind: "member",
        id: m.id,
        name: m.email.as_deref().unwrap_or("-"),
    }
}

fn last_owner() -> ApiError {
    ApiError::Conflict {
        detail: "the tenant must keep at least one owner".into(),
        field: Some("role".into()),
    }
}

/// List members and pending invites (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/members", tag = "members",
    params(("tenant" = String, Path, description = "Tenant id or name"), PageParams),
    responses((status = 200, body = Page<Member>), ReadErrors),
    security(("bearer" = []), ("session" = [])))]
async fn list_members(
    State(st): State<AppState>,
    Authorized(t, _): Authorized<need::Viewer>,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<Page<Member>>> {
    let list = params.resolve()?;
    let mut qb = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM {MEMBERS} WHERE members.tenant_id = "
    ));
    qb.push_bind(t.id);
    list.push_tail(&mut qb, "members");
    let mut tx = t.begin(&st.pool).await?;
    let rows: Vec<Member> = qb.build_query_as().fetch_all(&mut *tx).await?;
    Ok(axum::Json(list.page(rows, |m| m.id)))
}

/// Invite a person by e-mail with a role (admin; owners only by owners). The invite
/// becomes a membership when they sign in with that verified address.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/members", tag = "members",
    params(("tenant" = String, Path, description = "Tenant id or name")),
    request_body = InviteInput,
    responses((status = 201, body = Member, headers(("Location" = String))), WriteErrors),
    security(("bearer" = []), ("session" = [])))]
async fn invite_member(
    State(st): State<AppState>,
    Authorized(t, _): Authorized<need::Admin>,
    Json(input): Json<InviteInput>,
) -> Result<Response> {
    let email = validate_email(&input.email)?;
    check_grant(&t, input.role, "invite")?;
    let mut tx = t.begin(&st.pool).await?;
    let member: Option<Uuid> = sqlx::query_scalar(
        "SELECT m.id FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.tenant_id = $1 AND lower(u.email) = $2",
    )
    .bind(t.id)
    .bind(&email)
    .fetch_optional(&mut *tx)
    .await?;
    if member.is_some() {
        return Err(ApiError::Conflict {
            detail: "a member with this e-mail already belongs to the tenant".into(),
            field: Some("email".into()),
        });
    }
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO invitations (id, tenant_id, email, role) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(t.id)
        .bind(&email)
        .bind(input.role.as_str())
        .execute(&mut *tx)
        .await?;
    let row = load(&mut tx, t.id, id).await?;
    audit::record(
        &mut tx,
        &t,
        "invite",
        subject(&row),
        None,
        audit::snapshot(&row),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant = %t.name, invite = %id, role = input.role.as_str(), "member invited");
    let location = format!("/v1/tenants/{}/members/{id}", t.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(row),
    )
        .into_response())
}

/// Change a member's (or invite's) role (admin; never above the caller's own role, and
/// never demoting the last owner).
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/members/{member}", tag = "members",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("member" = String, Path, description = "Member or invite id, or e-mail")),
    request_body = MemberUpdate,
    responses((status = 200, body = Member), WriteErrors),
    security(("bearer" = []), ("session" = [])))]
async fn update_member(
    State(st): State<AppState>,
    Authorized(t, _): Authorized<need::Admin>,
    Path((_tenant, key)): Path<(String, String)>,
    Json(input): Json<MemberUpdate>,
) -> Result<axum::Json<Member>> {
    check_grant(&t, input.role, "grant the role of")?;
    let mut tx = t.begin(&st.pool).await?;
    let owners = lock_owners(&mut tx, t.id).await?;
    let m = locate(&mut tx, t.id, &key).await?;
    let current = role_of(&m)?;
    check_grant(&t, current, "change")?;
    let table = if m.status == "active" {
        if current == Role::Owner && input.role != Role::Owner && owners <= 1 {
            return Err(last_owner());
        }
        "memberships"
    } else {
        "invitations"
    };
    sqlx::query(&format!(
        "UPDATE {table} SET role = $2, updated_at = now() WHERE id = $1"
    ))
    .bind(m.id)
    .bind(input.role.as_str())
    .execute(&mut *tx)
    .await?;
    let row = load(&mut tx, t.id, m.id).await?;
    audit::record(
        &mut tx,
        &t,
        "update",
        subject(&row),
        audit::snapshot(&m),
        audit::snapshot(&row),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant = %t.name, member = %m.id, role = input.role.as_str(), "member role changed");
    Ok(axum::Json(row))
}

/// Remove a member or withdraw an invite (admin; anyone may leave). The last owner stays.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/members/{member}", tag = "members",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("member" = String, Path, description = "Member or invite id, or e-mail")),
    responses((status = 204, description = "Removed"), WriteErrors),
    security(("bearer" = []), ("session" = [])))]
async fn remove_member(
    State(st): State<AppState>,
    who: Principal,
    Authorized(t, _): Authorized<need::Viewer>,
    Path((_tenant, key)): Path<(String, String)>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let owners = lock_owners(&mut tx, t.id).await?;
    let m = locate(&mut tx, t.id, &key).await?;
    let current = role_of(&m)?;
    let leaving = matches!(&who, Principal::User { user_id, .. } if Some(*user_id) == m.user_id);
    if !leaving {
        require(&t, Role::Admin)?;
        check_grant(&t, current, "remove")?;
    }
    let table = if m.status == "active" {
        if current == Role::Owner && owners <= 1 {
            return Err(last_owner());
        }
        "memberships"
    } else {
        "invitations"
    };
    sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
        .bind(m.id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        &t,
        "delete",
        subject(&m),
        audit::snapshot(&m),
        None,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant = %t.name, member = %m.id, "member removed");
    Ok(common::no_content())
}

#[cfg(test)]
mod tests {
    use super::validate_email;

    #[test]
    fn emails_are_checked_and_lowercased() {
        assert_eq!(
            validate_email("Ada@Example.COM").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "a@b@c.com",
            " ada@example.com",
            "adá@example.com",
        ] {
            assert!(validate_email(bad).is_err(), "{bad:?}");
        }
    }
}
