//! Deltas: what changes between two states of one node, and applying one.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::view::*;
use crate::routing::{ClusterNode, RoutingMode};
use crate::workload::{DesiredProbe, DesiredWorkload};

/// What changes between two states of one node. Keyed sections are replaced item by item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub endpoints_upsert: Vec<DesiredEndpoint>,
    pub endpoints_remove: Vec<String>,
    pub ipcache_upsert: Vec<IpcacheEntry>,
    pub ipcache_remove: Vec<IpNet>,
    /// Whole rule lists, replacing the endpoint's previous list.
    pub policy_upsert: BTreeMap<String, Rules>,
    pub policy_remove: Vec<String>,
    pub services_upsert: Vec<DesiredService>,
    pub services_remove: Vec<String>,
    /// The new list when it changed.
    pub unsupported: Option<Vec<String>>,
    #[serde(default)]
    pub workloads_upsert: Vec<DesiredWorkload>,
    #[serde(default)]
    pub workloads_remove: Vec<String>,
    #[serde(default)]
    pub probes_upsert: Vec<DesiredProbe>,
    #[serde(default)]
    pub probes_remove: Vec<String>,
    /// The new routing mode when it changed.
    #[serde(default)]
    pub routing: Option<RoutingMode>,
    #[serde(default)]
    pub nodes_upsert: Vec<ClusterNode>,
    /// Node names.
    #[serde(default)]
    pub nodes_remove: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        *self == Delta::default()
    }
}

/// The delta that turns `old` into `new` (see [`apply`]).
pub fn diff(old: &NodeDesiredState, new: &NodeDesiredState) -> Delta {
    let (endpoints_upsert, endpoints_remove) =
        diff_keyed(&old.endpoints, &new.endpoints, |e| e.id.clone());
    let (ipcache_upsert, ipcache_remove) = diff_keyed(&old.ipcache, &new.ipcache, |e| e.prefix);
    let (services_upsert, services_remove) =
        diff_keyed(&old.services, &new.services, |s| s.id.clone());
    let (workloads_upsert, workloads_remove) =
        diff_keyed(&old.workloads, &new.workloads, |w| w.name.clone());
    let (probes_upsert, probes_remove) = diff_keyed(&old.probes, &new.probes, |p| p.id.clone());
    let (nodes_upsert, nodes_remove) = nodes_diff(&old.nodes, &new.nodes);
    let policy_upsert = new
        .policy
        .iter()
        .filter(|(id, rules)| old.policy.get(*id) != Some(*rules))
        .map(|(id, rules)| (id.clone(), rules.clone()))
        .collect();
    let policy_remove = old
        .policy
        .keys()
        .filter(|id| !new.policy.contains_key(*id))
        .cloned()
        .collect();
    Delta {
        endpoints_upsert,
        endpoints_remove,
        ipcache_upsert,
        ipcache_remove,
        policy_upsert,
        policy_remove,
        services_upsert,
        services_remove,
        unsupported: (old.unsupported != new.unsupported).then(|| new.unsupported.clone()),
        workloads_upsert,
        workloads_remove,
        probes_upsert,
        probes_remove,
        routing: (old.routing != new.routing).then_some(new.routing),
        nodes_upsert,
        nodes_remove,
    }
}

/// The delta between two lists of a cluster's nodes (sorted by name): worked out once per
/// cluster and change, since every node of the cluster has the same list.
pub fn nodes_diff(old: &[ClusterNode], new: &[ClusterNode]) -> (Vec<ClusterNode>, Vec<String>) {
    diff_keyed(old, new, |n| n.name.clone())
}

/// The ipcache part of the delta between two nodes' ipcaches: `old_shared` and
/// `new_shared` are their clusters' shared ipcaches, `shared_delta` the delta between those
/// (computed once for every node), and `own` the node's addresses, the same in both.
/// Equals the ipcache part of `diff` over `node_ipcache(old_shared, own)` and
/// `node_ipcache(new_shared, own)`.
pub fn node_ipcache_delta(
    old_shared: &[IpcacheEntry],
    shared_delta: &(Vec<IpcacheEntry>, Vec<IpNet>),
    own: &[std::net::IpAddr],
) -> (Vec<IpcacheEntry>, Vec<IpNet>) {
    let own: Vec<IpNet> = own.iter().map(|ip| IpNet::from(*ip)).collect();
    let had = |p: &IpNet| old_shared.binary_search_by_key(p, |e| e.prefix).is_ok();
    let upsert = shared_delta
        .0
        .iter()
        .filter_map(|e| {
            if !own.contains(&e.prefix) {
                return Some(*e);
            }
            // The node's own address is `host` there whatever the cluster says; only its
            // coming into the ipcache is a change.
            (!had(&e.prefix)).then_some(IpcacheEntry {
                prefix: e.prefix,
                identity: crate::identity::HOST,
            })
        })
        .collect();
    (upsert, shared_delta.1.clone())
}

