//! From the wire to the datapath.
//!
//! [`SyncMessage`] decodes a `SyncResponse` into the model's desired-state types at the edge:
//! anything the controller sends that does not parse is refused as a whole (fail closed: the
//! datapath keeps the last applied state). [`Programmed`] remembers what is in the datapath
//! (the last applied desired state, its revision and the string -> `u32` id allocations) and
//! turns a snapshot or delta into the minimal datapath calls: a snapshot is diffed against
//! what is programmed, so whatever is no longer desired is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_model::desired::{
    self, Action, Delta, DesiredEndpoint, DesiredService, IpcacheEntry, NodeDesiredState,
    PolicyRule,
};
use weft_model::policy::eval::Direction;
use weft_model::policy::FqdnSelector;
use weft_model::service::{Algorithm, Frontend, L4Protocol};

use crate::datapath::{self as dp, Datapath, DatapathError, PolicyEntry};

// Decoding a `SyncResponse` into the model's types lives with the contract, in
// `weft_proto::convert` (used by the control plane to encode, too).
pub use weft_proto::convert::{SyncMessage, Update, WireError};

pub use crate::control::ItemError;
pub use crate::names::Names;

// ---------------------------------------------------------------------------------------
// Programming the datapath

/// The datapath calls the agent makes; implemented by [`Datapath`] (and by a recording fake
/// in the unit tests).
pub trait DatapathOps {
    fn apply_endpoint(&mut self, ep: &dp::Endpoint) -> Result<(), DatapathError>;
    fn remove_endpoint(&mut self, ep_id: u32, ip: Ipv4Addr) -> Result<(), DatapathError>;
    /// IPv4 and IPv6: a peer of either family must get its real identity, never `world`.
    fn apply_ipcache(&mut self, ip: IpAddr, prefix: u8, identity: u32)
        -> Result<(), DatapathError>;
    fn remove_ipcache(&mut self, ip: IpAddr, prefix: u8) -> Result<(), DatapathError>;
    fn apply_policy(&mut self, ep_id: u32, entries: &[PolicyEntry]) -> Result<(), DatapathError>;
    fn apply_service(&mut self, svc: &dp::Service) -> Result<(), DatapathError>;
    fn remove_service(&mut self, svc_id: u32) -> Result<(), DatapathError>;
    /// Re-checks established connections if peers' identities changed (see
    /// [`Datapath::recheck_connections`]).
    fn recheck_connections(&mut self) -> Result<(), DatapathError> {
        Ok(())
    }
    /// Deletes retired policy entries once no program reads them (see
    /// [`Datapath::settle_policy`]).
    fn settle_policy(&mut self) -> Result<(), DatapathError> {
        Ok(())
    }
    /// Stops the L7 proxy listeners of rule sets not in `in_use`.
    fn retain_l7_proxies(&mut self, _in_use: &BTreeSet<dp::L7Rules<'_>>) {}
    /// The L7 proxy port for an L7 allow entry (see [`Datapath::l7_proxy_port`]).
    fn l7_proxy_port(&mut self, _rules: dp::L7Rules<'_>) -> Result<u16, DatapathError> {
        Err(DatapathError::L7Proxy("no L7 proxy".into()))
    }
    /// The peer id of a `toFQDNs` entry's selector (see [`Datapath::fqdn_selector_id`]);
    /// `None`: FQDN entries cannot be programmed (they allow nothing).
    fn fqdn_selector_id(&mut self, _sel: &FqdnSelector) -> Option<u32> {
        None
    }
    /// Brings the addresses learned from DNS in line with the selectors in force.
    fn refresh_fqdn(&mut self) -> Result<(), DatapathError> {
        Ok(())
    }
}

impl DatapathOps for Datapath {
    fn apply_endpoint(&mut self, ep: &dp::Endpoint) -> Result<(), DatapathError> {
        Datapath::apply_endpoint(self, ep)
    }
    fn remove_endpoint(&mut self, ep_id: u32, ip: Ipv4Addr) -> Result<(), DatapathError> {
        Datapath::remove_endpoint(self, ep_id, ip)
    }
    fn apply_ipcache(
        &mut self,
        ip: IpAddr,
        prefix: u8,
        identity: u32,
    ) -> Result<(), DatapathError> {
        Datapath::apply_ipcache_ip(self, ip, prefix, identity)
    }
    fn remove_ipcache(&mut self, ip: IpAddr, prefix: u8) -> Result<(), DatapathError> {
        Datapath::remove_ipcache_ip(self, ip, prefix)
    }
    fn l7_proxy_port(&mut self, rules: dp::L7Rules<'_>) -> Result<u16, DatapathError> {
        Datapath::l7_proxy_port(self, rules)
    }
    fn retain_l7_proxies(&mut self, in_use: &BTreeSet<dp::L7Rules<'_>>) {
        Datapath::retain_l7_proxies(self, in_use)
    }
    fn fqdn_selector_id(&mut self, sel: &FqdnSelector) -> Option<u32> {
        Some(Datapath::fqdn_selector_id(self, sel))
    }
    fn refresh_fqdn(&mut self) -> Result<(), DatapathError> {
        Datapath::refresh_fqdn(self)
    }
    fn apply_policy(&mut self, ep_id: u32, entries: &[PolicyEntry]) -> Result<(), DatapathError> {
        Datapath::apply_policy(self, ep_id, entries)
    }
    fn apply_service(&mut self, svc: &dp::Service) -> Result<(), DatapathError> {
        Datapath::apply_service(self, svc)
    }
    fn remove_service(&mut self, svc_id: u32) -> Result<(), DatapathError> {
        Datapath::remove_service(self, svc_id)
    }
    fn recheck_connections(&mut self) -> Result<(), DatapathError> {
        Datapath::recheck_connections(self)
    }
    fn settle_policy(&mut self) -> Result<(), DatapathError> {
        Datapath::settle_policy(self)
    }
}

/// Stable string -> `u32` ids (the datapath's numbering), never reused within a state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    next: u32,
    by_key: BTreeMap<String, u32>,
}

