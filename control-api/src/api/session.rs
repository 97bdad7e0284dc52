//! `/auth/*`: console sign-in with the OIDC authorization code flow (PKCE + nonce), and
//! sign-out. The session lives in Postgres behind an HttpOnly cookie.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::common;
use crate::auth::{constant_time_eq, hash_token, Principal, UserAuth};
use crate::error::{ApiError, Problem, Result};
use crate::oidc::Oidc;
use crate::pagination::Query;
use crate::session::{self, CSRF_COOKIE, LOGIN_COOKIE, LOGIN_TTL, SESSION_COOKIE};
use crate::state::AppState;
use crate::store::logins::{self, Login};
use crate::store::users::{self, Person};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(callback))
        .routes(routes!(logout))
}

fn oidc(st: &AppState) -> Result<&Arc<Oidc>> {
    st.oidc.as_ref().ok_or_else(|| {
        ApiError::NotFound("sign-in is not configured on this server (no OIDC issuer)".into())
    })
}

/// Longest `return_to` we keep.
const MAX_RETURN_TO: usize = 2048;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LoginParams {
    /// Where to send the browser after sign-in: a path on this server (default `/`).
    #[param(schema_with = return_to_schema)]
    pub return_to: Option<String>,
}

/// [`valid_return_to`] as a regular expression.
const RETURN_TO_PATTERN: &str = r"^/([!-.0-\[\]-~][!-\[\]-~]*)?$";

fn return_to_schema() -> utoipa::openapi::schema::Object {
    weft_model::contract::string(
        "Where to send the browser after sign-in: a path on this server (default `/`), \
         printable ASCII without spaces or backslashes, not starting with `//`.",
    )
    .pattern(Some(RETURN_TO_PATTERN))
    .max_length(Some(MAX_RETURN_TO))
    .examples(["/console"])
    .build()
}

/// A path on this server, never another site (`//evil.example` or `/\evil` are refused),
/// and a valid `Location` header value.
fn valid_return_to(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && p.len() <= MAX_RETURN_TO
        && p.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'\\')
}

fn redirect(to: &str) -> Result<Response> {
    let location = HeaderValue::from_str(to)
        .map_err(|_| anyhow::anyhow!("redirect target is not a valid header value"))?;
    let mut resp = StatusCode::SEE_OTHER.into_response();
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

/// Documented answers of the browser-facing sign-in routes.
#[allow(dead_code)] // only read by the OpenAPI generator
#[derive(utoipa::IntoResponses)]
enum SignInResponses {
    /// To the identity provider (login), or back into the application (callback).
    #[response(status = 303, headers(("Location" = String), ("Set-Cookie" = String)))]
    Redirect,
    /// A bad parameter, or a sign-in that this browser did not begin, expired or was used.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// The identity provider refused the sign-in, or the ID token did not verify.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// Sign-in is not configured on this server.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// The identity provider is not reachable.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

/// Begin console sign-in: redirects the browser to the identity provider (authorization
/// code flow with PKCE and a nonce; the state is bound to this browser by a cookie).
#[utoipa::path(
    get,
    path = "/auth/login",
    tag = "auth",
    params(LoginParams),
    responses(SignInResponses)
)]
async fn login(State(st): State<AppState>, Query(p): Query<LoginParams>) -> Result<Response> {
    let oidc = oidc(&st)?;
    let return_to = p.return_to.unwrap_or_else(|| "/".into());
    if !valid_return_to(&return_to) {
        return Err(ApiError::invalid_field(
            "return_to",
            "must be a path on this server, like /v1/me",
        ));
    }
    let start = oidc.begin_login().await?;
    logins::begin(
        &st.pool,
        &hash_token(&start.state),
        &start.pkce_verifier,
        &start.nonce,
        &return_to,
        LOGIN_TTL,
    )
    .await?;
    let mut resp = redirect(&start.url)?;
    resp.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(LOGIN_COOKIE, &start.state, LOGIN_TTL, true),
    );
    Ok(resp)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    /// The issuer, when it says (RFC 9207); must be ours.
    pub iss: Option<String>,
    pub error: Option<String>,
}

