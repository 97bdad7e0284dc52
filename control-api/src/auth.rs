//! Who is calling: the operator (bootstrap credential), a tenant API token, or a person
//! (console session cookie, or an access token from the OIDC issuer), and what each may
//! do in a tenant.

use std::collections::HashMap;
use std::marker::PhantomData;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::{header, request::Parts, Method};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::session;
use crate::state::AppState;

/// Prefix of Weft API tokens; lets secret scanners recognise a leaked one.
pub const TOKEN_PREFIX: &str = "weft_";

/// Prefix of join tokens: a node's one-time registration secret, never a bearer token.
/// It still starts with `weft_`, so scanners that know Weft secrets find it too.
pub const JOIN_TOKEN_PREFIX: &str = "weft_join_";

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

/// The authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Holder of the operator's bootstrap token: may create tenants and act as owner in any.
    Operator,
    ApiToken {
        token_id: Uuid,
        tenant_id: Uuid,
        name: String,
        role: Role,
    },
    /// A person; their role in each tenant comes from `memberships`.
    User {
        user_id: Uuid,
        /// E-mail (or the issuer's subject when there is none), for the audit log.
        name: String,
        via: UserAuth,
    },
}

/// How a person proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAuth {
    /// The console's session cookie (writes carry the CSRF token).
    Session,
    /// `Authorization: Bearer <JWT access token from the OIDC issuer>`.
    AccessToken,
}

/// Who did something, as the audit log records it.
#[derive(Debug, Clone)]
pub struct Actor {
    pub kind: &'static str,
    pub id: Option<Uuid>,
    pub name: String,
}

/// A new random secret: `weft_` + 256 bits, and the hash we store.
pub fn new_token() -> (String, Vec<u8>) {
    let token = random_secret(TOKEN_PREFIX);
    let hash = hash_token(&token);
    (token, hash)
}

/// `prefix` + 256 random bits, base64url.
pub fn random_secret(prefix: &str) -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// Tokens carry 256 bits of entropy, so a plain SHA-256 is a safe at-rest hash
/// (no dictionary to slow down, unlike passwords).
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let result = authenticate(parts, state).await;
        // A wrong credential (token or session cookie) counts; none at all is not a guess.
        // The limiter is asked only after a credential failed: a valid one always passes,
        // whatever others sent from the same address.
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .or_else(|| {
                session::cookie(&parts.headers, session::SESSION_COOKIE).map(str::as_bytes)
            });
        if let (Some(credential), Err(ApiError::Unauthenticated(_))) = (presented, &result) {
            let source = source_address(parts);
            let hash = Sha256::digest(credential);
            if let Err(wait) = state.auth_failures.failed(source, &hash, Instant::now()) {
                tracing::info!(%source, "failed authentication, limited");
                return Err(ApiError::TooManyRequests {
                    retry_after_secs: wait.as_secs().max(1),
                });
            }
            tracing::info!(%source, "failed authentication");
        }
        result
    }
}

/// Where the request came from: the peer address (no proxy headers are trusted).
fn source_address(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return session_principal(parts, state).await;
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthenticated(
                "malformed Authorization header: expected Bearer <token>".into(),
            )
        })?;
    let hash = hash_token(presented);
    if let Some(op) = &state.operator_token_hash {
        if constant_time_eq(&hash, op) {
            return Ok(Principal::Operator);
        }
    }
    if presented.starts_with(TOKEN_PREFIX) {
        // Runs before any tenant is known, so through the one narrow function that
        // may look across tenants (see migration 0002).
        let row: Option<(Uuid, Uuid, String, String, bool)> =
            sqlx::query_as("SELECT id, tenant_id, name, role, stale FROM weft_find_api_token($1)")
                .bind(&hash)
                .fetch_optional(&state.pool)
                .await?;
        if let Some((token_id, tenant_id, name, role, stale)) = row {
            if stale {
                // Recorded at most once a minute: keeps reads from turning into writes.
                sqlx::query("SELECT weft_touch_api_token($1)")
                    .bind(token_id)
                    .execute(&state.pool)
                    .await?;
            }
            let role = Role::parse(&role)
                .ok_or_else(|| anyhow::anyhow!("token {token_id} has unknown role {role:?}"))?;
            return Ok(Principal::ApiToken {
                token_id,
                tenant_id,
                name,
                role,
            });
        }
    } else if let (Some(oidc), 2) = (&state.oidc, presented.matches('.').count()) {
        // A JWT: an access token from our issuer, or nothing.
        let subject = oidc.verify_access_token(presented).await?;
        let (user_id, name) = crate::users::for_token(&state.pool, &subject).await?;
        return Ok(Principal::User {
            user_id,
            name,
            via: UserAuth::AccessToken,
        });
    }
    Err(ApiError::Unauthenticated(
        "invalid, expired or revoked token".into(),
    ))
}