impl Ids {
    /// The id of `key`, allocating one (from 1) when it has none.
    pub fn get_or_alloc(&mut self, key: &str) -> Option<u32> {
        if let Some(id) = self.by_key.get(key) {
            return Some(*id);
        }
        let id = self.next.max(1);
        self.next = id.checked_add(1)?;
        self.by_key.insert(key.to_string(), id);
        Some(id)
    }

    pub fn get(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    pub fn release(&mut self, key: &str) {
        self.by_key.remove(key);
    }

    fn release_prefix(&mut self, prefix: &str) {
        self.by_key.retain(|k, _| !k.starts_with(prefix));
    }
}

/// Why the agent's state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

/// What is programmed in the datapath, persisted next to the node credential so that a
/// restarted agent resumes from its revision with the same ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Programmed {
    /// Last revision applied (0: none).
    pub revision: u64,
    /// The desired state as programmed (items that failed are left out, so the next
    /// snapshot retries them).
    pub applied: NodeDesiredState,
    endpoint_ids: Ids,
    service_ids: Ids,
    backend_ids: Ids,
}

/// Maglev table size for services using Maglev.
const MAGLEV_M: u32 = weft_model::maglev::DEFAULT_M;

/// The endpoint's IPv6 address, if it has one (the datapath keys policy on it too).
fn first_v6(ips: &[IpAddr]) -> Option<std::net::Ipv6Addr> {
    ips.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    })
}

