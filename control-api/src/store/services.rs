//! Load-balanced services: rows with their frontends and backends, and the writes.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;
use weft_model::labels::Labels;
use weft_model::service::{Algorithm, Backend, Frontend, SessionAffinity};

use super::rows::Scope;
use crate::error::Result;
use crate::pagination::ListQuery;

/// A service as stored, with its frontends and backends in their given order and how
/// many of its cluster's nodes have applied it.
#[derive(Debug, Clone, FromRow)]
pub struct ServiceRow {
    pub id: Uuid,
    pub cluster_id: Uuid,
    pub name: String,
    #[sqlx(json)]
    pub labels: Labels,
    #[sqlx(json)]
    pub frontends: Vec<Frontend>,
    #[sqlx(json)]
    pub backends: Vec<Backend>,
    algorithm: String,
    affinity_timeout: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revision: i64,
    pub realized_nodes: i64,
    pub total_nodes: i64,
}

impl ServiceRow {
    pub fn algorithm(&self) -> Algorithm {
        // The column's CHECK allows only these two.
        if self.algorithm == "maglev" {
            Algorithm::Maglev
        } else {
            Algorithm::Random
        }
    }

    pub fn session_affinity(&self) -> Option<SessionAffinity> {
        self.affinity_timeout.map(|t| SessionAffinity {
            timeout_seconds: t.unsigned_abs(),
        })
    }
}

/// The writable part of a service, as stored.
pub struct ServiceWrite<'a> {
    pub name: &'a str,
    pub labels: &'a Labels,
    pub frontends: &'a [Frontend],
    pub backends: &'a [Backend],
    pub algorithm: Algorithm,
    pub session_affinity: Option<&'a SessionAffinity>,
}

impl ServiceWrite<'_> {
    fn affinity(&self) -> Option<i32> {
        self.session_affinity
            .and_then(|a| i32::try_from(a.timeout_seconds).ok())
    }
}

/// A service with its frontends and backends in one round trip, in their given order.
const SELECT: &str = "SELECT s.id, s.cluster_id, s.name, s.labels, s.algorithm, \
    s.affinity_timeout, s.created_at, s.updated_at, s.revision, \
    (SELECT count(*) FROM nodes n WHERE n.tenant_id = s.tenant_id AND n.cluster_id = s.cluster_id) AS total_nodes, \
    (SELECT count(*) FROM nodes n WHERE n.tenant_id = s.tenant_id AND n.cluster_id = s.cluster_id AND n.applied_revision >= s.revision) AS realized_nodes, \
    coalesce((SELECT json_agg(json_build_object('vip', host(f.vip), 'port', f.port, \
        'protocol', f.protocol) ORDER BY f.position) \
        FROM service_frontends f WHERE f.service_id = s.id), '[]'::json) AS frontends, \
    coalesce((SELECT json_agg(json_build_object('address', host(b.address), 'port', b.port, \
        'weight', b.weight, 'state', b.state) ORDER BY b.position) \
        FROM service_backends b WHERE b.service_id = s.id), '[]'::json) AS backends \
    FROM services s";

/// Every service of a tenant, for the desired-state compiler.
pub async fn all_of_tenant(conn: &mut PgConnection, tenant: Uuid) -> Result<Vec<ServiceRow>> {
    let rows: Vec<ServiceRow> =
        sqlx::query_as(&format!("{SELECT} WHERE s.tenant_id = $1 ORDER BY s.id"))
            .bind(tenant)
            .fetch_all(conn)
            .await?;
    Ok(rows)
}

/// One page of a cluster's services.
pub async fn list(
    conn: &mut PgConnection,
    tenant: Uuid,
    cluster: Option<Uuid>,
    list: &ListQuery,
) -> Result<Vec<ServiceRow>> {
    let scope = Scope { tenant, cluster };
    super::rows::page(conn, SELECT, "s", scope, list).await
}

pub async fn load(conn: &mut PgConnection, id: Uuid) -> Result<ServiceRow> {
    super::rows::by_id(conn, SELECT, "s", id).await
}

pub async fn insert(
    conn: &mut PgConnection,
    (tenant, cluster): (Uuid, Option<Uuid>),
    id: Uuid,
    revision: i64,
    s: &ServiceWrite<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO services (id, tenant_id, cluster_id, name, labels, algorithm, affinity_timeout, revision) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(tenant)
    .bind(cluster)
    .bind(s.name)
    .bind(sqlx::types::Json(s.labels))
    .bind(s.algorithm.as_str())
    .bind(s.affinity())
    .bind(revision)
    .execute(&mut *conn)
    .await?;
    write_children(conn, (tenant, cluster), id, s).await
}

pub async fn update(
    conn: &mut PgConnection,
    (tenant, cluster): (Uuid, Option<Uuid>),
    id: Uuid,
    revision: i64,
    s: &ServiceWrite<'_>,
) -> Result<()> {
    sqlx::query(
        "UPDATE services SET name = $2, labels = $3, algorithm = $4, affinity_timeout = $5, \
         revision = $6, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(s.name)
    .bind(sqlx::types::Json(s.labels))
    .bind(s.algorithm.as_str())
    .bind(s.affinity())
    .bind(revision)
    .execute(&mut *conn)
    .await?;
    write_children(conn, (tenant, cluster), id, s).await
}

pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM services WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Writes frontends and backends (replacing what was there).
async fn write_children(
    conn: &mut PgConnection,
    (tenant, cluster): (Uuid, Option<Uuid>),
    id: Uuid,
    s: &ServiceWrite<'_>,
) -> Result<()> {
    sqlx::query("DELETE FROM service_frontends WHERE service_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM service_backends WHERE service_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let vips: Vec<String> = s.frontends.iter().map(|f| f.vip.to_string()).collect();
    let ports: Vec<i32> = s.frontends.iter().map(|f| i32::from(f.port)).collect();
    let protos: Vec<&str> = s.frontends.iter().map(|f| f.protocol.as_str()).collect();
    sqlx::query(
        "INSERT INTO service_frontends (service_id, tenant_id, cluster_id, position, vip, port, protocol) \
         SELECT $1, $2, $3, pos - 1, vip::inet, port, proto \
         FROM unnest($4::text[], $5::int[], $6::text[]) WITH ORDINALITY AS f(vip, port, proto, pos)",
    )
    .bind(id)
    .bind(tenant)
    .bind(cluster)
    .bind(&vips)
    .bind(&ports)
    .bind(&protos)
    .execute(&mut *conn)
    .await?;
    let addrs: Vec<String> = s.backends.iter().map(|b| b.address.to_string()).collect();
    let ports: Vec<i32> = s.backends.iter().map(|b| i32::from(b.port)).collect();
    let weights: Vec<i64> = s.backends.iter().map(|b| i64::from(b.weight)).collect();
    let states: Vec<&str> = s.backends.iter().map(|b| b.state.as_str()).collect();
    sqlx::query(
        "INSERT INTO service_backends (service_id, tenant_id, position, address, port, weight, state) \
         SELECT $1, $2, pos - 1, addr::inet, port, weight, state \
         FROM unnest($3::text[], $4::int[], $5::bigint[], $6::text[]) WITH ORDINALITY AS b(addr, port, weight, state, pos)",
    )
    .bind(id)
    .bind(tenant)
    .bind(&addrs)
    .bind(&ports)
    .bind(&weights)
    .bind(&states)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
