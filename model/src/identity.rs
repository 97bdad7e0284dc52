//! Numeric security identities, as the datapath sees them.
//!
//! - `0`: unknown; in policy map keys it means "any peer".
//! - `1..=8`: reserved identities for peers without labels (the numbers match the datapath's
//!   `IDENTITY_*` constants and Cilium's).
//! - [`FIRST_ALLOCATED`]`..`[`CIDR_BASE`]: label-set identities, allocated per tenant by the
//!   control plane (in Postgres): same labels, same number, across the tenant's clusters.
//! - [`CIDR_BASE`]`..`: CIDR identities, derived from the CIDR itself (see [`cidr_identities`]).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::policy::Entity;

/// Unknown identity; the wildcard in policy map keys.
pub const UNKNOWN: u32 = 0;
pub const HOST: u32 = 1;
pub const WORLD: u32 = 2;
pub const UNMANAGED: u32 = 3;
pub const HEALTH: u32 = 4;
pub const INIT: u32 = 5;
pub const REMOTE_NODE: u32 = 6;
pub const KUBE_APISERVER: u32 = 7;
pub const INGRESS: u32 = 8;

/// Reserved identities of peers inside the cluster (everything reserved but `world`).
pub const RESERVED_IN_CLUSTER: [u32; 7] = [
    HOST,
    UNMANAGED,
    HEALTH,
    INIT,
    REMOTE_NODE,
    KUBE_APISERVER,
    INGRESS,
];

/// First identity the control plane may allocate to a label set.
pub const FIRST_ALLOCATED: u32 = 256;
/// First CIDR identity: the "local" scope, as in Cilium (bit 24 set).
pub const CIDR_BASE: u32 = 1 << 24;
/// Number of CIDR identities.
pub const CIDR_RANGE: u32 = 1 << 24;

/// The peer identity of a `toFQDNs` entry (its [`PolicyRule::fqdn`] says which names): no
/// address has it, so an agent that knows nothing of FQDN entries allows nothing by them.
///
/// [`PolicyRule::fqdn`]: crate::desired::PolicyRule::fqdn
pub const FQDN_PEER: u32 = u32::MAX;
/// First identity a node agent gives addresses learned from DNS answers (one per set of
/// `toFQDNs` selectors and the identity the address has otherwise): node-local, like CIDR
/// identities, and never sent on the wire.
pub const FQDN_BASE: u32 = 2 << 24;
/// Number of FQDN identities.
pub const FQDN_RANGE: u32 = 1 << 24;

/// True for identities of addresses learned from DNS.
pub fn is_fqdn(id: u32) -> bool {
    id >= FQDN_BASE && id - FQDN_BASE < FQDN_RANGE
}

/// The reserved identity of an entity that has one; `None` for the entities that are sets
/// (`cluster`, `all`, `world-ipv4`, `world-ipv6`).
pub fn reserved(entity: Entity) -> Option<u32> {
    match entity {
        Entity::Host => Some(HOST),
        Entity::RemoteNode => Some(REMOTE_NODE),
        Entity::World => Some(WORLD),
        Entity::Health => Some(HEALTH),
        Entity::Unmanaged => Some(UNMANAGED),
        Entity::Init => Some(INIT),
        Entity::KubeApiserver => Some(KUBE_APISERVER),
        Entity::Ingress => Some(INGRESS),
        Entity::WorldIpv4 | Entity::WorldIpv6 | Entity::Cluster | Entity::All => None,
    }
}

/// True for identities the control plane allocates to label sets.
pub fn is_allocated(id: u32) -> bool {
    (FIRST_ALLOCATED..CIDR_BASE).contains(&id)
}

/// True for CIDR identities.
pub fn is_cidr(id: u32) -> bool {
    id >= CIDR_BASE && id - CIDR_BASE < CIDR_RANGE
}

