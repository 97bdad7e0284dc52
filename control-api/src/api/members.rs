//! `/v1/tenants/{tenant}/members`: the people of a tenant and their roles, and invites by
//! e-mail that become memberships on the person's sign-in with that (verified) address.
//!
//! Viewers read; admins manage. No one grants or changes a role above their own (an
//! admin cannot make or touch an owner), and the last owner can be neither demoted nor
//! removed.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sqlx::PgConnection;
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
use crate::store::members;
pub use crate::store::members::{Member, MemberStatus};

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

/// Finds a member by id or e-mail (a person before a pending invite).
async fn locate(conn: &mut PgConnection, tenant: Uuid, key: &str) -> Result<Member> {
    members::find(conn, tenant, key)
        .await?
        .ok_or_else(|| ApiError::not_found("member", key))
}

/// Locks the tenant's owner memberships for the rest of the transaction and counts them,
/// so two concurrent demotions cannot leave the tenant without an owner.
async fn lock_owners(conn: &mut PgConnection, tenant: Uuid) -> Result<usize> {
    members::lock_owners(conn, tenant).await
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
    let mut tx = t.begin(&st.pool).await?;
    let rows = members::list(&mut tx, t.id, &list).await?;
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
    let member = members::has_member_with_email(&mut tx, t.id, &email).await?;
    if member {
        return Err(ApiError::Conflict {
            detail: "a member with this e-mail already belongs to the tenant".into(),
            field: Some("email".into()),
        });
    }
    let id = Uuid::now_v7();
    members::invite(&mut tx, t.id, id, &email, input.role).await?;
    let row = members::load(&mut tx, t.id, id).await?;
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
    if m.status == "active" && current == Role::Owner && input.role != Role::Owner && owners <= 1 {
        return Err(last_owner());
    }
    members::set_role(&mut tx, &m, input.role).await?;
    let row = members::load(&mut tx, t.id, m.id).await?;
    audit::updated(&mut tx, &t, subject(&row), &m, &row).await?;
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
    if m.status == "active" && current == Role::Owner && owners <= 1 {
        return Err(last_owner());
    }
    members::remove(&mut tx, &m).await?;
    audit::deleted(&mut tx, &t, subject(&m), &m).await?;
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