/// Where the identity provider sends the browser back: redeems the code, verifies the ID
/// token, creates the person on first sign-in (binding pending invites for their verified
/// e-mail), starts a session (cookies `weft_session`, HttpOnly, and `weft_csrf`) and
/// redirects to `return_to`.
#[utoipa::path(
    get,
    path = "/auth/callback",
    tag = "auth",
    params(CallbackParams),
    responses(SignInResponses)
)]
async fn callback(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<CallbackParams>,
) -> Result<Response> {
    let oidc = oidc(&st)?;
    if let Some(error) = p.error {
        // Only an OAuth error code is echoed: short, and of the safe alphabet.
        let code = if error.len() <= 64 && error.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            error
        } else {
            "unknown".into()
        };
        return Err(ApiError::Unauthenticated(format!(
            "the identity provider refused the sign-in ({code})"
        )));
    }
    let (Some(code), Some(state)) = (p.code, p.state) else {
        return Err(ApiError::BadRequest(
            "the callback needs code and state parameters".into(),
        ));
    };
    let ours = session::cookie(&headers, LOGIN_COOKIE).ok_or_else(|| {
        ApiError::BadRequest(
            "this browser did not begin this sign-in (no weft_login cookie): start again at /auth/login"
                .into(),
        )
    })?;
    if !constant_time_eq(ours.as_bytes(), state.as_bytes()) {
        return Err(ApiError::BadRequest(
            "the sign-in state does not match the one this browser began".into(),
        ));
    }
    if p.iss
        .as_deref()
        .is_some_and(|iss| iss.trim_end_matches('/') != oidc.issuer())
    {
        return Err(ApiError::BadRequest(
            "the response comes from another issuer".into(),
        ));
    }
    let row = logins::take(&st.pool, &hash_token(&state)).await?;
    let Some(Login {
        pkce_verifier: verifier,
        nonce,
        return_to,
        live: true,
    }) = row
    else {
        return Err(ApiError::BadRequest(
            "this sign-in expired or was already used: start again at /auth/login".into(),
        ));
    };
    let identity = oidc.finish_login(&code, verifier, nonce).await?;
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let person = Person {
        issuer: &identity.issuer,
        subject: &identity.subject,
        email: identity.email.as_deref(),
        email_verified: identity.email_verified,
        name: identity.name.as_deref(),
    };
    let user_id = users::signed_in(&st.pool, &person, request_id).await?;
    let new = session::create(&st.pool, user_id, oidc.session_ttl).await?;
    tracing::info!(user = %user_id, "signed in");
    let mut resp = redirect(&return_to)?;
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        session::set_cookie(SESSION_COOKIE, &new.id, oidc.session_ttl, true),
    );
    h.append(
        header::SET_COOKIE,
        session::set_cookie(CSRF_COOKIE, &new.csrf, oidc.session_ttl, false),
    );
    h.append(header::SET_COOKIE, session::clear_cookie(LOGIN_COOKIE));
    Ok(resp)
}

/// Sign out: ends the console session (the cookie is refused afterwards). Needs the
/// session cookie and, like every cookie write, the `X-CSRF-Token` header.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    responses((status = 204, description = "Signed out; the cookies are cleared"),
              common::WriteErrors),
    security(("session" = [])))]
async fn logout(
    State(st): State<AppState>,
    who: Principal,
    headers: HeaderMap,
) -> Result<Response> {
    let (
        Principal::User {
            via: UserAuth::Session,
            user_id,
            ..
        },
        Some(id),
    ) = (who, session::cookie(&headers, SESSION_COOKIE))
    else {
        return Err(ApiError::BadRequest(
            "sign-out ends a console session: send the session cookie, not a bearer token".into(),
        ));
    };
    session::delete(&st.pool, id).await?;
    tracing::info!(user = %user_id, "signed out");
    let mut resp = common::no_content();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, session::clear_cookie(SESSION_COOKIE));
    h.append(header::SET_COOKIE, session::clear_cookie(CSRF_COOKIE));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::valid_return_to;

    #[test]
    fn return_to_stays_on_this_server() {
        for ok in ["/", "/v1/me", "/console/tenants/acme?x=1"] {
            assert!(valid_return_to(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "v1/me",
            "/a\nb",
        ] {
            assert!(!valid_return_to(bad), "{bad:?}");
        }
    }
}
