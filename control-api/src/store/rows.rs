//! Rows every resource shares: finding one by id or name within a tenant (and cluster),
//! a page of a scope's rows, one row by id, and locking rows for a guarded write.

use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, QueryBuilder};
use uuid::Uuid;
use weft_model::selector::LabelSelector;

use crate::error::Result;
use crate::pagination::{push_label_filter, ListQuery};

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

/// One page of a scope's rows. `select` is a `SELECT … FROM <table> [<alias>]` from our
/// code and `alias` names that table: its `tenant_id`, `cluster_id` (when the scope names a
/// cluster), `id` and `labels` filter and order the page.
pub async fn page<T>(
    conn: &mut PgConnection,
    select: &str,
    alias: &str,
    scope: Scope,
    list: &ListQuery,
) -> Result<Vec<T>>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    let mut qb = QueryBuilder::new(format!("{select} WHERE {alias}.tenant_id = "));
    qb.push_bind(scope.tenant);
    if let Some(cluster) = scope.cluster {
        qb.push(format!(" AND {alias}.cluster_id = "))
            .push_bind(cluster);
    }
    list.push_tail(&mut qb, alias);
    Ok(qb.build_query_as().fetch_all(conn).await?)
}

/// One row by id (`select` and `alias` as for [`page`]).
pub async fn by_id<T>(conn: &mut PgConnection, select: &str, alias: &str, id: Uuid) -> Result<T>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    Ok(sqlx::query_as(&format!("{select} WHERE {alias}.id = $1"))
        .bind(id)
        .fetch_one(conn)
        .await?)
}

/// Locks the scope's rows of `table` that a label selector matches (after the revision
/// lock, as [`lock`]) and returns their ids. `table` is always a literal from our code.
pub async fn lock_matching(
    conn: &mut PgConnection,
    table: &'static str,
    scope: Scope,
    selector: &LabelSelector,
) -> Result<Vec<Uuid>> {
    let mut qb = QueryBuilder::new(format!("SELECT t.id FROM {table} t WHERE t.tenant_id = "));
    qb.push_bind(scope.tenant);
    if let Some(cluster) = scope.cluster {
        qb.push(" AND t.cluster_id = ").push_bind(cluster);
    }
    push_label_filter(&mut qb, "t.labels", selector);
    qb.push(" ORDER BY t.id FOR UPDATE");
    super::lock_revisions(&mut *conn).await?;
    Ok(qb.build_query_scalar().fetch_all(conn).await?)
}
