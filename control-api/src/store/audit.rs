//! The audit log: every mutation records who, what, when, the request, and the resource
//! before and after, in the same transaction as the change itself.

use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::tenant::TenantCtx;
use crate::error::Result;

/// A resource as the audit log names it.
pub struct Subject<'a> {
    pub kind: &'static str,
    pub id: Uuid,
    pub name: &'a str,
}

/// Snapshots a resource for the log (`None` where there is nothing, e.g. before a create).
pub fn snapshot<T: Serialize>(resource: &T) -> Option<Value> {
    serde_json::to_value(resource).ok()
}

pub async fn record(
    tx: &mut PgConnection,
    ctx: &TenantCtx,
    action: &str,
    subject: Subject<'_>,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, tenant_id, actor_kind, actor_id, actor_name, action, \
         resource_kind, resource_id, resource_name, request_id, before, after) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(Uuid::now_v7())
    .bind(ctx.id)
    .bind(ctx.actor.kind)
    .bind(ctx.actor.id)
    .bind(&ctx.actor.name)
    .bind(action)
    .bind(subject.kind)
    .bind(subject.id)
    .bind(subject.name)
    .bind(&ctx.request_id)
    .bind(before)
    .bind(after)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
