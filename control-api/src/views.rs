//! Tenant views shared by a replica's agent streams. A change wakes every stream of its
//! tenant; the first to ask loads the view (one consistent snapshot) and the others wait for
//! it and share it, so a change costs one load per replica, not one per connected node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::IpNet;
use sqlx::PgPool;
use uuid::Uuid;
use weft_model::desired::{self, ClusterPlan, IpcacheEntry, NodeView, TenantView};
use weft_model::routing::ClusterNode;

use crate::changes::{Changes, Heard};
use crate::error::Result;
use crate::store::nodes::SentIpcache;
use crate::store::{revision, tenant, view};

/// A tenant's view and the revision it reflects: every change up to it is in, none after.
#[derive(Clone)]
pub struct Loaded {
    pub revision: i64,
    pub view: Arc<TenantView>,
    /// The listener resets known when it was loaded.
    resets: u64,
    /// What the view's nodes share when compiled, built on first use.
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    nodes: OnceLock<HashMap<String, usize>>,
    plans: Mutex<HashMap<String, Arc<OnceLock<Arc<Planned>>>>>,
}

/// A cluster's compile plan, and its shared ipcache as recorded with what nodes are sent.
pub struct Planned {
    pub plan: ClusterPlan,
    pub ipcache: serde_json::Result<Arc<SentIpcache>>,
    /// The delta to this plan's shared ipcache from earlier ones, by their digests: worked
    /// out by the first stream that needs it, for all.
    deltas: Mutex<HashMap<Vec<u8>, Arc<SharedDelta>>>,
}

/// Upserts and removals between two shared ipcaches, and between two lists of the
/// cluster's nodes (by name).
pub struct SharedDelta {
    pub ipcache: (Vec<IpcacheEntry>, Vec<IpNet>),
    pub nodes: (Vec<ClusterNode>, Vec<String>),
}

impl Planned {
    fn new(plan: ClusterPlan) -> Planned {
        let ipcache = SentIpcache::new(plan.shared_ipcache(), plan.shared_nodes()).map(Arc::new);
        Planned {
            plan,
            ipcache,
            deltas: Mutex::default(),
        }
    }

    /// The content digest of the shared ipcache (empty if it could not be encoded).
    fn digest(&self) -> &[u8] {
        self.ipcache.as_ref().map_or(&[], |i| i.digest.as_slice())
    }

    /// The delta from `old`'s shared ipcache and nodes to this one's.
    pub fn shared_delta(&self, old: &Planned) -> Arc<SharedDelta> {
        let mut deltas = self.deltas.lock().unwrap_or_else(|p| p.into_inner());
        // Few streams lag by more than a change or two: keep what is asked for now.
        if deltas.len() > 8 {
            deltas.clear();
        }
        deltas
            .entry(old.digest().to_vec())
            .or_insert_with(|| {
                let (old, new) = (&old.plan, &self.plan);
                Arc::new(SharedDelta {
                    ipcache: desired::ipcache_diff(old.shared_ipcache(), new.shared_ipcache()),
                    nodes: desired::nodes_diff(old.shared_nodes(), new.shared_nodes()),
                })
            })
            .clone()
    }
}

impl Loaded {
    fn new(revision: i64, view: TenantView, resets: u64) -> Loaded {
        Loaded {
            revision,
            view: Arc::new(view),
            resets,
            shared: Arc::default(),
        }
    }

    /// Node `id` of the view.
    pub fn node(&self, id: &str) -> Option<&NodeView> {
        let index = self.shared.nodes.get_or_init(|| {
            let nodes = self.view.nodes.iter().enumerate();
            nodes.map(|(i, n)| (n.id.clone(), i)).collect()
        });
        index.get(id).map(|&i| &self.view.nodes[i])
    }

    /// The compile plan of `cluster`, shared by every node of it that compiles from this
    /// view (the first to ask builds it; the others wait for it).
    pub fn plan(&self, cluster: &str) -> Arc<Planned> {
        let slot = self
            .shared
            .plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.to_string())
            .or_default()
            .clone();
        slot.get_or_init(|| Arc::new(Planned::new(ClusterPlan::new(&self.view, cluster))))
            .clone()
    }

    fn covers(&self, want: Heard) -> bool {
        self.revision >= want.revision && self.resets == want.resets
    }
}

/// A tenant's latest view: read under a plain mutex (a clone of two `Arc`s, so the streams
/// woken by a change do not queue behind each other), loaded under the async one (one load
/// at a time; those who wait find it done).
#[derive(Default)]
struct Slot {
    latest: Mutex<Option<Loaded>>,
    loading: tokio::sync::Mutex<()>,
}

impl Slot {
    fn current(&self, want: Heard) -> Option<Loaded> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.as_ref().filter(|l| l.covers(want)).cloned()
    }
}

pub struct Views {
    pool: PgPool,
    changes: Changes,
    tenants: Mutex<HashMap<Uuid, Arc<Slot>>>,
    /// Views loaded from PostgreSQL by this replica.
    loads: AtomicU64,
}

impl Views {
    pub fn new(pool: PgPool, changes: Changes) -> Views {
        Views {
            pool,
            changes,
            tenants: Mutex::default(),
            loads: AtomicU64::new(0),
        }
    }

    /// How many views this replica has loaded from PostgreSQL.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// The tenant's view as of every change this replica has heard of (a stream woken by a
    /// change calls this).
    pub async fn heard(&self, tenant: Uuid) -> Result<Loaded> {
        let want = self.changes.heard(tenant);
        self.at_least(tenant, want).await
    }

    /// The tenant's view as of every change committed before the call (a stream that just
    /// opened calls this: the change that made its node may not have been heard yet).
    pub async fn committed(&self, tenant: Uuid) -> Result<Loaded> {
        let mut want = self.changes.heard(tenant);
        let mut tx = self.pool.begin().await?;
        tenant::set_tenant(&mut tx, tenant).await?;
        want.revision = want
            .revision
            .max(revision::latest_of_tenant(&mut tx, tenant).await?);
        tx.commit().await?;
        self.at_least(tenant, want).await
    }

    async fn at_least(&self, tenant: Uuid, want: Heard) -> Result<Loaded> {
        let slot: Arc<Slot> = self
            .tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant)
            .or_default()
            .clone();
        if let Some(l) = slot.current(want) {
            return Ok(l);
        }
        let _loading = slot.loading.lock().await;
        if let Some(l) = slot.current(want) {
            return Ok(l);
        }
        let (revision, view) = self.load(tenant).await?;
        let loaded = Loaded::new(revision, view, want.resets);
        *slot.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(loaded.clone());
        Ok(loaded)
    }

    async fn load(&self, tenant: Uuid) -> Result<(i64, TenantView)> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let mut tx = self.pool.begin().await?;
        view::snapshot(&mut tx).await?;
        tenant::set_tenant(&mut tx, tenant).await?;
        let revision = revision::current(&mut tx).await?;
        let view = view::load_view(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok((revision, view))
    }
}
