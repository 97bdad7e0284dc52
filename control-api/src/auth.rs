//! Who is calling: the operator (bootstrap credential), a tenant API token, or a person
//! (console session cookie, or an access token from the OIDC issuer), and what each may
//! do in a tenant.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts, Path};
use axum::http::{header, request::Parts, Method};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::oidc::Oidc;
use crate::ratelimit::FailureLimiter;
pub use crate::secret::{
    constant_time_eq, hash_token, new_token, random_secret, JOIN_TOKEN_PREFIX, TOKEN_PREFIX,
};
use crate::session;
use crate::store::lookup;
pub use crate::store::tenant::{set_tenant, set_user, Actor, Role, TenantCtx};

/// What authentication needs of the application state: extractors take only this
/// (through `FromRef`), never the whole state.
#[derive(Clone)]
pub struct AuthState {
    pub pool: PgPool,
    /// SHA-256 of the operator's bootstrap token, if one is configured.
    pub operator_token_hash: Option<Arc<[u8]>>,
    /// OpenID Connect (console sign-in, bearer JWTs); `None` when no issuer is configured.
    pub oidc: Option<Arc<Oidc>>,
    /// Failed credential attempts per source address.
    pub failures: Arc<FailureLimiter>,
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

impl<S: Send + Sync> FromRequestParts<S> for Principal
where
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let state = &AuthState::from_ref(state);
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
            if let Err(wait) = state.failures.failed(source, &hash, Instant::now()) {
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

async fn authenticate(parts: &Parts, state: &AuthState) -> Result<Principal, ApiError> {
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
        if let Some(t) = lookup::api_token(&state.pool, &hash).await? {
            if t.stale {
                // Recorded at most once a minute: keeps reads from turning into writes.
                lookup::touch_api_token(&state.pool, t.id).await?;
            }
            let role = Role::parse(&t.role)
                .ok_or_else(|| anyhow::anyhow!("token {} has unknown role {:?}", t.id, t.role))?;
            return Ok(Principal::ApiToken {
                token_id: t.id,
                tenant_id: t.tenant_id,
                name: t.name,
                role,
            });
        }
    } else if let (Some(oidc), 2) = (&state.oidc, presented.matches('.').count()) {
        // A JWT: an access token from our issuer, or nothing.
        let subject = oidc.verify_access_token(presented).await?;
        let (user_id, name) =
            crate::store::users::for_token(&state.pool, &subject.issuer, &subject.subject).await?;
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
async fn session_principal(parts: &Parts, state: &AuthState) -> Result<Principal, ApiError> {
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
        pool: &PgPool,
        key: &str,
        need: Role,
    ) -> Result<TenantCtx, ApiError> {
        let row = lookup::tenant(pool, key).await?;
        let not_found = || ApiError::not_found("tenant", key);
        let (id, name) = row.ok_or_else(not_found)?;
        let role = match self {
            Principal::Operator => Role::Owner,
            Principal::ApiToken {
                tenant_id, role, ..
            } if *tenant_id == id => *role,
            Principal::ApiToken { .. } => return Err(not_found()),
            Principal::User { user_id, .. } => {
                crate::store::tenant::member_role(pool, id, *user_id)
                    .await?
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

impl<S: Send + Sync, R: NeedRole + Send + Sync> FromRequestParts<S> for Tenant<R>
where
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let key = params
            .get("tenant")
            .ok_or_else(|| anyhow::anyhow!("route has no {{tenant}} parameter"))?;
        let mut ctx = principal
            .tenant(&AuthState::from_ref(state).pool, key, R::ROLE)
            .await?;
        ctx.request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        Ok(Tenant(ctx, PhantomData))
    }
}
