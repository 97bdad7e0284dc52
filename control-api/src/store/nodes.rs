//! Nodes as their agents see them: registration with a join token, what each node was
//! last sent, and what it reports back (acks, heartbeats, health).

use std::sync::Arc;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;
use weft_model::desired::{node_ipcache, IpcacheEntry, NodeDesiredState};
use weft_model::labels::Labels;
use weft_model::routing::ClusterNode;

use crate::error::Result;

/// A live join token found by the hash of its secret: its id, tenant and cluster.
pub async fn find_join_token(pool: &PgPool, hash: &[u8]) -> Result<Option<(Uuid, Uuid, Uuid)>> {
    Ok(
        sqlx::query_as("SELECT id, tenant_id, cluster_id FROM weft_find_join_token($1)")
            .bind(hash)
            .fetch_optional(pool)
            .await?,
    )
}

/// Counts one use of a join token under its row lock, so two nodes cannot share a
/// single-use token; its name, or `None` when it is revoked, expired or used up.
pub async fn use_join_token(conn: &mut PgConnection, id: Uuid) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "UPDATE join_tokens SET uses = uses + 1 WHERE id = $1 AND revoked_at IS NULL \
         AND expires_at > now() AND (max_uses IS NULL OR uses < max_uses) RETURNING name",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// The node of this name in a cluster, locked for the rest of the transaction.
/// Deletes a node; its endpoints, sync state and test workloads go with it (cascade).
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn lock_by_name(
    conn: &mut PgConnection,
    cluster: Uuid,
    name: &str,
) -> Result<Option<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM nodes WHERE cluster_id = $1 AND name = $2 FOR UPDATE")
            .bind(cluster)
            .bind(name)
            .fetch_optional(conn)
            .await?,
    )
}

/// A node as it registers.
pub struct Registration<'a> {
    pub id: Uuid,
    pub tenant: Uuid,
    pub cluster: Uuid,
    pub name: &'a str,
    pub labels: &'a Labels,
    pub addresses: &'a [String],
    pub pod_cidrs: &'a [String],
    pub credential_hash: &'a [u8],
    pub agent_version: &'a str,
    pub kernel_version: &'a str,
    pub revision: i64,
}

/// Inserts a node or replaces one (a new credential: the old one stops working at once;
/// nothing applied yet).
pub async fn register(conn: &mut PgConnection, n: Registration<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO nodes (id, tenant_id, cluster_id, name, labels, addresses, pod_cidrs, \
           credential_hash, agent_version, kernel_version, revision) \
         VALUES ($1, $2, $3, $4, $5, $6::text[]::inet[], $7::text[]::cidr[], $8, $9, $10, $11) \
         ON CONFLICT (id) DO UPDATE SET labels = $5, addresses = $6::text[]::inet[], \
           pod_cidrs = $7::text[]::cidr[], credential_hash = $8, agent_version = $9, \
           kernel_version = $10, revision = $11, applied_revision = 0, updated_at = now()",
    )
    .bind(n.id)
    .bind(n.tenant)
    .bind(n.cluster)
    .bind(n.name)
    .bind(sqlx::types::Json(n.labels))
    .bind(n.addresses)
    .bind(n.pod_cidrs)
    .bind(n.credential_hash)
    .bind(n.agent_version)
    .bind(n.kernel_version)
    .bind(n.revision)
    .execute(conn)
    .await?;
    Ok(())
}

/// What the node was last sent, and at which revision; `None` also when the shared ipcache
/// it was sent is no longer kept (the node then gets a snapshot). `known`: a shared ipcache
/// the caller already holds (its digest and entries) — the usual case, a node resuming
/// where its cluster still is — so it is neither read nor decoded again (at 50,000
/// entries that was 2 MB of JSON per reconnecting agent).
pub async fn sent_state(
    conn: &mut PgConnection,
    node: Uuid,
    known: (&[u8], &[IpcacheEntry], &[ClusterNode]),
) -> Result<Option<(i64, NodeDesiredState)>> {
    type Row = (
        i64,
        Option<Vec<u8>>,
        Option<sqlx::types::Json<NodeDesiredState>>,
        Option<Vec<u8>>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT revision, local_pb, state, ipcache_digest FROM node_sync_state WHERE node_id = $1",
    )
    .bind(node)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((revision, pb, json, digest)) = row else {
        return Ok(None);
    };
    // A state that no longer decodes (written by another version) is as good as none: the
    // node gets a snapshot.
    let mut state = match (pb, json) {
        (Some(pb), _) => match decode_local(&pb) {
            Some(s) => s,
            None => return Ok(None),
        },
        (None, Some(json)) => json.0,
        (None, None) => return Ok(None),
    };
    match digest {
        // Rows written before shared ipcaches keep their own.
        None => {}
        Some(d) if d == known.0 => {
            state.ipcache = node_ipcache(known.1, state.host_ips());
            state.nodes = known.2.to_vec();
        }
        Some(d) => {
            type Shared = (
                sqlx::types::Json<Vec<IpcacheEntry>>,
                Option<sqlx::types::Json<Vec<ClusterNode>>>,
            );
            let shared: Option<Shared> =
                sqlx::query_as("SELECT entries, nodes FROM sent_ipcache WHERE digest = $1")
                    .bind(d)
                    .fetch_optional(&mut *conn)
                    .await?;
            match shared {
                Some((entries, nodes)) => {
                    state.ipcache = node_ipcache(&entries.0, state.host_ips());
                    // Kept before nodes were sent: none were.
                    state.nodes = nodes.map(|n| n.0).unwrap_or_default();
                }
                None => return Ok(None),
            }
        }
    }
    Ok(Some((revision, state)))
}

