//! Node credentials already checked by this replica. Every agent call carries its
//! credential, and at fleet scale the acks of one change are a call per node: looking each
//! up in PostgreSQL was a query per node per change. A credential stays cached until a
//! change that may revoke it is heard (a node of its tenant registered or replaced, a
//! cluster or the tenant deleted), or until changes may have been missed.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

use crate::store::lookup::NodeRow;

/// Credentials cached at most; past it the cache starts over (a bound, not an eviction
/// policy: a replica holds one entry per connected agent).
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct NodeCredentials {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_hash: HashMap<Vec<u8>, NodeRow>,
    /// Bumped by every invalidation: a lookup that began before one does not cache what it
    /// read (it may be what was just revoked).
    epoch: u64,
}

/// Where a lookup started, to be given back with its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64);

impl NodeCredentials {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain maps behind a panicked holder are still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node of a credential hash if cached; otherwise the epoch to look it up in.
    pub fn get(&self, hash: &[u8]) -> Result<NodeRow, Epoch> {
        let inner = self.lock();
        inner.by_hash.get(hash).cloned().ok_or(Epoch(inner.epoch))
    }

    /// Caches what a lookup begun at `since` found, unless something was invalidated since.
    pub fn insert(&self, since: Epoch, hash: Vec<u8>, node: NodeRow) {
        let mut inner = self.lock();
        if inner.epoch != since.0 {
            return;
        }
        if inner.by_hash.len() >= CAPACITY {
            inner.by_hash.clear();
        }
        inner.by_hash.insert(hash, node);
    }

    /// Forgets one tenant's credentials (`None`: every tenant's).
    pub fn invalidate(&self, tenant: Option<Uuid>) {
        let mut inner = self.lock();
        inner.epoch += 1;
        match tenant {
            Some(t) => inner.by_hash.retain(|_, n| n.tenant_id != t),
            None => inner.by_hash.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::NodeCredentials;
    use crate::store::lookup::NodeRow;
    use uuid::Uuid;

    fn row(tenant: Uuid) -> NodeRow {
        NodeRow {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            cluster_id: Uuid::now_v7(),
            name: "n".into(),
        }
    }

    #[test]
    fn a_tenants_invalidation_forgets_only_its_credentials() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let cache = NodeCredentials::default();
        let Err(epoch) = cache.get(b"a") else {
            panic!("empty cache answered")
        };
        cache.insert(epoch, b"a".to_vec(), row(a));
        cache.insert(epoch, b"b".to_vec(), row(b));
        assert_eq!(cache.get(b"a").map(|n| n.tenant_id), Ok(a));
        cache.invalidate(Some(a));
        assert!(cache.get(b"a").is_err());
        assert_eq!(cache.get(b"b").map(|n| n.tenant_id), Ok(b));
        cache.invalidate(None);
        assert!(cache.get(b"b").is_err());
    }

    #[test]
    fn a_lookup_begun_before_an_invalidation_is_not_cached() {
        let a = Uuid::now_v7();
        let cache = NodeCredentials::default();
        let Err(epoch) = cache.get(b"a") else {
            panic!("empty cache answered")
        };
        // The credential is revoked while the lookup runs: what it read may be stale.
        cache.invalidate(Some(a));
        cache.insert(epoch, b"a".to_vec(), row(a));
        assert!(cache.get(b"a").is_err());
    }
}
