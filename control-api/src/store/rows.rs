//! Rows every resource shares: finding one by id or name within a tenant (and cluster),
//! and locking one for a guarded write.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

/// Where a child resource lives: always a tenant, sometimes also a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    pub tenant: Uuid,
    pub cluster: Option<Uuid>,
}

impl Scope {
    pub fn tenant(tenant: Uuid) -> Self {
        Scope {
            tenant,
            cluster: None,
        }
    }
    pub fn cluster(tenant: Uuid, cluster: Uuid) -> Self {
        Scope {
            tenant,
            cluster: Some(cluster),
        }
    }
}

/// Finds a resource's id from its id or name within a scope. `table` is always a literal
/// from our code, never input.
pub async fn find_id(
    conn: &mut PgConnection,
    table: &'static str,
    scope: Scope,
    key: &str,
) -> Result<Option<Uuid>> {
    let by_id = Uuid::parse_str(key).ok();
    let in_cluster = if scope.cluster.is_some() {
        "AND cluster_id = $4"
    } else {
        ""
    };
    let sql = format!(
        "SELECT id FROM {table} WHERE tenant_id = $1 AND (id = $2 OR name = $3) {in_cluster}"
    );
    let mut q = sqlx::query_scalar(&sql)
        .bind(scope.tenant)
        .bind(by_id)
        .bind(key);
    if let Some(c) = scope.cluster {
        q = q.bind(c);
    }
    Ok(q.fetch_optional(&mut *conn).await?)
}

/// Locks a row for the rest of the transaction (after the revision lock, so writers queue
/// in one order) and returns its current revision. `table` is always a literal from our code.
pub async fn lock(conn: &mut PgConnection, table: &'static str, id: Uuid) -> Result<i64> {
    super::lock_revisions(&mut *conn).await?;
    let sql = format!("SELECT revision FROM {table} WHERE id = $1 FOR UPDATE");
    Ok(sqlx::query_scalar(&sql)
        .bind(id)
        .fetch_one(&mut *conn)
        .await?)
}
