//! Every replica LISTENs for committed desired-state changes, so agents connected to any
//! replica learn of a change made through any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;
use weft_telemetry::TraceParent;

use crate::store::CHANGES_CHANNEL;
use crate::tasks::Tasks;

/// A committed change. `tenant: None` means "something may have been missed; everyone
/// recompute" (sent after the listener reconnects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub revision: i64,
    pub tenant: Option<Uuid>,
    /// Trace context of the request that made the change, when it was traced: the pushes
    /// it causes on every replica join that trace.
    pub trace: Option<TraceParent>,
    /// A node was registered or replaced, or a cluster or the tenant changed: node
    /// credentials of the tenant may have been revoked.
    pub may_revoke_nodes: bool,
}

/// Parses a NOTIFY payload `revision:tenant:kind:id:op[:traceparent]` (see
/// `store::record_change`).
pub fn parse(payload: &str) -> Option<Change> {
    let mut parts = payload.split(':');
    let revision = parts.next()?.parse().ok()?;
    let tenant = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    let trace = parts.nth(2).and_then(|t| t.parse().ok());
    Some(Change {
        revision,
        tenant: Some(tenant),
        trace,
        may_revoke_nodes: matches!(kind, "node" | "cluster" | "tenant"),
    })
}

/// What this replica has heard of a tenant's changes: the latest revision announced for it,
/// and how many times the listener has had to reconnect (after which anything may have
/// been missed). A view loaded at or after both is current as far as this replica knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Heard {
    pub revision: i64,
    pub resets: u64,
}

/// The latest change heard for one tenant: what its agent streams watch. A watch, not a
/// queue: a stream that wakes late sees only the newest change (it loads the newest view
/// anyway), and a change wakes only its own tenant's streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latest {
    pub revision: i64,
    pub trace: Option<TraceParent>,
}

/// The replica's change feed: a watch per tenant for the agent streams, one for listener
/// resets, and a broadcast of every change for whole-replica caches. Each watch is updated
/// before the broadcast, so a stream that subscribes and then reads [`Changes::heard`]
/// misses nothing.
#[derive(Clone)]
pub struct Changes {
    tx: broadcast::Sender<Change>,
    tenants: Arc<Mutex<HashMap<Uuid, watch::Sender<Latest>>>>,
    resets: Arc<watch::Sender<u64>>,
}

impl Changes {
    fn new() -> Changes {
        Changes {
            tx: broadcast::channel(1024).0,
            tenants: Arc::default(),
            resets: Arc::new(watch::channel(0).0),
        }
    }

    /// Every change of every tenant (and resets, as `tenant: None`).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// Calls `f` with `tenant`'s watch, made on first use.
    fn with_tenant<R>(&self, tenant: Uuid, f: impl FnOnce(&watch::Sender<Latest>) -> R) -> R {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        f(tenants
            .entry(tenant)
            .or_insert_with(|| watch::channel(Latest::default()).0))
    }

    /// The latest change of `tenant`; `changed()` wakes on the next one.
    pub fn watch(&self, tenant: Uuid) -> watch::Receiver<Latest> {
        self.with_tenant(tenant, watch::Sender::subscribe)
    }

    /// The count of listener reconnects (after each, anything may have been missed);
    /// `changed()` wakes on the next one.
    pub fn resets(&self) -> watch::Receiver<u64> {
        self.resets.subscribe()
    }

    /// What has been heard of `tenant`'s changes so far.
    pub fn heard(&self, tenant: Uuid) -> Heard {
        let revision = {
            let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            tenants.get(&tenant).map_or(0, |w| w.borrow().revision)
        };
        Heard {
            revision,
            resets: *self.resets.borrow(),
        }
    }