/// What every node of a cluster is sent alike, by content: the shared ipcache (see
/// [`node_ipcache`]) and the cluster's nodes.
#[derive(Debug)]
pub struct SentIpcache {
    /// Of both.
    pub digest: Vec<u8>,
    /// The entries as JSON.
    pub entries: String,
    /// The nodes as JSON.
    pub nodes: String,
}

impl SentIpcache {
    pub fn new(shared: &[IpcacheEntry], nodes: &[ClusterNode]) -> serde_json::Result<SentIpcache> {
        use sha2::Digest;
        let entries = serde_json::to_string(shared)?;
        let nodes = serde_json::to_string(nodes)?;
        let mut digest = sha2::Sha256::new();
        digest.update(entries.as_bytes());
        digest.update(b"\n");
        digest.update(nodes.as_bytes());
        Ok(SentIpcache {
            digest: digest.finalize().to_vec(),
            entries,
            nodes,
        })
    }
}

/// A node's full desired state as recorded: all of it in the wire's encoding but the
/// ipcache, which is its cluster's shared one (kept once, by content) with the node's own
/// addresses as `host`.
#[derive(Debug)]
pub struct SentState {
    /// The protobuf `Snapshot` of the node's state without its ipcache.
    pub local_pb: Vec<u8>,
    pub ipcache: Arc<SentIpcache>,
}

impl SentState {
    /// `local`: the node's state without its ipcache (which is
    /// `node_ipcache(shared, local.host_ips())`, rebuilt from `ipcache` on resume).
    pub fn new(local: &NodeDesiredState, ipcache: Arc<SentIpcache>) -> SentState {
        SentState {
            local_pb: prost::Message::encode_to_vec(&weft_proto::v1::Snapshot::from(local)),
            ipcache,
        }
    }
}

fn decode_local(pb: &[u8]) -> Option<NodeDesiredState> {
    let snapshot = <weft_proto::v1::Snapshot as prost::Message>::decode(pb).ok()?;
    NodeDesiredState::try_from(snapshot).ok()
}

/// What a node was just sent: at `revision`, `state` (the full state), or `None` when the
/// state sent before, unchanged, now stands for `revision` too.
#[derive(Debug)]
pub struct Sent {
    pub node: Uuid,
    pub tenant: Uuid,
    pub revision: i64,
    pub state: Option<SentState>,
}