fn v4s(ips: &[IpAddr]) -> Vec<Ipv4Addr> {
    ips.iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// Of `state`, the items `d` upserts or removes (the rest left empty).
fn touched_by(state: &NodeDesiredState, d: &Delta) -> NodeDesiredState {
    /// The items whose key is upserted or removed.
    fn pick<T: Clone, K: Ord + Clone>(
        items: &[T],
        upsert: &[T],
        remove: &[K],
        key: impl Fn(&T) -> K,
    ) -> Vec<T> {
        let keys: BTreeSet<K> = upsert
            .iter()
            .map(&key)
            .chain(remove.iter().cloned())
            .collect();
        if keys.is_empty() {
            return Vec::new();
        }
        items
            .iter()
            .filter(|t| keys.contains(&key(t)))
            .cloned()
            .collect()
    }
    NodeDesiredState {
        endpoints: pick(
            &state.endpoints,
            &d.endpoints_upsert,
            &d.endpoints_remove,
            |e| e.id.clone(),
        ),
        // Upserted entries are not compared with what they replace.
        ipcache: pick(&state.ipcache, &[], &d.ipcache_remove, |e| e.prefix),
        policy: d
            .policy_remove
            .iter()
            .filter_map(|id| Some((id.clone(), state.policy.get(id)?.clone())))
            .collect(),
        services: pick(
            &state.services,
            &d.services_upsert,
            &d.services_remove,
            |s| s.id.clone(),
        ),
        ..NodeDesiredState::default()
    }
}

fn frontend_key(svc: &str, f: &Frontend) -> String {
    format!("{svc}|{}:{}/{}", f.vip, f.port, f.protocol.as_str())
}

fn proto_num(p: L4Protocol) -> u8 {
    match p {
        L4Protocol::Tcp => desired::PROTO_TCP,
        L4Protocol::Udp => desired::PROTO_UDP,
    }
}

fn err(item: String, e: impl std::fmt::Display) -> ItemError {
    ItemError {
        item,
        message: e.to_string(),
    }
}

impl Programmed {
    pub fn endpoint_id(&self, id: &str) -> Option<u32> {
        self.endpoint_ids.get(id)
    }

    /// The datapath numbering of what is applied.
    pub fn names(&self) -> Names {
        Names {
            endpoints: self.applied.endpoints.clone(),
            endpoint_ids: self
                .endpoint_ids
                .by_key
                .iter()
                .map(|(k, v)| (*v, k.clone()))
                .collect(),
            // Keys are `<service id>|<frontend>`.
            service_ids: self
                .service_ids
                .by_key
                .iter()
                .map(|(k, v)| (*v, k.split('|').next().unwrap_or(k).to_string()))
                .collect(),
        }
    }

    /// Reads the state file; `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        let p = || path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Json { path: p(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path: p(), source }),
        }
    }

    /// Writes the state file atomically (temporary file, then rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let p = || path.display().to_string();
        let bytes =
            serde_json::to_vec(self).map_err(|source| StateError::Json { path: p(), source })?;
        crate::files::replace_private(path, &bytes)
            .map_err(|source| StateError::Io { path: p(), source })
    }

    /// Applies one sync message: the minimal datapath calls that take the datapath from
    /// what is programmed to what the message asks. Returns what could not be programmed.
    pub fn apply(&mut self, dp: &mut impl DatapathOps, msg: SyncMessage) -> Vec<ItemError> {
        let delta = match msg.update {
            Update::Snapshot(new) => desired::diff(&self.applied, &new),
            Update::Delta(d) => d,
        };
        let errors = self.apply_delta(dp, &delta);
        self.revision = msg.revision;
        errors
    }

    fn apply_delta(&mut self, dp: &mut impl DatapathOps, d: &Delta) -> Vec<ItemError> {
        // The state moves into `next`, not copied: it is as large as the cluster (ipcache and
        // nodes), a delta usually small. Kept of it: what the delta touches, for the steps
        // that compare with it or put it back when they fail.
        let old = touched_by(&self.applied, d);
        let mut next = desired::apply(std::mem::take(&mut self.applied), d);
        let mut errors = Vec::new();
        let old_ep: BTreeMap<&str, &DesiredEndpoint> =
            old.endpoints.iter().map(|e| (e.id.as_str(), e)).collect();
        // Endpoints whose policy must be written again (an address of theirs was removed,
        // which clears the endpoint's policy entries).
        let mut policy_dirty: BTreeSet<String> = BTreeSet::new();
        let mut failed_ep: BTreeSet<String> = BTreeSet::new();

        // 1. ipcache upserts.
        for e in &d.ipcache_upsert {
            if let Err(e2) = apply_ipcache(dp, e) {
                errors.push(err(format!("ipcache/{}", e.prefix), e2));
                next.ipcache.retain(|x| x.prefix != e.prefix);
            }
        }
        // 2. endpoint upserts.
        for e in &d.endpoints_upsert {
            let item = format!("endpoint/{}", e.id);
            let Some(id) = self.endpoint_ids.get_or_alloc(&e.id) else {
                errors.push(err(item, "endpoint ids exhausted"));
                next.endpoints.retain(|x| x.id != e.id);
                continue;
            };
            let new_ips = v4s(&e.ips);
            let mut res = Ok(());
            if let Some(o) = old_ep.get(e.id.as_str()) {
                for ip in v4s(&o.ips).into_iter().filter(|ip| !new_ips.contains(ip)) {
                    res = res.and(dp.remove_endpoint(id, ip));
                    policy_dirty.insert(e.id.clone());
                }
            }
            for ip in &new_ips {
                res = res.and(dp.apply_endpoint(&dp::Endpoint {
                    id,
                    ip: *ip,
                    ip6: first_v6(&e.ips),
                    identity: e.identity,
                    ifindex: 0,
                    enforce_ingress: e.enforce_ingress,
                    enforce_egress: e.enforce_egress,
                }));
            }
            if let Err(e2) = res {
                errors.push(err(item, e2));
                next.endpoints.retain(|x| x.id != e.id);
                failed_ep.insert(e.id.clone());
            }
        }
        // 3. policy upserts (and the policies of endpoints that lost an address).
        let policy_ids: BTreeSet<&String> = d.policy_upsert.keys().chain(&policy_dirty).collect();
        for ep in policy_ids {
            let Some(rules) = next.policy.get(ep).cloned() else {
                continue;
            };
            let item = format!("policy/{ep}");
            let Some(id) = self.endpoint_ids.get_or_alloc(ep) else {
                errors.push(err(item, "endpoint ids exhausted"));
                next.policy.remove(ep);
                continue;
            };
            match program_policy(dp, id, &item, &rules) {
                Ok(l7_error) => errors.extend(l7_error),
                Err(e2) => {
                    errors.push(e2);
                    next.policy.remove(ep);
                }
            }
        }
        // 4. service upserts.
        for s in &d.services_upsert {
            let old_s = old.services.iter().find(|o| o.id == s.id);
            if let Err(e2) = self.apply_service(dp, s, old_s) {
                errors.push(e2);
                next.services.retain(|x| x.id != s.id);
            }
        }
        // 5. policy removals (before their endpoints: an unknown id is skipped).
        for ep in &d.policy_remove {
            let Some(id) = self.endpoint_ids.get(ep) else {
                continue;
            };
            if let Err(e2) = dp.apply_policy(id, &[]) {
                errors.push(err(format!("policy/{ep}"), e2));
                if let Some(r) = old.policy.get(ep) {
                    next.policy.insert(ep.clone(), r.clone());
                }
            }
        }
        // 6. endpoint removals.
        let mut removed_ips = Vec::new();
        for ep in &d.endpoints_remove {
            let Some(o) = old_ep.get(ep.as_str()) else {
                continue;
            };
            let Some(id) = self.endpoint_ids.get(ep) else {
                continue;
            };
            let mut res = Ok(());
            for ip in v4s(&o.ips) {
                res = res.and(dp.remove_endpoint(id, ip));
            }
            // `remove_endpoint` drops the /32 and /128 entries of all its addresses.
            removed_ips.extend(o.ips.iter().copied());
            match res {
                Ok(()) => {
                    if !next.policy.contains_key(ep) {
                        self.endpoint_ids.release(ep);
                    }
                }
                Err(e2) => {
                    errors.push(err(format!("endpoint/{ep}"), e2));
                    next.endpoints.push((*o).clone());
                    next.endpoints.sort_by(|a, b| a.id.cmp(&b.id));
                }
            }
        }
        // An ipcache entry for a removed endpoint address that is still desired (the
        // address moved to a remote endpoint) is written again. (Looked for only when an
        // address was removed: the ipcache is as large as the cluster.)
        let scanned: &[IpcacheEntry] = if removed_ips.is_empty() {
            &[]
        } else {
            &next.ipcache
        };
        for e in scanned {
            let host = e.prefix.prefix_len() == e.prefix.max_prefix_len();
            if host && removed_ips.contains(&e.prefix.addr()) {
                if let Err(e2) = apply_ipcache(dp, e) {
                    errors.push(err(format!("ipcache/{}", e.prefix), e2));
                }
            }
        }
        // 7. ipcache removals, except the /32 of a local endpoint (its endpoint owns it).
        let local: BTreeSet<IpAddr> = next
            .endpoints
            .iter()
            .flat_map(|e| e.ips.iter().copied())
            .collect();
        for p in &d.ipcache_remove {
            if p.prefix_len() == p.max_prefix_len() && local.contains(&p.addr()) {
                continue;
            }
            if let Err(e2) = dp.remove_ipcache(p.network(), p.prefix_len()) {
                errors.push(err(format!("ipcache/{p}"), e2));
                if let Some(o) = old.ipcache.iter().find(|o| o.prefix == *p) {
                    next.ipcache.push(*o);
                    next.ipcache.sort_by_key(|a| a.prefix);
                }
            }
        }
        // 8. service removals.
        for s in &d.services_remove {
            let Some(o) = old.services.iter().find(|o| &o.id == s) else {
                continue;
            };
            let mut res = Ok(());
            for f in &o.frontends {
                let key = frontend_key(s, f);
                if let Some(id) = self.service_ids.get(&key) {
                    match dp.remove_service(id) {
                        Ok(()) => {
                            self.service_ids.release(&key);
                            self.backend_ids.release_prefix(&format!("{key}|"));
                        }
                        Err(e2) => res = Err(e2),
                    }
                }
            }
            if let Err(e2) = res {
                errors.push(err(format!("service/{s}"), e2));
                next.services.push(o.clone());
                next.services.sort_by(|a, b| a.id.cmp(&b.id));
            }
        }
        // Endpoints whose upsert failed keep no policy claim either: retried together.
        for ep in &failed_ep {
            if d.policy_upsert.contains_key(ep) {
                next.policy.remove(ep);
            }
        }
        // 9. Addresses learned from DNS: the selectors in force may have changed, and so may
        // what an address is without DNS.
        if let Err(e2) = dp.refresh_fqdn() {
            errors.push(err("fqdn/refresh".to_string(), e2));
        }
        // 10. Peers whose identity changed: established connections are judged again.
        if let Err(e2) = dp.recheck_connections() {
            errors.push(err("endpoints/recheck".to_string(), e2));
        }
        // 11. One grace period for the batch, then the old policy generations go.
        if let Err(e2) = dp.settle_policy() {
            errors.push(err("policy/settle".to_string(), e2));
        }
        // 12. L7 proxy listeners no programmed rule points at any more stop.
        let in_use: BTreeSet<dp::L7Rules<'_>> = next
            .policy
            .values()
            .flatten()
            .filter(|r| r.l7 && r.action == Action::Allow)
            .map(l7_rules)
            .collect();
        dp.retain_l7_proxies(&in_use);
        self.applied = next;
        errors
    }

    /// Writes the applied policy again (after a restart: the L7 proxy's listeners and the
    /// FQDN expansion are this run's; what the maps already hold is not rewritten).
    /// Returns what could not be programmed.
    pub fn reprogram_policy(&mut self, dp: &mut impl DatapathOps) -> Vec<ItemError> {
        let mut errors = Vec::new();
        for (ep, rules) in &self.applied.policy {
            let Some(id) = self.endpoint_ids.get(ep) else {
                continue;
            };
            match program_policy(dp, id, &format!("policy/{ep}"), rules) {
                Ok(l7_error) => errors.extend(l7_error),
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = dp.refresh_fqdn() {
            errors.push(err("fqdn/refresh".to_string(), e));
        }
        if let Err(e) = dp.settle_policy() {
            errors.push(err("policy/settle".to_string(), e));
        }
        errors
    }

    fn apply_service(
        &mut self,
        dp: &mut impl DatapathOps,
        s: &DesiredService,
        old: Option<&DesiredService>,
    ) -> Result<(), ItemError> {
        let item = || format!("service/{}", s.id);
        let mut first_err: Option<String> = None;
        for f in &s.frontends {
            let vip = f.vip;
            let key = frontend_key(&s.id, f);
            let Some(id) = self.service_ids.get_or_alloc(&key) else {
                first_err.get_or_insert_with(|| "service ids exhausted".to_string());
                continue;
            };
            let proto = proto_num(f.protocol);
            let mut backends = Vec::new();
            let mut keep = BTreeSet::new();
            for b in &s.backends {
                let ip = b.address;
                if ip.is_ipv4() != vip.is_ipv4() {
                    // The control plane refuses mixed families; skip rather than mistranslate.
                    first_err.get_or_insert_with(|| {
                        format!("backend {ip} is not of the frontend {vip}'s address family")
                    });
                    continue;
                }
                let bkey = format!("{key}|{ip}:{}", b.port);
                let Some(bid) = self.backend_ids.get_or_alloc(&bkey) else {
                    first_err.get_or_insert_with(|| "backend ids exhausted".to_string());
                    continue;
                };
                keep.insert(bkey);
                backends.push(dp::Backend {
                    id: bid,
                    ip,
                    port: b.port,
                    weight: b.weight,
                    state: if b.active {
                        dp::BackendState::Active
                    } else {
                        dp::BackendState::Terminating
                    },
                });
            }
            let svc = dp::Service {
                id,
                vip,
                port: f.port,
                proto,
                algorithm: match s.algorithm {
                    Algorithm::Random => dp::LbAlgorithm::Random,
                    Algorithm::Maglev => dp::LbAlgorithm::Maglev { m: MAGLEV_M },
                },
                affinity: s
                    .affinity_timeout
                    .map(|t| Duration::from_secs(u64::from(t))),
                backends,
            };
            match dp.apply_service(&svc) {
                Ok(()) => {
                    let prefix = format!("{key}|");
                    self.backend_ids
                        .by_key
                        .retain(|k, _| !k.starts_with(&prefix) || keep.contains(k));
                }
                Err(e) => {
                    first_err.get_or_insert_with(|| e.to_string());
                }
            }
        }
        // Frontends that are gone.
        for f in old.map(|o| o.frontends.as_slice()).unwrap_or_default() {
            if s.frontends.contains(f) {
                continue;
            }
            let key = frontend_key(&s.id, f);
            if let Some(id) = self.service_ids.get(&key) {
                match dp.remove_service(id) {
                    Ok(()) => {
                        self.service_ids.release(&key);
                        self.backend_ids.release_prefix(&format!("{key}|"));
                    }
                    Err(e) => {
                        first_err.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(m) => Err(err(item(), m)),
        }
    }
}

fn apply_ipcache(dp: &mut impl DatapathOps, e: &IpcacheEntry) -> Result<(), DatapathError> {
    dp.apply_ipcache(e.prefix.network(), e.prefix.prefix_len(), e.identity)
}

fn l7_direction(d: Direction) -> dp::Direction {
    match d {
        Direction::Ingress => dp::Direction::Ingress,
        Direction::Egress => dp::Direction::Egress,
    }
}

/// Writes one endpoint's rules. `Err`: nothing changed; `Ok(Some)`: written, but L7 or
/// FQDN rules that could not be had were left out (they allow nothing: fail closed).
fn program_policy(
    dp: &mut impl DatapathOps,
    id: u32,
    item: &str,
    rules: &[PolicyRule],
) -> Result<Option<ItemError>, ItemError> {
    let (entries, l7_errors) = entries(dp, rules);
    dp.apply_policy(id, &entries)
        .map_err(|e| err(item.to_string(), e))?;
    Ok(l7_errors.first().map(|first| {
        err(
            item.to_string(),
            format!("{} L7 rule(s) not programmed: {first}", l7_errors.len()),
        )
    }))
}

/// The listener an L7 allow rule redirects to: its DNS rules', else its HTTP rules'.
fn l7_rules(r: &PolicyRule) -> dp::L7Rules<'_> {
    if r.dns.is_empty() {
        dp::L7Rules::Http(l7_direction(r.direction), &r.http)
    } else {
        dp::L7Rules::Dns(&r.dns)
    }
}

/// The datapath entries of an endpoint's rules: L7 allows redirect to the proxy listener of
/// their HTTP or DNS rules, `toFQDNs` entries name their selector's id. An L7 or FQDN rule
/// that cannot be programmed is left out (it allows nothing), with the reason.
fn entries(dp: &mut impl DatapathOps, rules: &[PolicyRule]) -> (Vec<PolicyEntry>, Vec<String>) {
    let mut out = Vec::with_capacity(rules.len());
    let mut l7_errors = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let direction = l7_direction(r.direction);
        let peer_identity = match &r.fqdn {
            None => r.peer_identity,
            Some(sel) => match dp.fqdn_selector_id(sel) {
                Some(id) => Some(id),
                None => {
                    l7_errors.push(format!("toFQDNs {sel}: no DNS proxy on this node"));
                    continue;
                }
            },
        };
        let action = match r.action {
            Action::Allow if r.l7 => match dp.l7_proxy_port(l7_rules(r)) {
                Ok(proxy_port) => dp::Action::Redirect { proxy_port },
                Err(e) => {
                    l7_errors.push(e.to_string());
                    continue;
                }
            },
            Action::Allow => dp::Action::Allow,
            Action::Deny => dp::Action::Deny,
            Action::Unsupported => dp::Action::Unsupported,
        };
        out.push(PolicyEntry {
            direction,
            peer_identity,
            proto: r.proto,
            ports: r.ports,
            action,
            rule_id: u32::try_from(i).unwrap_or(u32::MAX),
        });
    }
    (out, l7_errors)
}

#[cfg(test)]
mod tests;
