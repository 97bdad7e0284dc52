//! What the node learned from DNS, and what `toFQDNs` makes of it. Pure: no I/O.
//!
//! The DNS proxy reports each answer it passes (names and addresses with TTLs). An address
//! that a name matching some `toFQDNs` selector in force resolved to gets a node-local
//! identity (`identity::FQDN_BASE..`), one per pair of
//! - the identity the address has otherwise (its *shadow*: `world` or a CIDR identity), and
//! - the set of selectors that match one of its names.
//!
//! Policy entries are then expanded ([`Learned::expand`]): an entry for an FQDN selector
//! (given as a selector id, see [`Learned::selector_id`]) allows every identity whose set
//! holds it, and an entry for a shadow identity also covers the FQDN identities that stand
//! in for it, so nothing that allowed or denied the address before stops doing so.
//! Addresses inside the cluster (endpoints, nodes) keep their identity: as in Cilium,
//! `toFQDNs` selects outside peers only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use weft_model::identity;
use weft_model::policy::FqdnSelector;

use crate::datapath::PolicyEntry;

/// Selector ids: not identities any address has (the agent swaps them out before writing).
pub const SELECTOR_BASE: u32 = 3 << 24;

/// Whether a peer identity is a selector id.
fn is_selector_id(id: u32) -> bool {
    (SELECTOR_BASE..SELECTOR_BASE + (1 << 24)).contains(&id)
}

const DEFAULT_MIN_TTL_SECS: u32 = 60;
const DEFAULT_GRACE_SECS: u32 = 10;
const DEFAULT_MAX_IPS_PER_NAME: usize = 50;

/// How long learned addresses are kept (also `node-agent run`'s options for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Ttl {
    /// Least seconds an address learned from a DNS answer stays allowed by `toFQDNs`,
    /// whatever the answer's TTL (Cilium's `tofqdns-min-ttl`).
    #[arg(
        long = "fqdn-min-ttl-secs",
        env = "WEFT_FQDN_MIN_TTL",
        default_value_t = DEFAULT_MIN_TTL_SECS
    )]
    pub min_secs: u32,
    /// Seconds a learned address stays past its TTL, for connections in flight.
    #[arg(
        long = "fqdn-grace-secs",
        env = "WEFT_FQDN_GRACE",
        default_value_t = DEFAULT_GRACE_SECS
    )]
    pub grace_secs: u32,
    /// Addresses kept per DNS name (those expiring last).
    #[arg(long = "fqdn-max-ips-per-name", default_value_t = DEFAULT_MAX_IPS_PER_NAME)]
    pub max_ips_per_name: usize,
}

impl Default for Ttl {
    fn default() -> Self {
        Ttl {
            min_secs: DEFAULT_MIN_TTL_SECS,
            grace_secs: DEFAULT_GRACE_SECS,
            max_ips_per_name: DEFAULT_MAX_IPS_PER_NAME,
        }
    }
}

/// The identity an FQDN address is given: per shadow identity and selector set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct IdentityKey {
    shadow: u32,
    selectors: BTreeSet<FqdnSelector>,
}

/// What the node learned, persisted in the agent's state dir (names survive a restart;
/// identities too, so a restart rewrites nothing).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Learned {
    /// Name -> address -> when it expires (Unix seconds, grace included).
    names: BTreeMap<String, BTreeMap<IpAddr, u64>>,
    /// In force, by identity.
    identities: BTreeMap<u32, IdentityKey>,
    /// Given up, but possibly still in the ipcache until the caller says otherwise.
    #[serde(skip)]
    retired: BTreeMap<u32, IdentityKey>,
    /// Address -> identity, as written to the ipcache.
    assigned: BTreeMap<IpAddr, u32>,
    /// Selector ids handed out (never reused within a run).
    #[serde(skip)]
    selector_ids: BTreeMap<FqdnSelector, u32>,
    /// Addresses dropped by the per-name cap in this run (the agent reports it).
    #[serde(skip)]
    evicted: u64,
}

/// What changed in the ipcache, and whether identities came or went (then every endpoint's
/// policy must be expanded again).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    pub upserts: Vec<(IpAddr, u32)>,
    pub removes: Vec<IpAddr>,
    pub identities_changed: bool,
}

/// One name's answer: the addresses with their TTLs.
pub struct Learn<'a> {
    pub names: &'a [String],
    pub addresses: &'a [(IpAddr, u32)],
    pub now: u64,
}

impl Learned {
    /// The id entries use for `sel` (stable within a run).
    pub fn selector_id(&mut self, sel: &FqdnSelector) -> u32 {
        let next = SELECTOR_BASE + self.selector_ids.len() as u32;
        *self.selector_ids.entry(sel.clone()).or_insert(next)
    }