/// Where a CIDR's identity lives when nothing collides with it: a hash of the truncated
/// prefix (FNV-1a over family, length and address), so it depends on nothing but the CIDR.
pub fn cidr_home(net: &IpNet) -> u32 {
    let net = net.trunc();
    let (family, addr): (u8, Vec<u8>) = match net {
        IpNet::V4(n) => (4, n.addr().octets().to_vec()),
        IpNet::V6(n) => (6, n.addr().octets().to_vec()),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in [family, net.prefix_len()].into_iter().chain(addr) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Fold the high bits in so the low 24 bits see the whole hash.
    let folded = (h ^ (h >> 32)) as u32;
    folded % CIDR_RANGE
}

/// Assigns an identity to every CIDR of `cidrs` (truncated, deduplicated).
///
/// Each CIDR gets `CIDR_BASE + cidr_home(cidr)` unless another CIDR of the set has the same
/// home; then CIDRs are placed in (home, CIDR) order and a later one takes the next free slot.
///
/// Trade-off: the identity depends only on the CIDR, so adding or removing other CIDRs
/// leaves it unchanged and the datapath sees no churn, with no state to store. The price is
/// that a collision (probability about n / 2^24 per added CIDR, n the tenant's CIDR count)
/// may move one CIDR to another identity in that compile; the output stays consistent (the
/// ipcache and rules move together), it is only a larger delta. Allocating CIDR identities
/// in Postgres like label identities would remove even that, at the cost of state and GC.
pub fn cidr_identities(cidrs: impl IntoIterator<Item = IpNet>) -> BTreeMap<IpNet, u32> {
    let set: BTreeSet<IpNet> = cidrs.into_iter().map(|n| n.trunc()).collect();
    let mut by_home: Vec<(u32, IpNet)> = set.into_iter().map(|n| (cidr_home(&n), n)).collect();
    by_home.sort();
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (home, net) in by_home {
        let mut slot = home;
        // Terminates: the set is far smaller than the range in any real tenant, and the
        // number of probes is bounded by the range anyway.
        for _ in 0..CIDR_RANGE {
            if used.insert(slot) {
                break;
            }
            slot = (slot + 1) % CIDR_RANGE;
        }
        out.insert(net, CIDR_BASE + slot);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn reserved_numbers_match_the_datapath() {
        let table = [
            (Entity::Host, Some(1)),
            (Entity::World, Some(2)),
            (Entity::Unmanaged, Some(3)),
            (Entity::Health, Some(4)),
            (Entity::Init, Some(5)),
            (Entity::RemoteNode, Some(6)),
            (Entity::KubeApiserver, Some(7)),
            (Entity::Ingress, Some(8)),
            (Entity::Cluster, None),
            (Entity::All, None),
            (Entity::WorldIpv4, None),
            (Entity::WorldIpv6, None),
        ];
        for (e, id) in table {
            assert_eq!(reserved(e), id, "{e}");
        }
        assert!(!is_allocated(255) && is_allocated(256) && !is_allocated(CIDR_BASE));
        assert!(is_cidr(CIDR_BASE) && is_cidr(CIDR_BASE + CIDR_RANGE - 1));
        assert!(!is_cidr(CIDR_BASE - 1) && !is_cidr(CIDR_BASE + CIDR_RANGE));
    }

    #[test]
    fn cidr_identities_are_stable_when_others_are_added() {
        let a = cidr_identities([net("10.0.0.0/8"), net("192.0.2.0/24")]);
        let b = cidr_identities([
            net("2001:db8::/32"),
            net("192.0.2.0/24"),
            net("10.1.0.0/16"),
            net("10.0.0.0/8"),
        ]);
        for (n, id) in &a {
            assert_eq!(b[n], *id, "{n}");
            assert!(is_cidr(*id));
        }
        // Truncation: host bits do not make a new CIDR.
        let c = cidr_identities([net("10.0.0.1/8")]);
        assert_eq!(c[&net("10.0.0.0/8")], a[&net("10.0.0.0/8")]);
        // Same prefix bits, other length or family: other identity.
        assert_ne!(
            cidr_home(&net("10.0.0.0/8")),
            cidr_home(&net("10.0.0.0/16"))
        );
        assert_ne!(cidr_home(&net("0.0.0.0/0")), cidr_home(&net("::/0")));
    }

    #[test]
    fn cidr_identities_are_unique_with_collisions() {
        // Many CIDRs: every identity distinct and in range, whatever the insertion order.
        let nets: Vec<IpNet> = (0..5000u32)
            .map(|i| IpNet::new(std::net::Ipv4Addr::from(i << 8).into(), 24).expect("valid"))
            .collect();
        let ids = cidr_identities(nets.clone());
        let distinct: BTreeSet<u32> = ids.values().copied().collect();
        assert_eq!(distinct.len(), nets.len());
        assert!(distinct.iter().all(|id| is_cidr(*id)));
        assert_eq!(cidr_identities(nets.into_iter().rev()), ids);
    }

    #[test]
    fn colliding_cidrs_probe_deterministically() {
        // Find two CIDRs with the same home; the smaller keeps it, the other takes the next.
        let mut homes = BTreeMap::new();
        let pair = (0..u32::MAX).find_map(|i| {
            let n = IpNet::new(std::net::Ipv4Addr::from(i).into(), 32).expect("valid");
            homes.insert(cidr_home(&n), n).map(|other| (other, n))
        });
        let (a, b) = pair.expect("birthday bound guarantees a collision");
        let ids = cidr_identities([b, a]);
        let home = CIDR_BASE + cidr_home(&a);
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        assert_eq!(ids[&lo], home);
        assert_eq!(ids[&hi], CIDR_BASE + (cidr_home(&a) + 1) % CIDR_RANGE);
    }
}
