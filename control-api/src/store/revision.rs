//! The desired-state revision: every change to what agents enforce takes the next global
//! revision in the caller's transaction, is logged, and is announced on commit.

use sqlx::PgConnection;
use uuid::Uuid;

/// What happened to a resource, as recorded in the change log.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// Channel on which every committed desired-state change is announced.
pub const CHANGES_CHANNEL: &str = "weft_desired_state";

/// Bumps the global revision inside the caller's transaction, logs the change and
/// queues a NOTIFY that Postgres delivers only if the transaction commits.
pub async fn bump_revision(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    kind: &str,
    resource_id: Uuid,
    op: Op,
) -> sqlx::Result<i64> {
    let revision = next_revision(tx).await?;
    record_change(tx, revision, tenant_id, kind, resource_id, op).await?;
    Ok(revision)
}

/// Takes the global revision's row lock without taking a revision: every write takes it
/// before locking any resource row. Creates take it (with their revision) before inserting,
/// and an insert locks its parent rows (foreign keys), so a write that locked a row first and
/// the revision second could deadlock with a create under that row.
pub async fn lock_revisions(tx: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT 1 FROM desired_state FOR UPDATE")
        .execute(&mut *tx)
        .await
        .map(drop)
}

/// Takes the next global revision. The row lock it takes is held to commit, so
/// revisions become visible in order.
pub async fn next_revision(tx: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("UPDATE desired_state SET revision = revision + 1 RETURNING revision")
        .fetch_one(&mut *tx)
        .await
}

/// Logs a change at `revision` and queues its NOTIFY (delivered on commit only).
#[tracing::instrument(name = "db.record_change", skip(tx))]
pub async fn record_change(
    tx: &mut PgConnection,
    revision: i64,
    tenant_id: Uuid,
    kind: &str,
    resource_id: Uuid,
    op: Op,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO desired_state_changes (revision, tenant_id, kind, resource_id, op) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(revision)
    .bind(tenant_id)
    .bind(kind)
    .bind(resource_id)
    .bind(op.as_str())
    .execute(&mut *tx)
    .await?;
    announce(tx, revision, tenant_id, kind, resource_id, op).await
}

/// Queues the NOTIFY of a change (delivered on commit only) without logging it: for a
/// change whose log goes with it (a tenant's deletion cascades to its change log).
pub async fn announce(
    tx: &mut PgConnection,
    revision: i64,
    tenant_id: Uuid,
    kind: &str,
    resource_id: Uuid,
    op: Op,
) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGES_CHANNEL)
        .bind(match weft_telemetry::TraceParent::current() {
            Some(tp) => format!(
                "{revision}:{tenant_id}:{kind}:{resource_id}:{}:{tp}",
                op.as_str()
            ),
            None => format!(
                "{revision}:{tenant_id}:{kind}:{resource_id}:{}",
                op.as_str()
            ),
        })
        .execute(&mut *tx)
        .await
        .map(drop)
}

/// The revision the caller's transaction sees.
pub async fn current(tx: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT revision FROM desired_state")
        .fetch_one(&mut *tx)
        .await
}

/// The latest revision of a change to `tenant` the caller's transaction sees (0: none).
pub async fn latest_of_tenant(tx: &mut PgConnection, tenant: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT coalesce(max(revision), 0) FROM desired_state_changes WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&mut *tx)
    .await
}