/// The delta between two shared ipcaches (both sorted by prefix).
pub fn ipcache_diff(old: &[IpcacheEntry], new: &[IpcacheEntry]) -> (Vec<IpcacheEntry>, Vec<IpNet>) {
    diff_keyed(old, new, |e| e.prefix)
}

/// `state` with `delta` applied: `apply(old.clone(), &diff(&old, &new)) == new`.
///
/// Takes the state: the lists a delta does not touch move across as they are, and the
/// others are merged by moving their items. An agent applies every change to a state as
/// large as its cluster (the ipcache and the node list), usually with a delta of a few items.
pub fn apply(state: NodeDesiredState, delta: &Delta) -> NodeDesiredState {
    let NodeDesiredState {
        endpoints,
        ipcache,
        mut policy,
        services,
        unsupported,
        workloads,
        probes,
        routing,
        nodes,
    } = state;
    for id in &delta.policy_remove {
        policy.remove(id);
    }
    policy.extend(delta.policy_upsert.clone());
    NodeDesiredState {
        endpoints: apply_keyed(
            endpoints,
            &delta.endpoints_upsert,
            &delta.endpoints_remove,
            |e| e.id.clone(),
        ),
        ipcache: apply_keyed(ipcache, &delta.ipcache_upsert, &delta.ipcache_remove, |e| {
            e.prefix
        }),
        policy,
        services: apply_keyed(
            services,
            &delta.services_upsert,
            &delta.services_remove,
            |s| s.id.clone(),
        ),
        unsupported: delta.unsupported.clone().unwrap_or(unsupported),
        workloads: apply_keyed(
            workloads,
            &delta.workloads_upsert,
            &delta.workloads_remove,
            |w| w.name.clone(),
        ),
        probes: apply_keyed(probes, &delta.probes_upsert, &delta.probes_remove, |p| {
            p.id.clone()
        }),
        routing: delta.routing.unwrap_or(routing),
        nodes: apply_keyed(nodes, &delta.nodes_upsert, &delta.nodes_remove, |n| {
            n.name.clone()
        }),
    }
}

/// Upserts (new or changed items) and removed keys between two lists sorted by `key`.
fn diff_keyed<T: Clone + PartialEq, K: Ord + Clone>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Vec<K>) {
    // The compiler's lists are sorted by key: one merge pass, no maps (a node's ipcache is
    // the size of its cluster, and every node is diffed on every change).
    let sorted = |v: &[T]| v.windows(2).all(|w| key(&w[0]) < key(&w[1]));
    if sorted(old) && sorted(new) {
        return merge_keyed(old, new, key);
    }
    let old_by: BTreeMap<K, &T> = old.iter().map(|t| (key(t), t)).collect();
    let new_keys: BTreeSet<K> = new.iter().map(&key).collect();
    let upsert = new
        .iter()
        .filter(|t| old_by.get(&key(t)) != Some(t))
        .cloned()
        .collect();
    let remove = old_by
        .keys()
        .filter(|k| !new_keys.contains(*k))
        .cloned()
        .collect();
    (upsert, remove)
}

/// [`diff_keyed`] of two lists sorted by unique keys.
fn merge_keyed<T: Clone + PartialEq, K: Ord>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Vec<K>) {
    let (mut upsert, mut remove) = (Vec::new(), Vec::new());
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(a), None) => {
                remove.push(key(a));
                o.next();
            }
            (None, Some(b)) => {
                upsert.push((*b).clone());
                n.next();
            }
            (Some(a), Some(b)) => match key(a).cmp(&key(b)) {
                std::cmp::Ordering::Less => {
                    remove.push(key(a));
                    o.next();
                }
                std::cmp::Ordering::Greater => {
                    upsert.push((*b).clone());
                    n.next();
                }
                std::cmp::Ordering::Equal => {
                    if a != b {
                        upsert.push((*b).clone());
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
    (upsert, remove)
}

/// The list sorted by key, with `remove` taken out and `upsert` put in (an upsert wins
/// over a removal of its key; of two upserts of one key, the later). A list the delta does
/// not touch comes back as it is: an agent's applied lists are sorted by unique keys
/// already (made by this function; the agent's roll-backs sort again).
fn apply_keyed<T: Clone, K: Ord + Clone>(
    items: Vec<T>,
    upsert: &[T],
    remove: &[K],
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    if upsert.is_empty() && remove.is_empty() {
        return items;
    }
    // The applied lists are sorted by unique keys and a delta is small next to them: one
    // merge pass.
    if !items.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
        return apply_by_map(items, upsert, remove, key);
    }
    let mut upsert: Vec<&T> = upsert.iter().collect();
    // Stable: of equal keys the later stays last, and is the one kept.
    upsert.sort_by_key(|t| key(t));
    let mut remove: Vec<&K> = remove.iter().collect();
    remove.sort();
    let mut out = Vec::with_capacity(items.len() + upsert.len());
    let (mut u, mut r) = (upsert.iter().peekable(), remove.iter().peekable());
    let put = |out: &mut Vec<T>, u: &mut std::iter::Peekable<std::slice::Iter<'_, &T>>| {
        // The last upsert of the key at the front.
        let mut last = u.next();
        while let (Some(a), Some(b)) = (last, u.peek()) {
            if key(a) != key(b) {
                break;
            }
            last = u.next();
        }
        if let Some(t) = last {
            out.push((*t).clone());
        }
    };
    for item in items {
        let k = key(&item);
        while u.peek().is_some_and(|t| key(t) < k) {
            put(&mut out, &mut u);
        }
        if u.peek().is_some_and(|t| key(t) == k) {
            put(&mut out, &mut u);
            continue;
        }
        while r.peek().is_some_and(|x| ***x < k) {
            r.next();
        }
        if r.peek().is_some_and(|x| ***x == k) {
            continue;
        }
        out.push(item);
    }
    while u.peek().is_some() {
        put(&mut out, &mut u);
    }
    out
}