    /// Starts a task that calls `invalidate` on `cache` with the tenant of each change
    /// `wanted` accepts, and with `None` (everything) when changes may have been missed (a
    /// lagging receiver, a reconnected listener); it ends when the cache is dropped.
    pub fn spawn_invalidation<C: Send + Sync + 'static>(
        &self,
        tasks: &Tasks,
        name: &'static str,
        cache: &Arc<C>,
        wanted: fn(&Change) -> bool,
        invalidate: fn(&C, Option<Uuid>),
    ) {
        let mut changes = self.subscribe();
        let cache = Arc::downgrade(cache);
        tasks.spawn(name, async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let tenant = match changes.recv().await {
                    Ok(c) if !wanted(&c) => continue,
                    Ok(c) => c.tenant,
                    Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => return,
                };
                let Some(cache) = cache.upgrade() else { return };
                invalidate(&cache, tenant);
            }
        });
    }

    /// Records and announces a change (no receivers is fine: no agent is connected to
    /// this replica right now).
    fn publish(&self, change: Change) {
        match change.tenant {
            Some(t) => self.with_tenant(t, |w| {
                w.send_modify(|l| {
                    if change.revision >= l.revision {
                        *l = Latest {
                            revision: change.revision,
                            trace: change.trace,
                        };
                    }
                })
            }),
            None => self.resets.send_modify(|r| *r += 1),
        }
        let _ = self.tx.send(change);
    }
}

/// Starts the replica's listener task and returns the feed it publishes on.
pub fn spawn_listener(pool: PgPool, tasks: &Tasks) -> Changes {
    let feed = Changes::new();
    let out = feed.clone();
    tasks.spawn("change listener", async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match listen(&pool, &feed).await {
                Ok(never) => match never {},
                Err(e) => {
                    tracing::warn!(error = %e, "change listener lost its connection; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // Notifications may have been missed meanwhile.
                    feed.publish(Change {
                        revision: 0,
                        tenant: None,
                        trace: None,
                        may_revoke_nodes: true,
                    });
                }
            }
        }
    });
    out
}

async fn listen(pool: &PgPool, feed: &Changes) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    loop {
        // `try_recv` surfaces a lost connection as `None` instead of reconnecting silently.
        let Some(n) = listener.try_recv().await? else {
            return Err(sqlx::Error::Protocol("listener connection closed".into()));
        };
        match parse(n.payload()) {
            Some(change) => feed.publish(change),
            None => tracing::warn!(payload = n.payload(), "unparseable change notification"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Change, Changes, Heard};

    #[test]
    fn heard_keeps_the_latest_revision_per_tenant_and_counts_resets() {
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let feed = Changes::new();
        let mut rx = feed.subscribe();
        let change = |revision, tenant| Change {
            revision,
            tenant,
            trace: None,
            may_revoke_nodes: false,
        };
        feed.publish(change(5, Some(a)));
        feed.publish(change(3, Some(a)));
        feed.publish(change(4, Some(b)));
        assert_eq!(
            feed.heard(a),
            Heard {
                revision: 5,
                resets: 0
            }
        );
        assert_eq!(feed.heard(b).revision, 4);
        feed.publish(change(0, None));
        assert_eq!(
            feed.heard(a),
            Heard {
                revision: 5,
                resets: 1
            }
        );
        assert_eq!(
            rx.try_recv().map(|c| c.revision),
            Ok(5),
            "broadcast as well"
        );
    }

    #[test]
    fn parses_notify_payloads() {
        let t = uuid::Uuid::now_v7();
        let c = super::parse(&format!("42:{t}:policy:{t}:update")).expect("parses");
        assert_eq!(c.revision, 42);
        assert_eq!(c.tenant, Some(t));
        assert_eq!(c.trace, None);
        assert!(!c.may_revoke_nodes);
        assert_eq!(super::parse("x:y"), None);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = super::parse(&format!("42:{t}:policy:{t}:update:{tp}")).expect("parses");
        assert_eq!(c.trace.map(|t| t.to_string()).as_deref(), Some(tp));
        for kind in ["node", "cluster", "tenant"] {
            let c = super::parse(&format!("42:{t}:{kind}:{t}:delete")).expect("parses");
            assert!(c.may_revoke_nodes, "{kind}");
        }
    }
}