/// Records what each node was sent (one tenant's nodes, at most one row each), for their
/// next reconnect: a few statements whatever the count. Shared ipcaches no node refers to
/// any more go.
pub async fn record_sent(conn: &mut PgConnection, tenant: Uuid, rows: &[Sent]) -> Result<()> {
    let (full, bare): (Vec<&Sent>, Vec<&Sent>) = rows.iter().partition(|r| r.state.is_some());
    let states: Vec<&SentState> = full.iter().filter_map(|r| r.state.as_ref()).collect();
    if !states.is_empty() {
        let mut shared: Vec<&SentIpcache> = Vec::new();
        for s in &states {
            if !shared.iter().any(|i| i.digest == s.ipcache.digest) {
                shared.push(&s.ipcache);
            }
        }
        let added = sqlx::query(
            "INSERT INTO sent_ipcache (tenant_id, digest, entries, nodes) \
             SELECT $1, d, e::jsonb, n::jsonb \
             FROM unnest($2::bytea[], $3::text[], $4::text[]) AS u(d, e, n) \
             ON CONFLICT (tenant_id, digest) DO NOTHING",
        )
        .bind(tenant)
        .bind(shared.iter().map(|i| i.digest.clone()).collect::<Vec<_>>())
        .bind(
            shared
                .iter()
                .map(|i| i.entries.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(shared.iter().map(|i| i.nodes.as_str()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        sqlx::query(
            "INSERT INTO node_sync_state (node_id, tenant_id, revision, local_pb, ipcache_digest) \
             SELECT n, $2, r, s, d \
             FROM unnest($1::uuid[], $3::bigint[], $4::bytea[], $5::bytea[]) AS u(n, r, s, d) \
             ON CONFLICT (node_id) DO UPDATE \
             SET revision = excluded.revision, local_pb = excluded.local_pb, state = NULL, \
                 ipcache_digest = excluded.ipcache_digest, updated_at = now()",
        )
        .bind(full.iter().map(|r| r.node).collect::<Vec<_>>())
        .bind(tenant)
        .bind(full.iter().map(|r| r.revision).collect::<Vec<_>>())
        .bind(
            states
                .iter()
                .map(|s| s.local_pb.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            states
                .iter()
                .map(|s| s.ipcache.digest.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
        // An ipcache stops being referenced only when nodes move to a new one: pruned when
        // one comes (what the last nodes to move left behind goes with the next one), not
        // on every batch.
        if added > 0 {
            sqlx::query(
                "DELETE FROM sent_ipcache i WHERE i.tenant_id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM node_sync_state s \
                  WHERE s.tenant_id = i.tenant_id AND s.ipcache_digest = i.digest)",
            )
            .bind(tenant)
            .execute(&mut *conn)
            .await?;
        }
    }
    if !bare.is_empty() {
        sqlx::query(
            "UPDATE node_sync_state s SET revision = u.r, updated_at = now() \
             FROM unnest($1::uuid[], $2::bigint[]) AS u(n, r) \
             WHERE s.node_id = ANY($1) AND s.node_id = u.n",
        )
        .bind(bare.iter().map(|r| r.node).collect::<Vec<_>>())
        .bind(bare.iter().map(|r| r.revision).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Marks `nodes` (of the transaction's tenant) seen now: the revision each has applied.
pub async fn heartbeats(conn: &mut PgConnection, nodes: &[Uuid]) -> Result<Vec<(Uuid, i64)>> {
    Ok(sqlx::query_as(
        "UPDATE nodes SET last_seen = now() WHERE id = ANY($1) RETURNING id, applied_revision",
    )
    .bind(nodes)
    .fetch_all(conn)
    .await?)
}

/// Marks the node seen now.
pub async fn touch(conn: &mut PgConnection, node: Uuid) -> Result<()> {
    sqlx::query("UPDATE nodes SET last_seen = now() WHERE id = $1")
        .bind(node)
        .execute(conn)
        .await?;
    Ok(())
}

/// A node's acknowledgement: the revision it now has applied in full (`None`: it could not
/// program every item of what it was sent), and the items it could not program.
#[derive(Debug)]
pub struct Acked {
    pub node: Uuid,
    pub tenant: Uuid,
    pub applied: Option<i64>,
    pub errors: serde_json::Value,
}

/// Records acknowledgements (one tenant's nodes, at most one row each) in one statement:
/// the applied revision only moves forward; the errors are the latest ack's.
pub async fn ack(conn: &mut PgConnection, rows: &[Acked]) -> Result<()> {
    sqlx::query(
        "UPDATE nodes n SET \
           applied_revision = \
             greatest(n.applied_revision, coalesce(a.applied, n.applied_revision)), \
           last_seen = now(), health = jsonb_set(n.health, '{apply_errors}', a.errors) \
         FROM unnest($1::uuid[], $2::bigint[], $3::jsonb[]) AS a(id, applied, errors) \
         WHERE n.id = ANY($1) AND n.id = a.id",
    )
    .bind(rows.iter().map(|r| r.node).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.applied).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.errors.clone()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// The node's tenant's name and the revision the node has applied.
pub async fn tenant_name_and_applied(conn: &mut PgConnection, node: Uuid) -> Result<(String, i64)> {
    Ok(sqlx::query_as(
        "SELECT t.name, n.applied_revision FROM nodes n JOIN tenants t ON t.id = n.tenant_id \
         WHERE n.id = $1",
    )
    .bind(node)
    .fetch_one(conn)
    .await?)
}

/// Adds to the count of flow records the node lost (kept in its health).
pub async fn add_flows_lost(conn: &mut PgConnection, node: Uuid, lost: i64) -> Result<()> {
    sqlx::query(
        "UPDATE nodes SET health = jsonb_set(health, '{flows_lost}', \
           to_jsonb(coalesce((health->>'flows_lost')::bigint, 0) + $2)) WHERE id = $1",
    )
    .bind(node)
    .bind(lost)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a health report, keeping the apply errors and lost-flow count the control
/// plane tracks itself; returns the node's tenant's name (for metric labels).
pub async fn health(
    conn: &mut PgConnection,
    node: Uuid,
    agent_version: &str,
    kernel_version: &str,
    health: serde_json::Value,
) -> Result<String> {
    Ok(sqlx::query_scalar(
        "UPDATE nodes n SET agent_version = $2, kernel_version = $3, last_seen = now(), \
         health = $4 || jsonb_build_object('apply_errors', coalesce(n.health->'apply_errors', '[]'::jsonb), \
                                           'flows_lost', coalesce(n.health->'flows_lost', '0'::jsonb)) \
         FROM tenants t WHERE n.id = $1 AND t.id = n.tenant_id RETURNING t.name",
    )
    .bind(node)
    .bind(agent_version)
    .bind(kernel_version)
    .bind(health)
    .fetch_one(conn)
    .await?)
}
