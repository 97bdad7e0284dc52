//! People known through the OIDC issuer, and how they join tenants.

use sqlx::PgPool;
use uuid::Uuid;

use crate::oidc::{Identity, TokenSubject};

/// Records a sign-in: creates the person on first sign-in (from `sub` and `email`),
/// refreshes what the issuer says about them, and turns pending invites for their
/// verified e-mail into memberships. Returns the person's id.
pub async fn signed_in(pool: &PgPool, who: &Identity) -> sqlx::Result<Uuid> {
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
    .bind(&who.issuer)
    .bind(&who.subject)
    .bind(&who.email)
    .bind(who.email_verified)
    .bind(&who.name)
    .fetch_one(&mut *tx)
    .await?;
    // Only an address the issuer vouches for may claim an invite.
    if let (Some(email), true) = (&who.email, who.email_verified) {
        let bound = sqlx::query(
            "WITH invited AS ( \
                 DELETE FROM invitations WHERE email = lower($2) RETURNING tenant_id, role) \
             INSERT INTO memberships (id, tenant_id, user_id, role) \
             SELECT gen_random_uuid(), tenant_id, $1, role FROM invited \
             ON CONFLICT ON CONSTRAINT memberships_tenant_user_key DO NOTHING",
        )
        .bind(id)
        .bind(email)
        .execute(&mut *tx)
        .await?;
        if bound.rows_affected() > 0 {
            tracing::info!(user = %id, tenants = bound.rows_affected(), "invites accepted");
        }
    }
    tx.commit().await?;
    Ok(id)
}

/// The person an access token names, created on first sight (without an e-mail: access
/// tokens need not carry one; invites bind only on a console sign-in).
pub async fn for_token(pool: &PgPool, who: &TokenSubject) -> sqlx::Result<Uuid> {
    let find = || {
        sqlx::query_scalar("SELECT id FROM users WHERE issuer = $1 AND subject = $2")
            .bind(&who.issuer)
            .bind(&who.subject)
    };
    if let Some(id) = find().fetch_optional(pool).await? {
        return Ok(id);
    }
    sqlx::query(
        "INSERT INTO users (id, issuer, subject) VALUES ($1, $2, $3) \
         ON CONFLICT ON CONSTRAINT users_issuer_subject_key DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(&who.issuer)
    .bind(&who.subject)
    .execute(pool)
    .await?;
    find().fetch_one(pool).await
}
