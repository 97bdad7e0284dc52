//! Policy entries as the agent receives them, and their expansion into LPM map keys.
//! Pure: no I/O, unit-tested.

use weft_datapath_common::{
    PolicyKey, PolicyValue, ACTION_ALLOW, ACTION_DENY, ACTION_REDIRECT, DIR_EGRESS, DIR_INGRESS,
    IDENTITY_ANY, POLICY_PREFIX_FIXED_BITS, POLICY_PREFIX_PROTO_BITS,
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

/// Which policy map a key goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyMap {
    Allow,
    Deny,
}

/// A map key as (prefix length, data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LpmPolicyKey {
    pub prefix_len: u32,
    pub key: PolicyKey,
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

/// Expands one entry into the keys and value it needs in its map.
pub fn expand(
    ep_id: u32,
    e: &PolicyEntry,
) -> Result<(PolicyMap, Vec<LpmPolicyKey>, PolicyValue), PolicyEntryError> {
    let (map, action, proxy_port) = match e.action {
        Action::Allow => (PolicyMap::Allow, ACTION_ALLOW, 0),
        Action::Deny => (PolicyMap::Deny, ACTION_DENY, 0),
        Action::Redirect { proxy_port: 0 } => return Err(PolicyEntryError::ZeroProxyPort),
        Action::Redirect { proxy_port } => (PolicyMap::Allow, ACTION_REDIRECT, proxy_port),
    };
    let value = PolicyValue {
        action,
        _pad: 0,
        proxy_port,
        rule_id: e.rule_id,
    };
    let base = PolicyKey {
        ep_id,
        identity: e.peer_identity.unwrap_or(IDENTITY_ANY),
        direction: e.direction.raw(),
        proto: 0,
        dport: [0; 2],
    };
    let keys = match (e.proto, e.ports) {
        (None, Some(_)) => return Err(PolicyEntryError::PortsWithoutProtocol),
        (None, None) => vec![LpmPolicyKey {
            prefix_len: POLICY_PREFIX_FIXED_BITS,
            key: base,
        }],
        (Some(proto), None) => vec![LpmPolicyKey {
            prefix_len: POLICY_PREFIX_PROTO_BITS,
            key: PolicyKey { proto, ..base },
        }],
        (Some(proto), Some((lo, hi))) => {
            if lo > hi {
                return Err(PolicyEntryError::EmptyRange(lo, hi));
            }
            port_range_prefixes(lo, hi)
                .into_iter()
                .map(|(port, bits)| LpmPolicyKey {
                    prefix_len: POLICY_PREFIX_PROTO_BITS + bits,
                    key: PolicyKey {
                        proto,
                        dport: port.to_be_bytes(),
                        ..base
                    },
                })
                .collect()
        }
    };
    Ok((map, keys, value))
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
    fn expansion_sets_prefixes_and_rejects_nonsense() {
        let e = PolicyEntry {
            direction: Direction::Ingress,
            peer_identity: None,
            proto: Some(6),
            ports: Some((80, 81)),
            action: Action::Redirect { proxy_port: 15001 },
            rule_id: 7,
        };
        let (map, keys, v) = expand(3, &e).unwrap();
        assert_eq!(map, PolicyMap::Allow);
        assert_eq!(v.action, ACTION_REDIRECT);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].prefix_len, 80 + 15);
        assert_eq!(keys[0].key.identity, IDENTITY_ANY);
        let any = PolicyEntry {
            proto: None,
            ports: None,
            action: Action::Deny,
            ..e.clone()
        };
        let (map, keys, _) = expand(3, &any).unwrap();
        assert_eq!((map, keys[0].prefix_len), (PolicyMap::Deny, 72));
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
