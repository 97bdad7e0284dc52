//! The endpoint programs' packet path: parse, source check, fragments, ICMP errors,
//! conntrack, policy, then pass or drop (counted, with a flow event when configured).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
    EbpfContext,
};
use weft_datapath_common::*;

use crate::conntrack::{ct_touch, frag_key};
use crate::events::{config, count, emit, EventInfo};
use crate::maps::{WEFT_CT, WEFT_ENDPOINTS, WEFT_FRAGS, WEFT_SCRATCH};
use crate::parse::{parse, Parsed, Pkt, FRAG_FIRST, FRAG_LATER, TCP_FIN, TCP_RST};
use crate::policy::{decide, peer_identity_of};

#[inline(always)]
fn drop_pkt(p: &Pkt, cfg: &Config, info: &EventInfo) -> i32 {
    count(VERDICT_DROPPED, info.reason, p.bytes as u64);
    if cfg.event_flags & EVENTS_ON_DROP != 0 {
        emit(p, info);
    }
    TC_ACT_SHOT
}

#[inline(always)]
fn pass_pkt(ctx: &mut TcContext, p: &Pkt, dir: u8, proxy_port: u16, cfg: &Config) -> i32 {
    if p.frag == FRAG_FIRST {
        // The later fragments of this datagram follow this verdict.
        if let Some(k) = frag_key(p, dir) {
            let v = FragValue {
                created_ns: unsafe { bpf_ktime_get_ns() },
                sport: p.sport,
                dport: p.dport,
                _pad: 0,
            };
            let _ = WEFT_FRAGS.insert(k, &v, 0);
        }
    }
    if proxy_port != 0 {
        return crate::proxy::redirect(ctx, p, dir, proxy_port, cfg);
    }
    count(VERDICT_FORWARDED, DROP_NONE, p.bytes as u64);
    TC_ACT_OK
}

