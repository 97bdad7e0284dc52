//! Addresses learned from DNS in the maps (see `learned` for what they mean): the
//! entries the agent asks for are kept as given and written expanded, the ipcache gets a
//! host entry per learned address on top of what the control plane and the endpoints wrote
//! (kept here as the *mirror*, which says what an address is without DNS).
//!
//! Order of writes when identities change: the policies that allow the new identities
//! first, then the ipcache, then the policies without the old identities, so no packet
//! meets an address whose identity no entry knows yet.

use std::net::IpAddr;

mod learned;

pub use learned::{Learned, Ttl};

use super::endpoints::{addr_ip, family_addr, host_prefix};
use super::*;
use learned::Learn;

/// The FQDN layer's state in the datapath.
#[derive(Default)]
pub(super) struct Fqdn {
    pub(super) learned: Learned,
    pub(super) ttl: Ttl,
    /// ep_id -> the entries the agent asked for (selector ids unexpanded).
    base: StdHashMap<u32, Vec<PolicyEntry>>,
    /// (family, prefix, masked address) -> identity, as written without DNS.
    mirror: BTreeMap<(u8, u8, c::Addr), u32>,
    /// The maps may differ from what a refresh would write (one failed half-way, or a host
    /// entry was held for a learned address): the next tick refreshes, writing every
    /// endpoint's policy again.
    stale: bool,
}

/// The identity `ip` has without DNS: its longest prefix in the mirror, else `world`.
fn shadow_of(mirror: &BTreeMap<(u8, u8, c::Addr), u32>, ip: IpAddr) -> u32 {
    let (family, addr) = family_addr(ip.to_canonical());
    (0..=host_prefix(family))
        .rev()
        .find_map(|p| mirror.get(&(family, p, mask_addr(addr, p))).copied())
        .unwrap_or(c::IDENTITY_WORLD)
}

impl Datapath {
    /// The id entries use for a `toFQDNs` selector as their peer (expanded when written).
    pub fn fqdn_selector_id(&mut self, sel: &weft_model::policy::FqdnSelector) -> u32 {
        self.fqdn.learned.selector_id(sel)
    }

    /// How long learned addresses are kept.
    pub fn set_fqdn_ttl(&mut self, ttl: Ttl) {
        self.fqdn.ttl = ttl;
    }

    /// Addresses learned from DNS that the per-name cap dropped in this run.
    pub fn fqdn_evicted(&self) -> u64 {
        self.fqdn.learned.evicted()
    }

    /// What the node learned (to persist it).
    pub fn fqdn_learned(&self) -> &Learned {
        &self.fqdn.learned
    }

    /// Takes back what a previous run learned (before the first policy is applied).
    pub fn restore_fqdn(&mut self, learned: Learned) {
        self.fqdn.learned = learned;
    }

    /// Records an answer the DNS proxy passes and writes what it changes before the caller
    /// releases the answer: a connection the answer leads to is then allowed. Returns the
    /// names whose addresses hit the per-name cap.
    pub fn learn_fqdn(
        &mut self,
        names: &[String],
        addresses: &[(IpAddr, u32)],
    ) -> Result<Vec<String>> {
        let now = unix_now();
        let ttl = self.fqdn.ttl;
        let (capped, new) = self.fqdn.learned.learn(
            Learn {
                names,
                addresses,
                now,
            },
            ttl,
        );
        // An address already learned keeps its identity: only its expiry moved.
        if new || !capped.is_empty() {
            self.refresh_fqdn()?;
        }
        Ok(capped)
    }

    /// Forgets addresses past their TTL and grace (the agent calls it every second); the
    /// maps change only when something expired, or a refresh is to be retried.
    pub fn expire_fqdn(&mut self) -> Result<()> {
        if self.fqdn.learned.expire(unix_now()) || self.fqdn.stale {
            self.refresh_fqdn()?;
        }
        Ok(())
    }

    /// Brings the maps in line with what was learned and the selectors entries use.
    pub fn refresh_fqdn(&mut self) -> Result<()> {
        let in_force: BTreeSet<u32> = self
            .fqdn
            .base
            .values()
            .flat_map(|e| Learned::selectors_in(e).collect::<Vec<_>>())
            .collect();
        let before = self.fqdn.learned.written();
        let mirror = &self.fqdn.mirror;
        let r = self
            .fqdn
            .learned
            .refresh(&in_force, |ip| shadow_of(mirror, ip));
        let res = self.write_refresh(&r);
        if res.is_err() {
            // Retried by the next refresh (every second), from what was written before.
            self.fqdn.learned.rewind(before);
            self.fqdn.stale = true;
        }
        res
    }

