//! Connected agents' `last_seen`, written for all of a replica's open `Sync` streams at once:
//! every [`HEARTBEAT`] one statement per tenant, and a stream that just opened within
//! [`FRESH`] (so a reconnecting node shows connected at once). Before, each stream ran its own
//! transaction every 10 s: 1,000 transactions a second at 10,000 agents, spread over the
//! moments the control plane fans a change out.
//!
//! The statement also returns what each node has acknowledged, so the sync-lag metric
//! learns of acks that went to another replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::store::{self, nodes};
use crate::tasks::Tasks;

/// How often every connected node's `last_seen` is refreshed (a node counts as connected
/// for [`crate::store::inventory::CONNECTED_WITHIN_SECONDS`] after).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// How soon a node whose stream just opened is marked seen: the opens of a reconnect storm
/// within it share one statement.
pub const FRESH: Duration = Duration::from_millis(200);
/// Nodes in one statement at most.
const CHUNK: usize = 1024;

#[derive(Default)]
pub struct Heartbeats {
    inner: Mutex<Inner>,
    opened: Notify,
}

#[derive(Default)]
struct Inner {
    /// Per node with an open stream on this replica: its tenant and how many streams (an
    /// agent's new stream may open before its old one is gone).
    open: HashMap<Uuid, (Uuid, usize)>,
    /// Nodes whose first stream opened since the last write.
    fresh: Vec<Uuid>,
}

/// A node counted as connected to this replica while this lives (one per stream).
pub struct Present {
    heartbeats: Arc<Heartbeats>,
    node: Uuid,
}

impl Drop for Present {
    fn drop(&mut self) {
        let mut inner = self.heartbeats.lock();
        if let Some((_, streams)) = inner.open.get_mut(&self.node) {
            *streams -= 1;
            if *streams == 0 {
                inner.open.remove(&self.node);
            }
        }
    }
}

impl Heartbeats {
    /// Starts the writer task; it runs until `tasks` stop.
    pub fn spawn(pool: PgPool, metrics: Arc<Metrics>, tasks: &Tasks) -> Arc<Heartbeats> {
        let heartbeats = Arc::new(Heartbeats::default());
        let hb = heartbeats.clone();
        tasks.spawn("heartbeats", async move {
            let mut every = tokio::time::interval(HEARTBEAT);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let nodes = tokio::select! {
                    _ = every.tick() => hb.all(),
                    () = hb.opened.notified() => {
                        tokio::time::sleep(FRESH).await;
                        hb.take_fresh()
                    }
                };
                if nodes.is_empty() {
                    continue;
                }
                match write(&pool, nodes).await {
                    Ok(acked) => {
                        for (node, revision) in acked {
                            metrics.sync_lag.acked(node, revision);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not record heartbeats"),
                }
            }
        });
        heartbeats
    }

    /// Counts `node` (of `tenant`) as connected until the returned guard drops.
    pub fn enter(self: &Arc<Self>, node: Uuid, tenant: Uuid) -> Present {
        let first = {
            let mut inner = self.lock();
            let entry = inner.open.entry(node).or_insert((tenant, 0));
            entry.1 += 1;
            let first = entry.1 == 1;
            if first {
                inner.fresh.push(node);
            }
            first
        };
        if first {
            self.opened.notify_one();
        }
        Present {
            heartbeats: self.clone(),
            node,
        }
    }

    /// Every connected node, by tenant.
    fn all(&self) -> Vec<(Uuid, Vec<Uuid>)> {
        let mut inner = self.lock();
        inner.fresh.clear();
        by_tenant(inner.open.iter().map(|(n, (t, _))| (*n, *t)))
    }

    /// The nodes that opened since the last write and are still connected, by tenant.
    fn take_fresh(&self) -> Vec<(Uuid, Vec<Uuid>)> {
        let mut inner = self.lock();
        let fresh = std::mem::take(&mut inner.fresh);
        by_tenant(
            fresh
                .into_iter()
                .filter_map(|n| inner.open.get(&n).map(|(t, _)| (n, *t))),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn by_tenant(nodes: impl Iterator<Item = (Uuid, Uuid)>) -> Vec<(Uuid, Vec<Uuid>)> {
    let mut groups: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (node, tenant) in nodes {
        groups.entry(tenant).or_default().push(node);
    }
    groups.into_iter().collect()
}

/// One transaction: each tenant's nodes marked seen under that tenant (RLS); what each
/// has acknowledged.
async fn write(pool: &PgPool, groups: Vec<(Uuid, Vec<Uuid>)>) -> Result<Vec<(Uuid, i64)>> {
    let mut tx = pool.begin().await?;
    let mut acked = Vec::new();
    for (tenant, nodes) in groups {
        store::set_tenant(&mut tx, tenant).await?;
        for chunk in nodes.chunks(CHUNK) {
            acked.extend(nodes::heartbeats(&mut tx, chunk).await?);
        }
    }
    tx.commit().await?;
    Ok(acked)
}

#[cfg(test)]
mod tests {
    use super::Heartbeats;
    use std::sync::Arc;
    use uuid::Uuid;

    #[test]
    fn a_node_is_connected_while_any_of_its_streams_is_open() {
        let hb = Arc::new(Heartbeats::default());
        let (node, other, tenant) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let first = hb.enter(node, tenant);
        let second = hb.enter(node, tenant);
        let _o = hb.enter(other, tenant);
        // Fresh once each, though `node` opened twice.
        let fresh = hb.take_fresh();
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].1.len(), 2);
        assert!(hb.take_fresh().is_empty());
        drop(first);
        assert_eq!(hb.all()[0].1.len(), 2, "node still has a stream open");
        drop(second);
        assert_eq!(hb.all(), vec![(tenant, vec![other])]);
    }

    #[test]
    fn a_stream_gone_before_the_write_is_not_marked_seen() {
        let hb = Arc::new(Heartbeats::default());
        let (node, tenant) = (Uuid::new_v4(), Uuid::new_v4());
        drop(hb.enter(node, tenant));
        assert!(hb.take_fresh().is_empty());
        assert!(hb.all().is_empty());
    }
}