/// No `Authorization` header: the console's session cookie, or nothing. A write made
/// with the cookie must carry the session's CSRF token in `X-CSRF-Token`.
async fn session_principal(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let Some(id) = session::cookie(&parts.headers, session::SESSION_COOKIE) else {
        return Err(ApiError::Unauthenticated(
            "missing credentials: send Authorization: Bearer <token>, or sign in at /auth/login"
                .into(),
        ));
    };
    let live = session::lookup(&state.pool, id).await?.ok_or_else(|| {
        ApiError::Unauthenticated("the session has expired or ended: sign in again".into())
    })?;
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let sent = parts
            .headers
            .get(session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if sent.is_empty() || !constant_time_eq(&hash_token(sent), &live.csrf_hash) {
            return Err(ApiError::Forbidden(
                "a write with the session cookie must send the session's CSRF token \
                 (cookie weft_csrf) in the X-CSRF-Token header"
                    .into(),
            ));
        }
    }
    Ok(Principal::User {
        user_id: live.user_id,
        name: live.name,
        via: UserAuth::Session,
    })
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
        let mut tx = pool.begin().await?;
        set_tenant(&mut tx, self.id).await?;
        Ok(tx)
    }
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

impl Principal {
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Operator => Actor {
                kind: "operator",
                id: None,
                name: "operator".into(),
            },
            Principal::ApiToken { token_id, name, .. } => Actor {
                kind: "api_token",
                id: Some(*token_id),
                name: name.clone(),
            },
            Principal::User { user_id, name, .. } => Actor {
                kind: "user",
                id: Some(*user_id),
                name: name.clone(),
            },
        }
    }

    /// Resolves `{tenant}` (id or name) and checks the caller holds at least `need` in it.
    /// A tenant the caller does not belong to answers 404, exactly like one that does not
    /// exist, so existence never leaks.
    pub async fn tenant(
        &self,
        state: &AppState,
        key: &str,
        need: Role,
    ) -> Result<TenantCtx, ApiError> {
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT id, name FROM weft_resolve_tenant($1)")
                .bind(key)
                .fetch_optional(&state.pool)
                .await?;
        let not_found = || ApiError::not_found("tenant", key);
        let (id, name) = row.ok_or_else(not_found)?;
        let role = match self {
            Principal::Operator => Role::Owner,
            Principal::ApiToken {
                tenant_id, role, ..
            } if *tenant_id == id => *role,
            Principal::ApiToken { .. } => return Err(not_found()),
            Principal::User { user_id, .. } => {
                let mut tx = state.pool.begin().await?;
                set_tenant(&mut tx, id).await?;
                let role: Option<String> = sqlx::query_scalar(
                    "SELECT role FROM memberships WHERE tenant_id = $1 AND user_id = $2",
                )
                .bind(id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                role.as_deref()
                    .and_then(Role::parse)
                    .ok_or_else(not_found)?
            }
        };
        if role < need {
            return Err(ApiError::Forbidden(format!(
                "this needs the {} role in tenant {name:?}; the caller has {}",
                need.as_str(),
                role.as_str()
            )));
        }
        Ok(TenantCtx {
            id,
            name,
            role,
            actor: self.actor(),
            request_id: String::new(),
        })
    }
}

/// The least role a route needs, as a type, so a handler's signature says it.
pub trait NeedRole {
    const ROLE: Role;
}

/// Role markers for [`Tenant`].
pub mod need {
    use super::{NeedRole, Role};

    pub struct Viewer;
    pub struct Editor;
    pub struct Admin;
    pub struct Owner;

    impl NeedRole for Viewer {
        const ROLE: Role = Role::Viewer;
    }
    impl NeedRole for Editor {
        const ROLE: Role = Role::Editor;
    }
    impl NeedRole for Admin {
        const ROLE: Role = Role::Admin;
    }
    impl NeedRole for Owner {
        const ROLE: Role = Role::Owner;
    }
}

/// The `{tenant}` of the path, authorized for at least `R`. As an extractor it runs
/// before the body is read, so a caller without the role gets 403 (or 404) whatever it
/// sent, and nothing of the body is looked at.
pub struct Tenant<R>(pub TenantCtx, pub PhantomData<R>);

impl<R: NeedRole + Send + Sync> FromRequestParts<AppState> for Tenant<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let key = params
            .get("tenant")
            .ok_or_else(|| anyhow::anyhow!("route has no {{tenant}} parameter"))?;
        let mut ctx = principal.tenant(state, key, R::ROLE).await?;
        ctx.request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        Ok(Tenant(ctx, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = new_token();
        let (b, hb) = new_token();
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(hash_token(&a), ha);
        assert_eq!(ha.len(), 32);
    }

    #[test]
    fn roles_are_ordered() {
        assert!(
            Role::Viewer < Role::Editor && Role::Editor < Role::Admin && Role::Admin < Role::Owner
        );
        for r in [Role::Viewer, Role::Editor, Role::Admin, Role::Owner] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