    /// Writes what a refresh changed (see the module doc for the order).
    fn write_refresh(&mut self, r: &learned::Refresh) -> Result<()> {
        if r.identities_changed || std::mem::take(&mut self.fqdn.stale) {
            self.write_expanded()?;
        }
        for (ip, id) in &r.upserts {
            let (family, addr) = family_addr(ip.to_canonical());
            self.write_ipcache(family, addr, host_prefix(family), *id)?;
        }
        for ip in &r.removes {
            let (family, addr) = family_addr(ip.to_canonical());
            let prefix = host_prefix(family);
            match self.fqdn.mirror.get(&(family, prefix, addr)).copied() {
                Some(id) => self.write_ipcache(family, addr, prefix, id)?,
                None => self.delete_ipcache(family, addr, prefix)?,
            }
        }
        if self.fqdn.learned.drop_retired() {
            self.write_expanded()?;
        }
        if !(r.upserts.is_empty() && r.removes.is_empty()) {
            self.recheck_connections()?;
        }
        self.settle_policy()
    }

    /// Writes every endpoint's entries expanded with the FQDN identities in force.
    fn write_expanded(&mut self) -> Result<()> {
        let all: Vec<(u32, Vec<PolicyEntry>)> = self
            .fqdn
            .base
            .iter()
            .map(|(ep, e)| (*ep, self.fqdn.learned.expand(e)))
            .collect();
        for (ep, entries) in all {
            self.write_policy(ep, &entries)?;
        }
        Ok(())
    }

    /// Sets an endpoint's policy (see [`Datapath::write_policy`]): `toFQDNs` entries (peer
    /// = a selector id) and entries of identities FQDN addresses stand in for are expanded.
    pub fn apply_policy(&mut self, ep_id: u32, entries: &[PolicyEntry]) -> Result<()> {
        let expanded = self.fqdn.learned.expand(entries);
        let selectors_before = self.fqdn.base.get(&ep_id).map(|e| selector_set(e));
        if entries.is_empty() {
            self.fqdn.base.remove(&ep_id);
        } else {
            self.fqdn.base.insert(ep_id, entries.to_vec());
        }
        self.write_policy(ep_id, &expanded)?;
        // Selectors came or went: which addresses have FQDN identities may change.
        if selectors_before.unwrap_or_default() != selector_set(entries) {
            self.refresh_fqdn()?;
        }
        Ok(())
    }

    /// Keeps the mirror of what the control plane and endpoints write to the ipcache. A
    /// learned address's host entry stays as DNS made it (the next refresh decides).
    pub(super) fn mirror_ipcache(
        &mut self,
        family: u8,
        addr: c::Addr,
        prefix: u8,
        identity: Option<u32>,
    ) -> bool {
        let key = (family, prefix, mask_addr(addr, prefix));
        match identity {
            Some(id) => self.fqdn.mirror.insert(key, id),
            None => self.fqdn.mirror.remove(&key),
        };
        let learned = prefix == host_prefix(family)
            && self
                .fqdn
                .learned
                .identity_of(addr_ip(family, &addr))
                .is_some();
        self.fqdn.stale |= learned;
        !learned
    }

    /// Rebuilds the mirror from the ipcache map (after a restart): every entry but the
    /// learned addresses'.
    pub(super) fn rebuild_mirror(&mut self) -> Result<()> {
        let mut mirror = BTreeMap::new();
        for kv in self.maps.ipcache.iter() {
            let (k, v) = kv.map_err(map_err(m::IPCACHE))?;
            if weft_model::identity::is_fqdn(v.identity) {
                continue;
            }
            let data = k.data();
            let prefix = (k.prefix_len() - c::IPCACHE_PREFIX_HEADER_BITS) as u8;
            mirror.insert((data.family, prefix, data.addr), v.identity);
        }
        self.fqdn.mirror = mirror;
        Ok(())
    }
}

fn selector_set(entries: &[PolicyEntry]) -> BTreeSet<u32> {
    Learned::selectors_in(entries).collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