/// Policy + conntrack for one packet seen at an endpoint's interface.
#[inline(always)]
pub(crate) fn handle(ctx: &mut TcContext, obs: u8) -> i32 {
    let cfg = config();
    let mut p = Pkt::default();
    // A VLAN tag the kernel already took out of the frame (skb metadata) counts as VLAN.
    // SAFETY: the context of a tc program is a valid __sk_buff.
    let vlan = unsafe { (*(ctx.as_ptr() as *const aya_ebpf::bindings::__sk_buff)).vlan_present };
    let parsed = if vlan != 0 {
        Ok(Parsed::Other)
    } else {
        parse(ctx, &mut p)
    };
    match parsed {
        Ok(Parsed::Ip) => {}
        Ok(Parsed::LinkControl) => return TC_ACT_OK,
        Ok(Parsed::Other) => {
            if obs == OBS_FROM_ENDPOINT {
                // VLAN, MPLS, ... from an endpoint: nothing to judge them by, fail closed.
                count(VERDICT_DROPPED, DROP_UNSUPPORTED_L3, ctx.len() as u64);
                return TC_ACT_SHOT;
            }
            return TC_ACT_OK;
        }
        Err(reason) => {
            let len = ctx.len() as u64;
            count(VERDICT_DROPPED, reason, len);
            return TC_ACT_SHOT;
        }
    };
    let dir = if obs == OBS_FROM_ENDPOINT {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    };
    let (ep_addr, peer_addr) = if dir == DIR_EGRESS {
        (p.saddr, p.daddr)
    } else {
        (p.daddr, p.saddr)
    };
    let mut info = EventInfo {
        verdict: VERDICT_DROPPED,
        reason: DROP_NONE,
        direction: dir,
        obs,
        ep_id: 0,
        src_identity: IDENTITY_UNKNOWN,
        dst_identity: IDENTITY_UNKNOWN,
    };
    let ep_key = EndpointKey {
        family: p.family,
        _pad: [0; 3],
        addr: ep_addr,
    };
    let ep = match unsafe { WEFT_ENDPOINTS.get(&ep_key) } {
        Some(ep) => *ep,
        None => {
            info.reason = DROP_UNKNOWN_ENDPOINT;
            return drop_pkt(&p, &cfg, &info);
        }
    };
    info.ep_id = ep.ep_id;
    // SAFETY: the context of a tc program is a valid __sk_buff.
    let mark = unsafe { (*(ctx.as_ptr() as *const aya_ebpf::bindings::__sk_buff)).mark };
    // The peer's identity: what the packet carries from another node's endpoint (the
    // tunnel's VNI, see `tunnel`), else its address's in the ipcache.
    let wire_identity = if dir == DIR_INGRESS {
        identity_of_mark(mark)
    } else {
        // What this endpoint sends carries its identity to the tunnel.
        ctx.set_mark(identity_mark(ep.identity));
        None
    };
    let peer_identity_of =
        |family: u8, addr: &Addr| wire_identity.unwrap_or_else(|| peer_identity_of(family, addr));
    // Forwarded by the L7 proxy after it checked the request against this endpoint's
    // ingress L7 rules: allowed at L3/L4 as usual, but not redirected again.
    let proxied = dir == DIR_INGRESS && mark & MARK_MAGIC_MASK == MARK_PROXIED;
    let decide = |ep: &EndpointValue, dir: u8, peer_identity: u32, p: &Pkt| {
        let mut d = decide(ep, dir, peer_identity, p);
        if proxied {
            d.proxy_port = 0;
        }
        d
    };
    // Source validation: what an endpoint sends carries its own address (the endpoint map
    // records the endpoint's interface; 0 = not known to the agent, not checked).
    if dir == DIR_EGRESS && ep.ifindex != 0 {
        // SAFETY: the context of a tc program is a valid __sk_buff.
        let ifindex = unsafe { (*(ctx.as_ptr() as *const aya_ebpf::bindings::__sk_buff)).ifindex };
        if ifindex != ep.ifindex {
            info.reason = DROP_SPOOFED_SOURCE;
            return drop_pkt(&p, &cfg, &info);
        }
    }
    // Later fragments have no L4 header: they follow their first fragment's verdict. An
    // endpoint that does not enforce this direction is never affected.
    if p.frag == FRAG_LATER {
        let enforce = if dir == DIR_INGRESS {
            EP_ENFORCE_INGRESS
        } else {
            EP_ENFORCE_EGRESS
        };
        let followed = ep.flags & enforce == 0
            || frag_key(&p, dir).is_some_and(|k| unsafe { WEFT_FRAGS.get(k) }.is_some());
        if !followed {
            info.reason = DROP_FRAGMENT;
            return drop_pkt(&p, &cfg, &info);
        }
        count(VERDICT_FORWARDED, DROP_NONE, p.bytes as u64);
        return TC_ACT_OK;
    }
    // Identities for events: the endpoint's own is known; the peer's comes from conntrack
    // (established) or the ipcache (new connections, re-checks).
    let set_ids = |info: &mut EventInfo, peer_identity: u32| {
        if dir == DIR_EGRESS {
            info.src_identity = ep.identity;
            info.dst_identity = peer_identity;
        } else {
            info.src_identity = peer_identity;
            info.dst_identity = ep.identity;
        }
    };

    let now = unsafe { bpf_ktime_get_ns() };
    let Some(scratch) = WEFT_SCRATCH.get_ptr_mut(0) else {
        info.reason = DROP_INTERNAL;
        return drop_pkt(&p, &cfg, &info);
    };
    // ICMP errors (destination unreachable incl. fragmentation needed / packet too big, time
    // exceeded, parameter problem) quoting a tracked connection pass as related, whatever
    // the policy: PMTU discovery works under default deny. Unrelated ones face the policy
    // as ICMP of their type, and open no connection.
    if p.icmp_err != 0 {
        // SAFETY: per-CPU map value, only this program invocation uses it.
        let inner = unsafe { &mut (*scratch).inner };
        let rev = unsafe { &mut (*scratch).rev };
        // The quoted packet went the other way through this endpoint: its connection is the
        // quoted tuple admitted by the other direction, or the reversed tuple admitted by
        // this one.
        inner.dir = if dir == DIR_EGRESS {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        };
        rev.saddr = inner.daddr;
        rev.daddr = inner.saddr;
        rev.sport = inner.dport;
        rev.dport = inner.sport;
        rev.proto = inner.proto;
        rev.family = inner.family;
        rev.dir = dir;
        rev._pad = 0;
        let related = match unsafe { WEFT_CT.get(&*inner) } {
            Some(e) => Some(*e),
            None => unsafe { WEFT_CT.get(&*rev) }.copied(),
        };
        if let Some(e) = related {
            if !ct_expired(&cfg, &e, now) && e.flags & CT_F_REVOKED == 0 {
                set_ids(&mut info, e.peer_identity);
                info.verdict = VERDICT_FORWARDED;
                if cfg.event_flags & EVENTS_ALL != 0 {
                    emit(&p, &info);
                }
                return pass_pkt(ctx, &p, dir, 0, &cfg);
            }
        }
        let peer_identity = peer_identity_of(p.family, &peer_addr);
        set_ids(&mut info, peer_identity);
        let d = decide(&ep, dir, peer_identity, &p);
        if d.action == ACTION_DENY {
            info.reason = d.reason;
            return drop_pkt(&p, &cfg, &info);
        }
        // ICMP errors never go to the L7 proxy.
        return pass_pkt(ctx, &p, dir, 0, &cfg);
    }
    // SAFETY: per-CPU map value, only this program invocation uses it (no preemption
    // within a BPF program on this CPU).
    let fwd = unsafe { &mut (*scratch).fwd };
    fwd.saddr = p.saddr;
    fwd.daddr = p.daddr;
    fwd.sport = p.sport;
    fwd.dport = p.dport;
    fwd.proto = p.proto;
    fwd.family = p.family;
    fwd.dir = dir;
    fwd._pad = 0;
    let fwd = &*fwd;
    // 1. Forward packet of a connection this direction's policy already allowed.
    if let Some(e) = WEFT_CT.get_ptr_mut(fwd) {
        let entry = unsafe { *e };
        if !ct_expired(&cfg, &entry, now) {
            let mut proxy_port = entry.proxy_port;
            set_ids(&mut info, entry.peer_identity);
            if entry.policy_rev != ep.policy_rev || entry.flags & CT_F_REVOKED != 0 {
                let peer_identity = peer_identity_of(p.family, &peer_addr);
                set_ids(&mut info, peer_identity);
                // Policy changed since this connection was admitted: re-check. Denied now:
                // the connection is revoked, its packets both ways drop from here on (the
                // entry stays, so that a reply cannot open it again from the other side,
                // and lives the close timeout after its last packet). A later change that
                // allows it again lets it resume.
                let d = decide(&ep, dir, peer_identity, &p);
                if d.action == ACTION_DENY {
                    unsafe {
                        (*e).policy_rev = ep.policy_rev;
                        (*e).flags |= CT_F_REVOKED;
                        (*e).last_seen_ns = now;
                    }
                    info.reason = d.reason;
                    return drop_pkt(&p, &cfg, &info);
                }
                proxy_port = d.proxy_port;
                unsafe {
                    (*e).policy_rev = ep.policy_rev;
                    (*e).flags &= !CT_F_REVOKED;
                    (*e).proxy_port = d.proxy_port;
                    (*e).peer_identity = peer_identity;
                }
            }
            let closing = ct_touch(e, &p, now, false);
            info.verdict = if proxy_port != 0 {
                VERDICT_REDIRECTED
            } else {
                VERDICT_FORWARDED
            };
            if cfg.event_flags & EVENTS_ALL != 0
                || (closing && cfg.event_flags & EVENTS_ON_TCP_FLAGS != 0)
            {
                emit(&p, &info);
            }
            return pass_pkt(ctx, &p, dir, proxy_port, &cfg);
        }
        let _ = WEFT_CT.remove(fwd);
    }
    // 2. Reply of a connection admitted in the other direction: no policy lookup.
    // SAFETY: as for `fwd`.
    let rev = unsafe { &mut (*scratch).rev };
    rev.saddr = p.daddr;
    rev.daddr = p.saddr;
    rev.sport = p.dport;
    rev.dport = p.sport;
    rev.proto = p.proto;
    rev.family = p.family;
    rev.dir = if dir == DIR_EGRESS {
        DIR_INGRESS
    } else {
        DIR_EGRESS
    };
    rev._pad = 0;
    let rev = &*rev;
    if let Some(e) = WEFT_CT.get_ptr_mut(rev) {
        let entry = unsafe { *e };
        if !ct_expired(&cfg, &entry, now) {
            set_ids(&mut info, entry.peer_identity);
            if entry.flags & CT_F_REVOKED != 0 {
                // Reply of a connection a policy change revoked.
                unsafe { (*e).last_seen_ns = now };
                info.reason = DROP_POLICY_DENIED;
                return drop_pkt(&p, &cfg, &info);
            }
            let closing = ct_touch(e, &p, now, true);
            info.verdict = VERDICT_FORWARDED;
            if cfg.event_flags & EVENTS_ALL != 0
                || (closing && cfg.event_flags & EVENTS_ON_TCP_FLAGS != 0)
            {
                emit(&p, &info);
            }
            return pass_pkt(ctx, &p, dir, 0, &cfg);
        }
        let _ = WEFT_CT.remove(rev);
    }
    // 3. New connection: policy decides.
    let peer_identity = peer_identity_of(p.family, &peer_addr);
    set_ids(&mut info, peer_identity);
    let d = decide(&ep, dir, peer_identity, &p);
    if d.action == ACTION_DENY {
        info.reason = d.reason;
        return drop_pkt(&p, &cfg, &info);
    }
    let entry = CtValue {
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: p.bytes as u64,
        ep_id: ep.ep_id,
        policy_rev: ep.policy_rev,
        tcp_flags: p.tcp_flags,
        flags: if p.tcp_flags & TCP_RST != 0 {
            CT_F_CLOSING
        } else if p.tcp_flags & TCP_FIN != 0 {
            CT_F_FIN_FWD
        } else {
            0
        },
        proxy_port: d.proxy_port,
        peer_identity,
    };
    if WEFT_CT.insert(fwd, &entry, 0).is_err() {
        info.reason = DROP_CT_FULL;
        return drop_pkt(&p, &cfg, &info);
    }
    info.verdict = if d.proxy_port != 0 {
        VERDICT_REDIRECTED
    } else {
        VERDICT_FORWARDED
    };
    if cfg.event_flags & (EVENTS_ON_START | EVENTS_ALL) != 0 {
        emit(&p, &info);
    }
    pass_pkt(ctx, &p, dir, d.proxy_port, &cfg)
}
