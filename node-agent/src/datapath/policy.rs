//! Policy entries as the agent receives them, and their expansion into LPM map keys.
//! Pure: no I/O, unit-tested.

use weft_datapath_common::{
    PolicyHashKey, PolicyKey, PolicyValue, ACTION_ALLOW, ACTION_DENY, ACTION_REDIRECT,
    ACTION_UNSUPPORTED, DIR_EGRESS, DIR_INGRESS, IDENTITY_ANY, POLICY_ANY_PORT, POLICY_ANY_PROTO,
    POLICY_DIR_GEN, POLICY_PREFIX_PROTO_BITS,
};

/// Direction, seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn raw(self) -> u8 {
        match self {
            Direction::Ingress => DIR_INGRESS,
            Direction::Egress => DIR_EGRESS,
        }
    }
}

/// What a matching entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
    /// Allow, and mark the packets for the L7 proxy listening on this port.
    Redirect {
        proxy_port: u16,
    },
    /// Allows nothing: names the drop reason (`UNSUPPORTED_RULE`) of traffic that a rule Weft
    /// does not enforce would have allowed, when no allow matches. Only single ports and
    /// wildcards are written (hash map): a port range could hide an allow range in the LPM map,
    /// so ranges are left out and their traffic drops as `POLICY_DENIED`.
    Unsupported,
}

/// One policy entry of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyEntry {
    pub direction: Direction,
    /// Peer security identity; `None` = any peer.
    pub peer_identity: Option<u32>,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP); `None` = any protocol (then `ports` must be
    /// `None`).
    pub proto: Option<u8>,
    /// Inclusive destination port range (ICMP: type range); `None` = any port.
    pub ports: Option<(u16, u16)>,
    pub action: Action,
    /// Opaque reference echoed in debug output.
    pub rule_id: u32,
}

/// Why an entry cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyEntryError {
    #[error("port range {0}-{1} is empty")]
    EmptyRange(u16, u16),
    #[error("ports given without a protocol")]
    PortsWithoutProtocol,
    #[error("redirect needs a non-zero proxy port")]
    ZeroProxyPort,
}

/// Where one expanded entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicySlot {
    /// Single port, any port or any protocol: the hash map (O(1) per lookup).
    Hash(PolicyHashKey),
    /// Port-range block in the LPM allow map (allow and redirect).
    RangeAllow(u32, [u8; 12]),
    /// Port-range block in the LPM deny map.
    RangeDeny(u32, [u8; 12]),
}

impl PolicySlot {
    /// The slot's key in policy generation `gen` (`POLICY_DIR_GEN` in its direction).
    pub fn in_gen(self, gen: bool) -> PolicySlot {
        let dir = |d: u8| {
            if gen {
                d | POLICY_DIR_GEN
            } else {
                d & !POLICY_DIR_GEN
            }
        };
        match self {
            PolicySlot::Hash(mut k) => {
                k.direction = dir(k.direction);
                PolicySlot::Hash(k)
            }
            PolicySlot::RangeAllow(p, mut b) => {
                b[8] = dir(b[8]);
                PolicySlot::RangeAllow(p, b)
            }
            PolicySlot::RangeDeny(p, mut b) => {
                b[8] = dir(b[8]);
                PolicySlot::RangeDeny(p, b)
            }
        }
    }

    /// The generation the slot's key is in.
    pub fn gen(&self) -> bool {
        let d = match self {
            PolicySlot::Hash(k) => k.direction,
            PolicySlot::RangeAllow(_, b) | PolicySlot::RangeDeny(_, b) => b[8],
        };
        d & POLICY_DIR_GEN != 0
    }

    pub fn ep_id(&self) -> u32 {
        match self {
            PolicySlot::Hash(k) => k.ep_id,
            PolicySlot::RangeAllow(_, b) | PolicySlot::RangeDeny(_, b) => {
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
            }
        }
    }

    pub fn is_range(&self) -> bool {
        !matches!(self, PolicySlot::Hash(_))
    }
}

fn lpm_bytes(k: &PolicyKey) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&k.ep_id.to_ne_bytes());
    b[4..8].copy_from_slice(&k.identity.to_ne_bytes());
    b[8] = k.direction;
    b[9] = k.proto;
    b[10..12].copy_from_slice(&k.dport);
    b
}

