//! The policy decision for one packet: the endpoint's rules for a peer identity, and the
//! peer's identity from the ipcache.

use aya_ebpf::maps::lpm_trie::Key;
use weft_datapath_common::*;

use crate::maps::{WEFT_IPCACHE, WEFT_POLICY, WEFT_POLICY_ALLOW, WEFT_POLICY_DENY};
use crate::parse::Pkt;

/// `EP_POLICY_GEN` shifted onto `POLICY_DIR_GEN`.
const GEN_SHIFT: u32 = POLICY_DIR_GEN.trailing_zeros() - EP_POLICY_GEN.trailing_zeros();

/// Result of a policy lookup.
pub(crate) struct Decision {
    pub(crate) action: u8,
    pub(crate) proxy_port: u16,
    pub(crate) reason: u8,
}

#[inline(always)]
fn policy_key(ep_id: u32, identity: u32, dir: u8, p: &Pkt) -> Key<PolicyKey> {
    Key::new(
        POLICY_PREFIX_FULL_BITS,
        PolicyKey {
            ep_id,
            identity,
            direction: dir,
            proto: p.proto,
            dport: p.policy_port.to_be_bytes(),
        },
    )
}

#[inline(always)]
fn hash_key(ep_id: u32, identity: u32, dir: u8, proto: u8, port: u16, flags: u8) -> PolicyHashKey {
    PolicyHashKey {
        ep_id,
        identity,
        direction: dir,
        proto,
        dport: port,
        flags,
        _pad: [0; 3],
    }
}

const DENIED_BY_RULE: Decision = Decision {
    action: ACTION_DENY,
    proxy_port: 0,
    reason: DROP_DENY_RULE,
};

/// Deny rules win over allow rules; among allows the most specific wins (exact identity over
/// any identity, then exact port over any port over any protocol, then port ranges).
/// Six hash lookups, plus four LPM lookups only for endpoints with port-range entries.
#[inline(always)]
pub(crate) fn decide(ep: &EndpointValue, dir: u8, peer_identity: u32, p: &Pkt) -> Decision {
    let enforce = if dir == DIR_INGRESS {
        EP_ENFORCE_INGRESS
    } else {
        EP_ENFORCE_EGRESS
    };
    if ep.flags & enforce == 0 {
        return Decision {
            action: ACTION_ALLOW,
            proxy_port: 0,
            reason: DROP_NONE,
        };
    }
    // The endpoint's current policy generation: its entries are complete before the agent
    // flips to it, and stay untouched until no program can still be reading them.
    // Branch-free, so the verifier does not walk the rest of the decision once per generation.
    let dir = dir | (((ep.flags & EP_POLICY_GEN) as u8) << GEN_SHIFT);
    let mut allow: Option<PolicyValue> = None;
    // An entry of a rule Weft does not enforce matched: allows nothing, names the drop.
    let mut unsupported = false;
    // One key on the stack, rewritten for each of the six candidates (stack is scarce).
    let mut k = hash_key(ep.ep_id, peer_identity, dir, p.proto, p.policy_port, 0);
    for i in 0..6u32 {
        if i == 3 {
            k.identity = IDENTITY_ANY;
        }
        match i % 3 {
            0 => {
                k.proto = p.proto;
                k.dport = p.policy_port;
                k.flags = 0;
            }
            1 => {
                k.dport = 0;
                k.flags = POLICY_ANY_PORT;
            }
            _ => {
                k.proto = 0;
                k.flags = POLICY_ANY_PORT | POLICY_ANY_PROTO;
            }
        }
        // Copied at once (no entry of the current generation is deleted while programs
        // may read it, but copying keeps the value a snapshot).
        if let Some(v) = unsafe { WEFT_POLICY.get(&k) }.copied() {
            if v.action == ACTION_DENY {
                return DENIED_BY_RULE;
            }
            if v.action == ACTION_UNSUPPORTED {
                unsupported = true;
            } else if allow.is_none() {
                allow = Some(v);
            }
        }
    }
    if ep.flags & EP_HAS_PORT_RANGES != 0 {
        let exact = policy_key(ep.ep_id, peer_identity, dir, p);
        let any = policy_key(ep.ep_id, IDENTITY_ANY, dir, p);
        if WEFT_POLICY_DENY.get(&exact).is_some() || WEFT_POLICY_DENY.get(&any).is_some() {
            return DENIED_BY_RULE;
        }
        if allow.is_none() {
            allow = match WEFT_POLICY_ALLOW.get(&exact) {
                Some(v) => Some(*v),
                None => WEFT_POLICY_ALLOW.get(&any).copied(),
            };
        }
    }
    match allow {
        Some(v) if v.action == ACTION_ALLOW || v.action == ACTION_REDIRECT => Decision {
            action: v.action,
            proxy_port: v.proxy_port,
            reason: DROP_NONE,
        },
        Some(_) => DENIED_BY_RULE,
        None => Decision {
            action: ACTION_DENY,
            proxy_port: 0,
            reason: if unsupported {
                DROP_UNSUPPORTED_RULE
            } else {
                DROP_POLICY_DENIED
            },
        },
    }
}

/// Security identity of a peer address: longest prefix in the ipcache, else world.
#[inline(always)]
pub(crate) fn peer_identity_of(family: u8, addr: &Addr) -> u32 {
    let bits = if family == FAMILY_IPV6 { 128 } else { 32 };
    match WEFT_IPCACHE.get(&Key::new(
        IPCACHE_PREFIX_HEADER_BITS + bits,
        IpcacheKey {
            family,
            _pad: [0; 3],
            addr: *addr,
        },
    )) {
        Some(v) => v.identity,
        None => IDENTITY_WORLD,
    }
}
