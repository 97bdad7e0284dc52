//! Console sessions: a random id in an `HttpOnly; Secure; SameSite=Lax` cookie, only its
//! SHA-256 in Postgres, an absolute expiry, and a CSRF token that cookie-authenticated
//! writes must echo in `X-CSRF-Token`.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use sqlx::PgPool;
use uuid::Uuid;

use crate::secret::{hash_token, random_secret};
use crate::store::sessions;

/// The session id (HttpOnly: scripts never see it).
pub const SESSION_COOKIE: &str = "weft_session";
/// The CSRF token, readable by the console's scripts, which send it back in
/// [`CSRF_HEADER`] on every write. A page on another site can neither read it nor set
/// the header, so a forged cross-site write fails.
pub const CSRF_COOKIE: &str = "weft_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Binds a sign-in under way to the browser that began it (holds the OAuth state).
pub const LOGIN_COOKIE: &str = "weft_login";
/// How long a sign-in may take at the identity provider.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

/// The value of a cookie in the request, if present.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value. Every cookie is `Secure` (browsers accept that on
/// http://localhost too) and `Path=/`.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, http_only: bool) -> HeaderValue {
    let http_only = if http_only { "; HttpOnly" } else { "" };
    let v = format!(
        "{name}={value}; Path=/; Max-Age={}; Secure; SameSite=Lax{http_only}",
        max_age.as_secs()
    );
    // Names and values are ours (base64url and fixed names): always valid header text.
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `Set-Cookie` that removes a cookie.
pub fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", Duration::ZERO, true)
}

/// A new session's secrets: the id for the cookie, and the CSRF token.
pub struct NewSession {
    pub id: String,
    pub csrf: String,
}

pub async fn create(pool: &PgPool, user_id: Uuid, ttl: Duration) -> sqlx::Result<NewSession> {
    let id = random_secret("ws_");
    let csrf = random_secret("");
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    sessions::create(
        pool,
        &hash_token(&id),
        user_id,
        &hash_token(&csrf),
        ttl_secs as f64,
    )
    .await?;
    Ok(NewSession { id, csrf })
}

/// A live session: its person (id and e-mail or subject) and the hash of its CSRF token.
pub struct Live {
    pub user_id: Uuid,
    pub name: String,
    pub csrf_hash: Vec<u8>,
}

pub async fn lookup(pool: &PgPool, id: &str) -> sqlx::Result<Option<Live>> {
    let row = sessions::lookup(pool, &hash_token(id)).await?;
    Ok(row.map(|(user_id, name, csrf_hash)| Live {
        user_id,
        name,
        csrf_hash,
    }))
}

pub async fn delete(pool: &PgPool, id: &str) -> sqlx::Result<bool> {
    sessions::delete(pool, &hash_token(id)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cookies_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; weft_session=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("weft_csrf=xyz"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, CSRF_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "weft"), None);
    }

    #[test]
    fn session_cookie_is_locked_down() {
        let v = set_cookie(SESSION_COOKIE, "abc", Duration::from_secs(60), true);
        let v = v.to_str().unwrap();
        for part in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=60"] {
            assert!(v.contains(part), "{v} lacks {part}");
        }
    }
}
