//! Sign-ins under way: the OIDC state a browser began with, kept until the issuer sends
//! it back (once) or it expires.

use std::time::Duration;

use sqlx::PgPool;

use crate::error::Result;

/// A sign-in taken back by its state.
pub struct Login {
    pub pkce_verifier: String,
    pub nonce: String,
    pub return_to: String,
    /// Not yet expired.
    pub live: bool,
}

/// Forgets expired sign-ins and records a new one by the hash of its state.
pub async fn begin(
    pool: &PgPool,
    state_hash: &[u8],
    pkce_verifier: &str,
    nonce: &str,
    return_to: &str,
    ttl: Duration,
) -> Result<()> {
    sqlx::query("DELETE FROM oidc_logins WHERE expires_at < now()")
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO oidc_logins (state_hash, pkce_verifier, nonce, return_to, expires_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(state_hash)
    .bind(pkce_verifier)
    .bind(nonce)
    .bind(return_to)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes a sign-in back by the hash of its state: it can be used once.
pub async fn take(pool: &PgPool, state_hash: &[u8]) -> Result<Option<Login>> {
    let row: Option<(String, String, String, bool)> = sqlx::query_as(
        "DELETE FROM oidc_logins WHERE state_hash = $1 \
         RETURNING pkce_verifier, nonce, return_to, expires_at > now()",
    )
    .bind(state_hash)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(pkce_verifier, nonce, return_to, live)| Login {
        pkce_verifier,
        nonce,
        return_to,
        live,
    }))
}
