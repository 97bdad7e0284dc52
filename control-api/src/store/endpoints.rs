//! Endpoints as a node reports them, and the identities their label sets get.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;
use weft_model::labels::Labels;
use weft_model::policy::NamedPort;

use crate::error::Result;

/// An endpoint as stored on its node: id, name, labels, IPv4, IPv6, named ports.
pub type StoredEndpoint = (
    Uuid,
    String,
    sqlx::types::Json<Labels>,
    Option<String>,
    Option<String>,
    sqlx::types::Json<Vec<NamedPort>>,
);

/// The identity number of a label set in a tenant, allocated on first use. Same label
/// set, same number, across every cluster of the tenant. Numbers start at 256 (below are
/// reserved); allocation is serialised per tenant by an advisory lock.
pub async fn identity_for(conn: &mut PgConnection, tenant: Uuid, labels: &Labels) -> Result<i64> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 42))")
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar(
        "INSERT INTO identities (tenant_id, number, labels) \
         SELECT $1, coalesce(max(number), 255) + 1, $2 FROM identities WHERE tenant_id = $1 \
         ON CONFLICT (tenant_id, labels) DO UPDATE SET last_used_at = now() RETURNING number",
    )
    .bind(tenant)
    .bind(sqlx::types::Json(labels))
    .fetch_one(conn)
    .await?)
}

/// The node's endpoints, locked for the rest of the transaction.
pub async fn lock_of_node(conn: &mut PgConnection, node: Uuid) -> Result<Vec<StoredEndpoint>> {
    Ok(sqlx::query_as(
        "SELECT id, name, labels, host(ipv4), host(ipv6), named_ports FROM endpoints WHERE node_id = $1 FOR UPDATE",
    )
    .bind(node)
    .fetch_all(conn)
    .await?)
}

/// An endpoint as a node reports it, its identity resolved.
pub struct EndpointWrite<'a> {
    pub id: Uuid,
    pub tenant: Uuid,
    pub cluster: Uuid,
    pub node: Uuid,
    pub name: &'a str,
    pub labels: &'a Labels,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub identity: i64,
    pub named_ports: &'a [NamedPort],
    pub revision: i64,
}

/// Inserts an endpoint or updates it in place.
pub async fn upsert(conn: &mut PgConnection, e: EndpointWrite<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO endpoints (id, tenant_id, cluster_id, node_id, name, labels, ipv4, ipv6, identity, revision, named_ports) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8::inet, $9, $10, $11) \
         ON CONFLICT (id) DO UPDATE SET labels = $6, ipv4 = $7::inet, ipv6 = $8::inet, \
           identity = $9, revision = $10, named_ports = $11, updated_at = now()",
    )
    .bind(e.id)
    .bind(e.tenant)
    .bind(e.cluster)
    .bind(e.node)
    .bind(e.name)
    .bind(sqlx::types::Json(e.labels))
    .bind(e.ipv4)
    .bind(e.ipv6)
    .bind(e.identity)
    .bind(e.revision)
    .bind(sqlx::types::Json(e.named_ports))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM endpoints WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes identities no endpoint uses that were last used more than `grace_secs` ago
/// (through the one function that may do so across tenants); how many.
pub async fn collect_unused_identities(pool: &PgPool, grace_secs: f64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT weft_gc_identities(make_interval(secs => $1))")
        .bind(grace_secs)
        .fetch_one(pool)
        .await
}
