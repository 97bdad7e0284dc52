//! People known through the OIDC issuer, and how they join tenants.

use sqlx::PgPool;
use uuid::Uuid;

/// A person as the issuer describes them at sign-in.
pub struct Person<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub email_verified: bool,
    pub name: Option<&'a str>,
}

/// Records a sign-in: creates the person on first sign-in (from `sub` and `email`),
/// refreshes what the issuer says about them, and turns pending invites for their
/// verified e-mail into memberships (audited in each tenant under `request_id`).
/// Returns the person's id.
pub async fn signed_in(pool: &PgPool, who: &Person<'_>, request_id: &str) -> sqlx::Result<Uuid> {
    let mut tx = pool.begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO users (id, issuer, subject, email, email_verified, name, last_login_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now()) \
         ON CONFLICT ON CONSTRAINT users_issuer_subject_key DO UPDATE \
           SET email = excluded.email, email_verified = excluded.email_verified, \
               name = excluded.name, last_login_at = now() \
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(who.issuer)
    .bind(who.subject)
    .bind(who.email)
    .bind(who.email_verified)
    .bind(who.name)
    .fetch_one(&mut *tx)
    .await?;
    // Only an address the issuer vouches for may claim an invite.
    if let (Some(email), true) = (who.email, who.email_verified) {
        // Invites live in many tenants: one narrow function may cross them (migration 0003).
        let bound: i64 = sqlx::query_scalar("SELECT weft_accept_invites($1, $2, $3)")
            .bind(id)
            .bind(email)
            .bind(request_id)
            .fetch_one(&mut *tx)
            .await?;
        if bound > 0 {
            tracing::info!(user = %id, tenants = bound, "invites accepted");
        }
    }
    tx.commit().await?;
    Ok(id)
}

/// The person an access token names (id, and e-mail or subject), created on first sight
/// (without an e-mail: access tokens need not carry one; invites bind only on a console
/// sign-in).
pub async fn for_token(pool: &PgPool, issuer: &str, subject: &str) -> sqlx::Result<(Uuid, String)> {
    let find = || {
        sqlx::query_as(
            "SELECT id, coalesce(email, subject) FROM users WHERE issuer = $1 AND subject = $2",
        )
        .bind(issuer)
        .bind(subject)
    };
    if let Some(id) = find().fetch_optional(pool).await? {
        return Ok(id);
    }
    sqlx::query(
        "INSERT INTO users (id, issuer, subject) VALUES ($1, $2, $3) \
         ON CONFLICT ON CONSTRAINT users_issuer_subject_key DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(issuer)
    .bind(subject)
    .execute(pool)
    .await?;
    find().fetch_one(pool).await
}