/// Inverse of the byte form kept in [`PolicySlot`].
pub fn lpm_key_from_bytes(b: &[u8; 12]) -> PolicyKey {
    PolicyKey {
        ep_id: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        identity: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        direction: b[8],
        proto: b[9],
        dport: [b[10], b[11]],
    }
}

/// Whether `k` is the key of a port-range block.
pub fn range_slot(deny: bool, prefix_len: u32, k: &PolicyKey) -> PolicySlot {
    if deny {
        PolicySlot::RangeDeny(prefix_len, lpm_bytes(k))
    } else {
        PolicySlot::RangeAllow(prefix_len, lpm_bytes(k))
    }
}

/// Splits an inclusive port range into maximal aligned power-of-two blocks, as
/// `(first_port, prefix_bits_of_the_16)`.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let mut start = lo as u32;
    let end = hi as u32;
    while start <= end {
        // Largest block aligned at `start` that fits in [start, end].
        let mut size_bits = if start == 0 {
            16
        } else {
            start.trailing_zeros().min(16)
        };
        while start + (1u32 << size_bits) - 1 > end {
            size_bits -= 1;
        }
        out.push((start as u16, 16 - size_bits));
        start += 1u32 << size_bits;
    }
    out
}

/// Expands one entry into the map slots it needs and their value.
pub fn expand(
    ep_id: u32,
    e: &PolicyEntry,
) -> Result<(Vec<PolicySlot>, PolicyValue), PolicyEntryError> {
    let (deny, action, proxy_port) = match e.action {
        Action::Allow => (false, ACTION_ALLOW, 0),
        Action::Deny => (true, ACTION_DENY, 0),
        Action::Redirect { proxy_port: 0 } => return Err(PolicyEntryError::ZeroProxyPort),
        Action::Redirect { proxy_port } => (false, ACTION_REDIRECT, proxy_port),
        Action::Unsupported => (false, ACTION_UNSUPPORTED, 0),
    };
    let value = PolicyValue {
        action,
        _pad: 0,
        proxy_port,
        rule_id: e.rule_id,
    };
    let identity = e.peer_identity.unwrap_or(IDENTITY_ANY);
    let direction = e.direction.raw();
    let hash = |proto: u8, dport: u16, flags: u8| {
        PolicySlot::Hash(PolicyHashKey {
            ep_id,
            identity,
            direction,
            proto,
            dport,
            flags,
            _pad: [0; 3],
        })
    };
    let slots = match (e.proto, e.ports) {
        (None, Some(_)) => return Err(PolicyEntryError::PortsWithoutProtocol),
        (None, None) => vec![hash(0, 0, POLICY_ANY_PORT | POLICY_ANY_PROTO)],
        (Some(proto), None) | (Some(proto), Some((0, 65535))) => {
            vec![hash(proto, 0, POLICY_ANY_PORT)]
        }
        (Some(_), Some((lo, hi))) if lo > hi => return Err(PolicyEntryError::EmptyRange(lo, hi)),
        (Some(proto), Some((lo, hi))) if lo == hi => vec![hash(proto, lo, 0)],
        // See `Action::Unsupported`: never in the LPM map.
        (Some(_), Some(_)) if e.action == Action::Unsupported => Vec::new(),
        (Some(proto), Some((lo, hi))) => port_range_prefixes(lo, hi)
            .into_iter()
            .map(|(port, bits)| {
                let key = PolicyKey {
                    ep_id,
                    identity,
                    direction,
                    proto,
                    dport: port.to_be_bytes(),
                };
                range_slot(deny, POLICY_PREFIX_PROTO_BITS + bits, &key)
            })
            .collect(),
    };
    Ok((slots, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(blocks: &[(u16, u32)]) -> Vec<u32> {
        let mut v: Vec<u32> = blocks
            .iter()
            .flat_map(|&(p, bits)| {
                let n = 1u32 << (16 - bits);
                (p as u32..p as u32 + n).collect::<Vec<_>>()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn generations_differ_only_in_the_direction_bit() {
        let e = PolicyEntry {
            direction: Direction::Egress,
            peer_identity: Some(7),
            proto: Some(6),
            ports: Some((80, 81)),
            action: Action::Allow,
            rule_id: 1,
        };
        let (slots, _) = expand(3, &e).unwrap();
        for s in slots {
            let g1 = s.in_gen(true);
            assert!(!s.gen() && g1.gen() && g1 != s);
            assert_eq!(g1.in_gen(false), s);
            assert_eq!((g1.ep_id(), g1.is_range()), (3, s.is_range()));
        }
    }

    #[test]
    fn unsupported_entries_use_the_hash_map_only() {
        let e = |ports| PolicyEntry {
            direction: Direction::Egress,
            peer_identity: Some(2),
            proto: Some(6),
            ports,
            action: Action::Unsupported,
            rule_id: 1,
        };
        let (slots, v) = expand(7, &e(Some((443, 443)))).unwrap();
        assert_eq!(v.action, ACTION_UNSUPPORTED);
        assert!(matches!(slots[..], [PolicySlot::Hash(_)]));
        let (slots, _) = expand(7, &e(None)).unwrap();
        assert!(matches!(slots[..], [PolicySlot::Hash(_)]));
        let (slots, _) = expand(7, &e(Some((8000, 8100)))).unwrap();
        assert!(slots.is_empty());
    }

    #[test]
    fn port_ranges_cover_exactly_the_range() {
        for &(lo, hi) in &[
            (80u16, 80u16),
            (0, 65535),
            (1000, 2000),
            (1, 1023),
            (8080, 8090),
            (65535, 65535),
        ] {
            let blocks = port_range_prefixes(lo, hi);
            assert_eq!(
                covered(&blocks),
                (lo as u32..=hi as u32).collect::<Vec<_>>(),
                "{lo}-{hi}"
            );
            for &(p, bits) in &blocks {
                let size = 1u32 << (16 - bits);
                assert_eq!(p as u32 % size, 0, "block {p}/{bits} is aligned");
            }
        }
        assert_eq!(port_range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_range_prefixes(80, 80), vec![(80, 16)]);
        assert!(port_range_prefixes(1, 65535).len() <= 16);
    }

    #[test]
    fn expansion_picks_hash_or_range_slots_and_rejects_nonsense() {
        let e = PolicyEntry {
            direction: Direction::Ingress,
            peer_identity: None,
            proto: Some(6),
            ports: Some((80, 81)),
            action: Action::Redirect { proxy_port: 15001 },
            rule_id: 7,
        };
        let (slots, v) = expand(3, &e).unwrap();
        assert_eq!(v.action, ACTION_REDIRECT);
        assert_eq!(slots.len(), 1);
        assert!(
            matches!(slots[0], PolicySlot::RangeAllow(95, _)),
            "{slots:?}"
        );
        let single = PolicyEntry {
            ports: Some((80, 80)),
            ..e.clone()
        };
        let (slots, _) = expand(3, &single).unwrap();
        assert!(
            matches!(slots[0], PolicySlot::Hash(k) if k.dport == 80 && k.flags == 0 && k.identity == IDENTITY_ANY)
        );
        let all_ports = PolicyEntry {
            ports: Some((0, 65535)),
            ..e.clone()
        };
        let (slots, _) = expand(3, &all_ports).unwrap();
        assert!(matches!(slots[0], PolicySlot::Hash(k) if k.flags == POLICY_ANY_PORT));
        let any = PolicyEntry {
            proto: None,
            ports: None,
            action: Action::Deny,
            ..e.clone()
        };
        let (slots, v) = expand(3, &any).unwrap();
        assert_eq!(v.action, ACTION_DENY);
        assert!(
            matches!(slots[0], PolicySlot::Hash(k) if k.flags == POLICY_ANY_PORT | POLICY_ANY_PROTO)
        );
        let range_deny = PolicyEntry {
            ports: Some((1000, 2000)),
            action: Action::Deny,
            ..e.clone()
        };
        let (slots, _) = expand(3, &range_deny).unwrap();
        assert!(slots.iter().all(|s| matches!(s, PolicySlot::RangeDeny(..))));
        let bad = PolicyEntry {
            proto: None,
            ..e.clone()
        };
        assert_eq!(
            expand(3, &bad).unwrap_err(),
            PolicyEntryError::PortsWithoutProtocol
        );
        let empty = PolicyEntry {
            ports: Some((9, 8)),
            ..e.clone()
        };
        assert_eq!(
            expand(3, &empty).unwrap_err(),
            PolicyEntryError::EmptyRange(9, 8)
        );
        let zero = PolicyEntry {
            action: Action::Redirect { proxy_port: 0 },
            ..e
        };
        assert_eq!(
            expand(3, &zero).unwrap_err(),
            PolicyEntryError::ZeroProxyPort
        );
    }
}
