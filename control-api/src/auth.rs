//! Who is calling: the operator (bootstrap credential), a tenant API token, or a person
//! (console session cookie, or an access token from the OIDC issuer), and what each may
//! do in a tenant.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, Method};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::session;
use crate::state::AppState;

/// Prefix of Weft API tokens; lets secret scanners recognise a leaked one.
pub const TOKEN_PREFIX: &str = "weft_";

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
        role: Role,
    },
    /// A person; their role in each tenant comes from `memberships`.
    User { user_id: Uuid, via: UserAuth },
}

/// How a person proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAuth {
    /// The console's session cookie (writes carry the CSRF token).
    Session,
    /// `Authorization: Bearer <JWT access token from the OIDC issuer>`.
    AccessToken,
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
            let row: Option<(Uuid, Uuid, String, bool)> = sqlx::query_as(
                "SELECT id, tenant_id, role, \
                        (last_used_at IS NULL OR last_used_at < now() - interval '1 minute') \
                 FROM api_tokens \
                 WHERE token_hash = $1 AND revoked_at IS NULL \
                   AND (expires_at IS NULL OR expires_at > now())",
            )
            .bind(&hash)
            .fetch_optional(&state.pool)
            .await?;
            if let Some((token_id, tenant_id, role, stale)) = row {
                if stale {
                    // Recorded at most once a minute: keeps reads from turning into writes.
                    sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
                        .bind(token_id)
                        .execute(&state.pool)
                        .await?;
                }
                let role = Role::parse(&role)
                    .ok_or_else(|| anyhow::anyhow!("token {token_id} has unknown role {role:?}"))?;
                return Ok(Principal::ApiToken {
                    token_id,
                    tenant_id,
                    role,
                });
            }
        } else if let (Some(oidc), 2) = (&state.oidc, presented.matches('.').count()) {
            // A JWT: an access token from our issuer, or nothing.
            let subject = oidc.verify_access_token(presented).await?;
            let user_id = crate::users::for_token(&state.pool, &subject).await?;
            return Ok(Principal::User {
                user_id,
                via: UserAuth::AccessToken,
            });
        }
        Err(ApiError::Unauthenticated(
            "invalid, expired or revoked token".into(),
        ))
    }
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
        via: UserAuth::Session,
    })
}

/// The tenant a request acts on, after authorization.
#[derive(Debug, Clone)]
pub struct TenantCtx {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// Resolves `{tenant}` (id or name) and checks the caller holds at least `need` in it.
    /// A tenant the caller does not belong to answers 404, exactly like one that does not
    /// exist, so existence never leaks.
    pub async fn tenant(
        &self,
        state: &AppState,
        key: &str,
        need: Role,
    ) -> Result<TenantCtx, ApiError> {
        let by_id = Uuid::parse_str(key).ok();
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT id, name FROM tenants WHERE id = $1 OR name = $2")
                .bind(by_id)
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
                let role: Option<String> = sqlx::query_scalar(
                    "SELECT role FROM memberships WHERE tenant_id = $1 AND user_id = $2",
                )
                .bind(id)
                .bind(user_id)
                .fetch_optional(&state.pool)
                .await?;
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
        Ok(TenantCtx { id, name, role })
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