    fn selector_of(&self, id: u32) -> Option<&FqdnSelector> {
        self.selector_ids
            .iter()
            .find_map(|(s, i)| (*i == id).then_some(s))
    }

    /// Records an answer's addresses for each of its names. Returns the names that hit the
    /// per-name cap (their earliest-expiring addresses were dropped), and whether a name
    /// got an address it did not have (else only expiries moved: nothing to refresh).
    pub fn learn(&mut self, a: Learn<'_>, ttl: Ttl) -> (Vec<String>, bool) {
        let (mut capped, mut new) = (Vec::new(), false);
        for name in a.names {
            let ips = self.names.entry(name.clone()).or_default();
            for &(ip, t) in a.addresses {
                let expires = a.now + u64::from(t.max(ttl.min_secs)) + u64::from(ttl.grace_secs);
                let e = ips.entry(ip).or_insert_with(|| {
                    new = true;
                    0
                });
                *e = (*e).max(expires);
            }
            if ips.len() > ttl.max_ips_per_name {
                let mut by_expiry: Vec<(u64, IpAddr)> = ips.iter().map(|(i, e)| (*e, *i)).collect();
                by_expiry.sort();
                for (_, ip) in &by_expiry[..by_expiry.len() - ttl.max_ips_per_name] {
                    ips.remove(ip);
                    self.evicted += 1;
                }
                capped.push(name.clone());
            }
        }
        (capped, new)
    }

    /// Addresses the per-name cap dropped in this run.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Forgets what expired before `now`; true if anything did.
    pub fn expire(&mut self, now: u64) -> bool {
        let mut any = false;
        for ips in self.names.values_mut() {
            let before = ips.len();
            ips.retain(|_, e| *e >= now);
            any |= ips.len() != before;
        }
        self.names.retain(|_, ips| !ips.is_empty());
        any
    }

    /// Names learned, each with its addresses and when they expire (Unix seconds).
    #[cfg(test)]
    pub fn names(&self) -> impl Iterator<Item = (&String, &BTreeMap<IpAddr, u64>)> {
        self.names.iter()
    }

    /// Assigns identities to the learned addresses for the selector ids in force, given the
    /// identity each address has otherwise. Identities given up stay usable in
    /// [`expand`](Self::expand) until [`drop_retired`](Self::drop_retired), so the caller
    /// can write the policies of the new identities and the ipcache before the entries of
    /// the old ones go.
    pub fn refresh(
        &mut self,
        in_force: &BTreeSet<u32>,
        shadow_of: impl Fn(IpAddr) -> u32,
    ) -> Refresh {
        let selectors: Vec<&FqdnSelector> = in_force
            .iter()
            .filter_map(|id| self.selector_of(*id))
            .collect();
        let mut wanted: BTreeMap<IpAddr, IdentityKey> = BTreeMap::new();
        for (name, ips) in &self.names {
            let matching: Vec<&FqdnSelector> = selectors
                .iter()
                .copied()
                .filter(|s| s.matches(name))
                .collect();
            if matching.is_empty() {
                continue;
            }
            for ip in ips.keys() {
                let shadow = shadow_of(*ip);
                if shadow != identity::WORLD && !identity::is_cidr(shadow) {
                    continue;
                }
                let key = wanted.entry(*ip).or_insert_with(|| IdentityKey {
                    shadow,
                    selectors: BTreeSet::new(),
                });
                key.selectors.extend(matching.iter().map(|s| (*s).clone()));
            }
        }
        let mut by_key: BTreeMap<IdentityKey, u32> = self
            .identities
            .iter()
            .map(|(id, k)| (k.clone(), *id))
            .collect();
        let used: BTreeSet<&IdentityKey> = wanted.values().collect();
        let mut out = Refresh::default();
        by_key.retain(|k, id| {
            let keep = used.contains(k);
            if !keep {
                self.retired.insert(*id, k.clone());
                out.identities_changed = true;
            }
            keep
        });
        let mut assigned = BTreeMap::new();
        for (ip, key) in wanted {
            let id = match by_key.get(&key) {
                Some(id) => *id,
                None => {
                    let taken: BTreeSet<u32> = by_key
                        .values()
                        .chain(self.retired.keys())
                        .copied()
                        .collect();
                    let Some(id) = (identity::FQDN_BASE
                        ..identity::FQDN_BASE + identity::FQDN_RANGE)
                        .find(|i| !taken.contains(i))
                    else {
                        continue;
                    };
                    by_key.insert(key, id);
                    out.identities_changed = true;
                    id
                }
            };
            if self.assigned.get(&ip) != Some(&id) {
                out.upserts.push((ip, id));
            }
            assigned.insert(ip, id);
        }
        out.removes = self
            .assigned
            .keys()
            .filter(|ip| !assigned.contains_key(ip))
            .copied()
            .collect();
        self.assigned = assigned;
        self.identities = by_key.into_iter().map(|(k, id)| (id, k)).collect();
        out
    }