/// [`apply_keyed`] for a list in any order.
fn apply_by_map<T: Clone, K: Ord + Clone>(
    items: Vec<T>,
    upsert: &[T],
    remove: &[K],
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut by: BTreeMap<K, T> = items.into_iter().map(|t| (key(&t), t)).collect();
    for k in remove {
        by.remove(k);
    }
    by.extend(upsert.iter().map(|t| (key(t), t.clone())));
    by.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::{apply_by_map, apply_keyed, diff_keyed, ipcache_diff, node_ipcache_delta};
    use crate::desired::{node_ipcache, IpcacheEntry};

    /// A repeatable pseudo-random source: `next(m)` is below `m`.
    fn below(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |m| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        }
    }

    /// A node's ipcache delta made from the shared delta equals the diff of its ipcaches.
    #[test]
    fn a_nodes_ipcache_delta_follows_from_the_shared_one() {
        let mut next = below(11);
        let ip = |i: u64| std::net::IpAddr::from([10, 0, 0, i as u8]);
        for _ in 0..300 {
            let mut shared = || {
                let mut v: Vec<IpcacheEntry> = (0..next(12))
                    .map(|_| IpcacheEntry {
                        prefix: ipnet::IpNet::from(ip(next(16))),
                        identity: [crate::identity::REMOTE_NODE, 300, 301][next(3) as usize],
                    })
                    .collect();
                v.sort_by_key(|e| e.prefix);
                v.dedup_by_key(|e| e.prefix);
                v
            };
            let (old, new) = (shared(), shared());
            let own: Vec<std::net::IpAddr> = (0..next(3)).map(|_| ip(next(16))).collect();
            let want = ipcache_diff(&node_ipcache(&old, &own), &node_ipcache(&new, &own));
            let got = node_ipcache_delta(&old, &ipcache_diff(&old, &new), &own);
            assert_eq!(got, want, "{old:?} -> {new:?}, own {own:?}");
        }
    }

    /// The merge pass (sorted lists) and the map path (any order) give the same delta.
    #[test]
    fn sorted_lists_diff_as_unsorted_ones_do() {
        let mut next = below(7);
        for _ in 0..200 {
            let mut list = || {
                let n = next(30);
                let mut v: Vec<(u64, u64)> = (0..n).map(|_| (next(40), next(3))).collect();
                v.sort();
                v.dedup_by_key(|e| e.0);
                v
            };
            let (old, new) = (list(), list());
            let merged = diff_keyed(&old, &new, |e| e.0);
            // Reversed, the lists are not sorted: the map path.
            let (mut old_r, mut new_r) = (old.clone(), new.clone());
            old_r.reverse();
            new_r.reverse();
            let (mut upsert, remove) = diff_keyed(&old_r, &new_r, |e| e.0);
            upsert.reverse();
            assert_eq!(merged, (upsert, remove), "{old:?} -> {new:?}");
        }
    }

    /// Applying to a sorted list by merge gives what the map path gives, whatever the
    /// order of the delta's upserts and removals (repeated keys included).
    #[test]
    fn a_delta_applies_by_merge_as_by_map() {
        let mut next = below(5);
        for _ in 0..500 {
            let mut items: Vec<(u64, u64)> = (0..next(30)).map(|_| (next(40), next(3))).collect();
            items.sort();
            items.dedup_by_key(|e| e.0);
            let upsert: Vec<(u64, u64)> = (0..next(6)).map(|_| (next(40), 10 + next(3))).collect();
            let remove: Vec<u64> = (0..next(6)).map(|_| next(40)).collect();
            assert_eq!(
                apply_keyed(items.clone(), &upsert, &remove, |e| e.0),
                apply_by_map(items.clone(), &upsert, &remove, |e| e.0),
                "{items:?} + {upsert:?} - {remove:?}"
            );
        }
    }
}
