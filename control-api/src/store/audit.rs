//! The audit log: every mutation records who, what, when, the request, and the resource
//! before and after, in the same transaction as the change itself.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{FromRow, PgConnection, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use super::tenant::TenantCtx;
use crate::error::Result;
use crate::pagination::ListQuery;

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

/// Records a `create`: the resource as it now is.
pub async fn created<T: Serialize>(
    tx: &mut PgConnection,
    ctx: &TenantCtx,
    subject: Subject<'_>,
    after: &T,
) -> Result<()> {
    record(tx, ctx, "create", subject, None, snapshot(after)).await
}

/// Records an `update`: the resource before and after.
pub async fn updated<B: Serialize, A: Serialize>(
    tx: &mut PgConnection,
    ctx: &TenantCtx,
    subject: Subject<'_>,
    before: &B,
    after: &A,
) -> Result<()> {
    record(
        tx,
        ctx,
        "update",
        subject,
        snapshot(before),
        snapshot(after),
    )
    .await
}

/// Records a `delete`: the resource as it was.
pub async fn deleted<T: Serialize>(
    tx: &mut PgConnection,
    ctx: &TenantCtx,
    subject: Subject<'_>,
    before: &T,
) -> Result<()> {
    record(tx, ctx, "delete", subject, snapshot(before), None).await
}

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// `operator`, `api_token` or `user`.
    pub actor_kind: String,
    pub actor_id: Option<Uuid>,
    pub actor_name: String,
    /// `create`, `update`, `delete`, `revoke`, `import-create`, `import-update`.
    pub action: String,
    pub resource_kind: String,
    pub resource_id: Uuid,
    pub resource_name: String,
    pub request_id: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

/// Which entries to read; every field narrows.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub resource_kind: Option<String>,
    pub resource_id: Option<Uuid>,
    pub action: Option<String>,
    /// The actor's name.
    pub actor: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One page of the tenant's audit log, oldest first.
pub async fn list(
    conn: &mut PgConnection,
    tenant: Uuid,
    f: AuditFilter,
    list: &ListQuery,
) -> Result<Vec<AuditEntry>> {
    let mut qb = QueryBuilder::new(
        "SELECT id, at, actor_kind, actor_id, actor_name, action, resource_kind, resource_id, \
         resource_name, request_id, before, after FROM audit_log WHERE tenant_id = ",
    );
    qb.push_bind(tenant);
    if let Some(k) = f.resource_kind {
        qb.push(" AND resource_kind = ").push_bind(k);
    }
    if let Some(id) = f.resource_id {
        qb.push(" AND resource_id = ").push_bind(id);
    }
    if let Some(a) = f.action {
        qb.push(" AND action = ").push_bind(a);
    }
    if let Some(a) = f.actor {
        qb.push(" AND actor_name = ").push_bind(a);
    }
    if let Some(s) = f.since {
        qb.push(" AND at >= ").push_bind(s);
    }
    if let Some(u) = f.until {
        qb.push(" AND at < ").push_bind(u);
    }
    list.push_tail(&mut qb, "audit_log");
    Ok(qb.build_query_as().fetch_all(conn).await?)
}