    /// What the ipcache holds of the learned addresses, as far as known: kept before a
    /// refresh, and put back with [`rewind`](Self::rewind) if writing it failed, so the
    /// next refresh writes the difference again.
    pub fn written(&self) -> BTreeMap<IpAddr, u32> {
        self.assigned.clone()
    }

    pub fn rewind(&mut self, written: BTreeMap<IpAddr, u32>) {
        self.assigned = written;
    }

    /// Forgets the identities [`refresh`](Self::refresh) gave up; true if there were any.
    pub fn drop_retired(&mut self) -> bool {
        let any = !self.retired.is_empty();
        self.retired.clear();
        any
    }

    /// The FQDN identity of an address, if it has one.
    pub fn identity_of(&self, ip: IpAddr) -> Option<u32> {
        self.assigned.get(&ip).copied()
    }

    /// The identity an FQDN identity stands in for.
    #[cfg(test)]
    pub fn shadow_of(&self, id: u32) -> Option<u32> {
        self.identities
            .get(&id)
            .or_else(|| self.retired.get(&id))
            .map(|k| k.shadow)
    }

    /// The selector ids `entries` use.
    pub fn selectors_in(entries: &[PolicyEntry]) -> impl Iterator<Item = u32> + '_ {
        entries
            .iter()
            .filter_map(|e| e.peer_identity)
            .filter(|id| is_selector_id(*id))
    }

    /// An endpoint's entries for the datapath: selector entries become entries for the FQDN
    /// identities whose set holds the selector (none: the entry allows nothing yet), and
    /// entries for a shadow identity are repeated for the FQDN identities standing in for it.
    pub fn expand(&self, entries: &[PolicyEntry]) -> Vec<PolicyEntry> {
        let all = || self.identities.iter().chain(self.retired.iter());
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let Some(peer) = e.peer_identity else {
                out.push(e.clone());
                continue;
            };
            if is_selector_id(peer) {
                let Some(sel) = self.selector_of(peer) else {
                    continue;
                };
                out.extend(
                    all()
                        .filter(|(_, k)| k.selectors.contains(sel))
                        .map(|(id, _)| PolicyEntry {
                            peer_identity: Some(*id),
                            ..e.clone()
                        }),
                );
                continue;
            }
            out.push(e.clone());
            out.extend(
                all()
                    .filter(|(_, k)| k.shadow == peer)
                    .map(|(id, _)| PolicyEntry {
                        peer_identity: Some(*id),
                        ..e.clone()
                    }),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{Action, Direction};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn pattern(p: &str) -> FqdnSelector {
        FqdnSelector {
            match_name: None,
            match_pattern: Some(p.into()),
        }
    }

    fn allow(peer: u32, port: u16) -> PolicyEntry {
        PolicyEntry {
            direction: Direction::Egress,
            peer_identity: Some(peer),
            proto: Some(6),
            ports: Some((port, port)),
            action: Action::Allow,
            rule_id: 0,
        }
    }

    const TTL: Ttl = Ttl {
        min_secs: 5,
        grace_secs: 2,
        max_ips_per_name: 2,
    };

    fn learn(l: &mut Learned, name: &str, ips: &[(&str, u32)], now: u64) -> Vec<String> {
        let addresses: Vec<(IpAddr, u32)> = ips.iter().map(|(a, t)| (ip(a), *t)).collect();
        l.learn(
            Learn {
                names: &[name.to_string()],
                addresses: &addresses,
                now,
            },
            TTL,
        )
        .0
    }

    #[test]
    fn matching_names_get_identities_that_selector_entries_allow() {
        let mut l = Learned::default();
        let allowed = l.selector_id(&pattern("*.allowed.test"));
        let a_only = l.selector_id(&FqdnSelector {
            match_name: Some("a.allowed.test".into()),
            match_pattern: None,
        });
        learn(&mut l, "a.allowed.test", &[("192.0.2.1", 60)], 0);
        learn(&mut l, "b.allowed.test", &[("192.0.2.2", 60)], 0);
        learn(&mut l, "b.denied.test", &[("192.0.2.3", 60)], 0);
        // Only the first selector in force.
        let r = l.refresh(&BTreeSet::from([allowed]), |_| identity::WORLD);
        assert!(r.identities_changed);
        let id = l.identity_of(ip("192.0.2.1")).expect("an identity");
        assert!(identity::is_fqdn(id));
        assert_eq!(
            r.upserts,
            vec![(ip("192.0.2.1"), id), (ip("192.0.2.2"), id)]
        );
        assert_eq!(l.identity_of(ip("192.0.2.3")), None, "no selector matches");
        let entries = [allow(allowed, 443), allow(identity::WORLD, 53)];
        let got = l.expand(&entries);
        assert_eq!(
            got,
            vec![allow(id, 443), allow(identity::WORLD, 53), allow(id, 53)]
        );
        // Both in force: a.allowed.test matches two selectors, so its address is told
        // apart from b's.
        let r = l.refresh(&BTreeSet::from([allowed, a_only]), |_| identity::WORLD);
        let a = l.identity_of(ip("192.0.2.1")).expect("an identity");
        assert_ne!(a, id);
        assert_eq!(r.upserts, vec![(ip("192.0.2.1"), a)]);
        assert_eq!(
            l.identity_of(ip("192.0.2.2")),
            Some(id),
            "b's set did not change"
        );
        let got = l.expand(&[allow(a_only, 80)]);
        assert_eq!(got, vec![allow(a, 80)]);
    }

    #[test]
    fn retired_identities_stay_expanded_until_dropped() {
        let mut l = Learned::default();
        let s = l.selector_id(&pattern("*.allowed.test"));
        learn(&mut l, "a.allowed.test", &[("192.0.2.1", 60)], 0);
        l.refresh(&BTreeSet::from([s]), |_| identity::WORLD);
        let id = l.identity_of(ip("192.0.2.1")).expect("an identity");
        // The selector leaves: the address goes from the ipcache, its identity's entries
        // only once the caller has done that.
        let r = l.refresh(&BTreeSet::new(), |_| identity::WORLD);
        assert_eq!(r.removes, vec![ip("192.0.2.1")]);
        assert_eq!(l.expand(&[allow(identity::WORLD, 1)]).len(), 2);
        assert!(l.drop_retired());
        assert_eq!(
            l.expand(&[allow(identity::WORLD, 1)]),
            vec![allow(identity::WORLD, 1)]
        );
        assert_eq!(l.shadow_of(id), None);
    }

    #[test]
    fn addresses_expire_after_ttl_floor_and_grace_and_names_are_capped() {
        let mut l = Learned::default();
        let s = l.selector_id(&pattern("*.allowed.test"));
        // TTL 1 s is raised to the 5 s floor, plus 2 s grace.
        learn(&mut l, "a.allowed.test", &[("192.0.2.1", 1)], 100);
        l.expire(107);
        l.refresh(&BTreeSet::from([s]), |_| identity::WORLD);
        assert!(l.identity_of(ip("192.0.2.1")).is_some());
        l.expire(108);
        let r = l.refresh(&BTreeSet::from([s]), |_| identity::WORLD);
        assert_eq!(r.removes, vec![ip("192.0.2.1")]);
        // Three addresses for one name, two allowed: the one expiring first goes.
        let capped = learn(
            &mut l,
            "b.allowed.test",
            &[("192.0.2.5", 30), ("192.0.2.6", 10), ("192.0.2.7", 20)],
            200,
        );
        assert_eq!(capped, vec!["b.allowed.test".to_string()]);
        assert_eq!(l.evicted(), 1);
        let kept: Vec<IpAddr> = l.names().flat_map(|(_, ips)| ips.keys().copied()).collect();
        assert_eq!(kept, vec![ip("192.0.2.5"), ip("192.0.2.7")]);
    }

    #[test]
    fn in_cluster_addresses_keep_their_identity_and_cidr_shadows_are_kept_apart() {
        let mut l = Learned::default();
        let s = l.selector_id(&pattern("*"));
        learn(&mut l, "pod.test", &[("10.0.0.5", 60)], 0);
        learn(&mut l, "cidr.test", &[("203.0.113.9", 60)], 0);
        learn(&mut l, "world.test", &[("192.0.2.9", 60)], 0);
        let cidr = identity::CIDR_BASE + 7;
        l.refresh(&BTreeSet::from([s]), |a| match a.to_string().as_str() {
            "10.0.0.5" => 300,
            "203.0.113.9" => cidr,
            _ => identity::WORLD,
        });
        assert_eq!(l.identity_of(ip("10.0.0.5")), None);
        let c = l.identity_of(ip("203.0.113.9")).expect("an identity");
        let w = l.identity_of(ip("192.0.2.9")).expect("an identity");
        assert_ne!(c, w);
        assert_eq!(
            (l.shadow_of(c), l.shadow_of(w)),
            (Some(cidr), Some(identity::WORLD))
        );
        // A deny on the CIDR still applies to the address.
        let deny = PolicyEntry {
            action: Action::Deny,
            ..allow(cidr, 22)
        };
        assert_eq!(
            l.expand(std::slice::from_ref(&deny)),
            vec![
                deny.clone(),
                PolicyEntry {
                    peer_identity: Some(c),
                    ..deny
                }
            ]
        );
    }
}
