//! Console sessions as stored: only the SHA-256 of the session id and of its CSRF token,
//! with an absolute expiry.

use sqlx::PgPool;
use uuid::Uuid;

/// Stores a new session of this person (and forgets their expired ones on the way).
pub async fn create(
    pool: &PgPool,
    id_hash: &[u8],
    user_id: Uuid,
    csrf_hash: &[u8],
    ttl_secs: f64,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND expires_at < now()")
        .bind(user_id)
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_id, csrf_hash, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(id_hash)
    .bind(user_id)
    .bind(csrf_hash)
    .bind(ttl_secs)
    .execute(pool)
    .await?;
    Ok(())
}

/// A live session by the hash of its id: its person (id, and e-mail or subject) and the
/// hash of its CSRF token.
pub async fn lookup(
    pool: &PgPool,
    id_hash: &[u8],
) -> sqlx::Result<Option<(Uuid, String, Vec<u8>)>> {
    sqlx::query_as(
        "SELECT s.user_id, coalesce(u.email, u.subject), s.csrf_hash \
         FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.id_hash = $1 AND s.expires_at > now()",
    )
    .bind(id_hash)
    .fetch_optional(pool)
    .await
}

/// Ends a session; whether there was one.
pub async fn delete(pool: &PgPool, id_hash: &[u8]) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}
