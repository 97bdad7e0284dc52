//! Load balancing: backend selection (random slots, Maglev, client affinity) shared with the
//! socket LB, and north-south LB on the uplink (VIP DNAT to a backend, replies SNAT back,
//! through an LB conntrack).

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use weft_datapath_common::*;

use crate::events::{config, count, emit, EventInfo};
use crate::maps::{
    WEFT_AFFINITY, WEFT_BACKENDS, WEFT_BACKEND_SLOTS, WEFT_LB_CT, WEFT_MAGLEV, WEFT_SERVICES,
};
use crate::parse::{parse, Parsed, Pkt, ETH_HLEN, FRAG_LATER};

const NS_PER_S: u64 = 1_000_000_000;

/// 64-bit finalizer (murmur3 fmix64): spreads the client/service key over the Maglev table.
#[inline(always)]
fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Flow hash used for Maglev: must match `node_agent::datapath::maglev_slot`.
#[inline(always)]
fn client_hash(seed: u32, client: u64, svc_id: u32) -> u64 {
    mix64(client ^ ((seed as u64) << 32 | svc_id as u64))
}

/// Chooses a backend id for a new connection; `None` = no usable backend.
#[inline(always)]
pub(crate) fn select_backend(
    svc: &ServiceValue,
    client: u64,
    cfg: &Config,
    now: u64,
) -> Option<u32> {
    let aff_key = AffinityKey {
        client,
        svc_id: svc.svc_id,
        _pad: 0,
    };
    if svc.flags & SVC_F_AFFINITY != 0 {
        if let Some(a) = unsafe { WEFT_AFFINITY.get(&aff_key) } {
            let fresh =
                now.saturating_sub(a.last_used_ns) <= svc.affinity_timeout_s as u64 * NS_PER_S;
            let backend_id = a.backend_id;
            if fresh {
                if let Some(b) = unsafe { WEFT_BACKENDS.get(&backend_id) } {
                    if b.state == BACKEND_ACTIVE {
                        return Some(backend_id);
                    }
                }
            }
        }
    }
    let id = if svc.flags & SVC_F_MAGLEV != 0 {
        let m = svc.maglev_m as u64;
        if m == 0 {
            return None;
        }
        let table = unsafe { WEFT_MAGLEV.get(&svc.svc_id) }?;
        let idx = (client_hash(cfg.hash_seed, client, svc.svc_id) % m) as usize;
        if idx >= MAGLEV_MAX_M {
            return None;
        }
        table.backends[idx]
    } else {
        let slot = unsafe { bpf_get_prandom_u32() }.checked_rem(svc.count)?;
        *unsafe {
            WEFT_BACKEND_SLOTS.get(&BackendSlotKey {
                svc_id: svc.svc_id,
                slot,
            })
        }?
    };
    if svc.flags & SVC_F_AFFINITY != 0 {
        let _ = WEFT_AFFINITY.insert(
            &aff_key,
            &AffinityValue {
                last_used_ns: now,
                backend_id: id,
                _pad: 0,
            },
            0,
        );
    }
    Some(id)
}

/// An address folded to 32 bits (an IPv4 address is itself: its other words are zero).
#[inline(always)]
fn fold(a: &Addr) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    w(0) ^ w(4) ^ w(8) ^ w(12)
}

/// The 4-byte word `i` of an address, as it sits in the packet.
#[inline(always)]
fn word(a: &Addr, i: usize) -> u32 {
    u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]])
}

/// Flow hash of a north-south connection (Maglev slot choice).
#[inline(always)]
fn tuple_hash(seed: u32, p: &Pkt) -> u64 {
    let s = fold(&p.saddr) as u64;
    let d = fold(&p.daddr) as u64;
    let ports = ((p.sport as u64) << 16) | p.dport as u64;
    mix64((s << 32 | d) ^ mix64(ports << 8 | p.proto as u64 ^ (seed as u64) << 40))
}

/// Rewrites the destination (ingress) or source (egress) address and port, fixing the L4
/// checksum (its pseudo-header has the addresses) and, for IPv4, the header checksum.
#[inline(always)]
fn rewrite(ctx: &mut TcContext, p: &Pkt, dst: bool, addr: &Addr, port: u16) -> Result<(), u8> {
    if p.family == FAMILY_IPV6 {
        return match rewrite6(ctx.skb.skb, p, dst, addr, port) {
            DROP_NONE => Ok(()),
            reason => Err(reason),
        };
    }
    let old_addr = if dst { p.daddr } else { p.saddr };
    let old = word(&old_addr, 0);
    let new = word(addr, 0);
    let old_port = if dst { p.dport } else { p.sport };
    let l4 = p.l4_off as usize;
    let (csum_off, pseudo) = match p.proto {
        PROTO_TCP => (l4 + 16, true),
        PROTO_UDP => (l4 + 6, true),
        _ => (0, false),
    };
    let addr_off = ETH_HLEN + if dst { 16 } else { 12 };
    let port_off = l4 + if dst { 2 } else { 0 };
    // BPF_F_PSEUDO_HDR (0x10) | size 4; BPF_F_MARK_MANGLED_0 (0x20) keeps a zero UDP checksum.
    let mangled0: u64 = if p.proto == PROTO_UDP { 0x20 } else { 0 };
    if pseudo {
        ctx.l4_csum_replace(csum_off, old as u64, new as u64, 0x10 | 4 | mangled0)
            .map_err(|_| DROP_INVALID_PACKET)?;
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, 2 | mangled0)
            .map_err(|_| DROP_INVALID_PACKET)?;
    }
    ctx.l3_csum_replace(ETH_HLEN + 10, old as u64, new as u64, 4)
        .map_err(|_| DROP_INVALID_PACKET)?;
    ctx.store(addr_off, &new, 0)
        .map_err(|_| DROP_INVALID_PACKET)?;
    if pseudo {
        ctx.store(port_off, &port, 0)
            .map_err(|_| DROP_INVALID_PACKET)?;
    }
    Ok(())
}

/// [`rewrite`] for IPv6: no header checksum; the L4 checksum is fixed one address word at
/// a time (each a pseudo-header change), then the port. Not inlined: its own stack frame
/// keeps `lb_ingress` within the verifier's combined stack limit; it gets the socket
/// buffer itself (a register the verifier still knows as the context) rather than a
/// pointer to the caller's `TcContext`.
#[inline(never)]
fn rewrite6(skb: *mut __sk_buff, p: &Pkt, dst: bool, addr: &Addr, port: u16) -> u8 {
    // A plain byte back (0: done, else the drop reason): a `Result` would be returned
    // through memory, a sixth argument BPF calls cannot take.
    match rewrite6_in(&mut TcContext::new(skb), p, dst, addr, port) {
        Ok(()) => DROP_NONE,
        Err(reason) => reason,
    }
}

#[inline(always)]
fn rewrite6_in(ctx: &mut TcContext, p: &Pkt, dst: bool, addr: &Addr, port: u16) -> Result<(), u8> {
    let old_addr = if dst { &p.daddr } else { &p.saddr };
    let old_port = if dst { p.dport } else { p.sport };
    let l4 = p.l4_off as usize;
    let csum_off = match p.proto {
        PROTO_TCP => l4 + 16,
        PROTO_UDP => l4 + 6,
        _ => return Err(DROP_INVALID_PACKET),
    };
    // IPv6 header: source at 8, destination at 24.
    let addr_off = ETH_HLEN + if dst { 24 } else { 8 };
    let port_off = l4 + if dst { 2 } else { 0 };
    for i in 0..4 {
        ctx.l4_csum_replace(
            csum_off,
            word(old_addr, i) as u64,
            word(addr, i) as u64,
            0x10 | 4,
        )
        .map_err(|_| DROP_INVALID_PACKET)?;
    }
    ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, 2)
        .map_err(|_| DROP_INVALID_PACKET)?;
    ctx.store(addr_off, addr, 0)
        .map_err(|_| DROP_INVALID_PACKET)?;
    ctx.store(port_off, &port, 0)
        .map_err(|_| DROP_INVALID_PACKET)?;
    Ok(())
}

/// The LB conntrack key of a packet's tuple as it is on the wire.
#[inline(always)]
fn lb_ct_key(p: &Pkt, dir: u8) -> CtKey {
    CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        family: p.family,
        dir,
        _pad: 0,
    }
}

#[inline(always)]
fn lb_drop(p: &Pkt, cfg: &Config, reason: u8, obs: u8, svc_id: u32) -> i32 {
    count(VERDICT_DROPPED, reason, p.bytes as u64);
    if cfg.event_flags & EVENTS_ON_DROP != 0 {
        emit(
            p,
            &EventInfo {
                verdict: VERDICT_DROPPED,
                reason,
                direction: DIR_INGRESS,
                obs,
                ep_id: 0,
                src_identity: IDENTITY_WORLD,
                dst_identity: svc_id,
            },
        );
    }
    TC_ACT_SHOT
}

/// Client -> VIP: pick (or keep) a backend and DNAT to it; record the reverse entry.
#[inline(always)]
pub(crate) fn lb_ingress(ctx: &mut TcContext) -> i32 {
    let mut p = Pkt::default();
    match parse(ctx, &mut p) {
        Ok(Parsed::Ip) => {}
        Ok(_) => return TC_ACT_OK,
        Err(reason) => {
            count(VERDICT_DROPPED, reason, ctx.len() as u64);
            return TC_ACT_SHOT;
        }
    };
    // Later fragments carry no ports.
    if p.frag == FRAG_LATER
        || (p.proto != PROTO_TCP && p.proto != PROTO_UDP)
    {
        return TC_ACT_OK;
    }
    let key = ServiceKey {
        vip: p.daddr,
        port: p.dport,
        proto: p.proto,
        family: p.family,
    };
    let svc = match unsafe { WEFT_SERVICES.get(&key) } {
        Some(s) => *s,
        None => return TC_ACT_OK,
    };
    let cfg = config();
    let now = unsafe { bpf_ktime_get_ns() };
    let fwd = lb_ct_key(&p, LB_CT_FORWARD);
    // Established: stay on the backend chosen at the first packet while it exists.
    let mut chosen: Option<(u32, BackendValue)> = None;
    if let Some(e) = WEFT_LB_CT.get_ptr_mut(&fwd) {
        let entry = unsafe { *e };
        let timeout = if p.proto == PROTO_TCP {
            cfg.ct_tcp_timeout_s
        } else {
            cfg.ct_udp_timeout_s
        } as u64;
        if now.saturating_sub(entry.last_seen_ns) <= timeout * NS_PER_S {
            if let Some(b) = unsafe { WEFT_BACKENDS.get(&entry.backend_id) } {
                unsafe { (*e).last_seen_ns = now };
                chosen = Some((entry.backend_id, *b));
            }
        }
    }
    let (backend_id, b) = match chosen {
        Some(c) => c,
        None => {
            if svc.count == 0 {
                return lb_drop(&p, &cfg, DROP_NO_BACKEND, OBS_UPLINK_INGRESS, svc.svc_id);
            }
            let client = fold(&p.saddr) as u64;
            let id = if svc.flags & SVC_F_AFFINITY != 0 {
                select_backend(&svc, client, &cfg, now)
            } else if svc.flags & SVC_F_MAGLEV != 0 {
                let m = svc.maglev_m as u64;
                match unsafe { WEFT_MAGLEV.get(&svc.svc_id) } {
                    Some(t) if m > 0 => {
                        let idx = (tuple_hash(cfg.hash_seed, &p) % m) as usize;
                        if idx < MAGLEV_MAX_M {
                            Some(t.backends[idx])
                        } else {
                            None
                        }
                    }
                    _ => None,
                }
            } else {
                select_backend(&svc, client, &cfg, now)
            };
            let b = match id {
                Some(id) => unsafe { WEFT_BACKENDS.get(&id) }.map(|b| (id, *b)),
                None => None,
            };
            let Some((id, b)) = b else {
                return lb_drop(&p, &cfg, DROP_NO_BACKEND, OBS_UPLINK_INGRESS, svc.svc_id);
            };
            let v = LbCtValue {
                last_seen_ns: now,
                addr: b.addr,
                port: b.port,
                _pad: [0; 2],
                backend_id: id,
                svc_id: svc.svc_id,
                _pad2: 0,
            };
            let rev = CtKey {
                saddr: b.addr,
                daddr: p.saddr,
                sport: b.port,
                dport: p.sport,
                proto: p.proto,
                family: p.family,
                dir: LB_CT_REVERSE,
                _pad: 0,
            };
            let rv = LbCtValue {
                addr: p.daddr,
                port: p.dport,
                ..v
            };
            // Reverse first: a reply can never arrive before it is translatable.
            if WEFT_LB_CT.insert(&rev, &rv, 0).is_err() || WEFT_LB_CT.insert(&fwd, &v, 0).is_err() {
                return lb_drop(&p, &cfg, DROP_CT_FULL, OBS_UPLINK_INGRESS, svc.svc_id);
            }
            if cfg.event_flags & EVENTS_ON_TRANSLATE != 0 {
                emit(
                    &p,
                    &EventInfo {
                        verdict: VERDICT_TRANSLATED,
                        reason: DROP_NONE,
                        direction: DIR_INGRESS,
                        obs: OBS_UPLINK_INGRESS,
                        ep_id: 0,
                        src_identity: IDENTITY_WORLD,
                        dst_identity: svc.svc_id,
                    },
                );
            }
            (id, b)
        }
    };
    let _ = backend_id;
    if let Err(reason) = rewrite(ctx, &p, true, &b.addr, b.port) {
        return lb_drop(&p, &cfg, reason, OBS_UPLINK_INGRESS, svc.svc_id);
    }
    count(VERDICT_TRANSLATED, DROP_NONE, p.bytes as u64);
    TC_ACT_OK
}

/// Backend -> client replies: SNAT back to the VIP.
#[inline(always)]
pub(crate) fn lb_egress(ctx: &mut TcContext) -> i32 {
    let mut p = Pkt::default();
    if parse(ctx, &mut p) != Ok(Parsed::Ip) || p.frag == FRAG_LATER {
        return TC_ACT_OK;
    }
    let rev = lb_ct_key(&p, LB_CT_REVERSE);
    let Some(e) = WEFT_LB_CT.get_ptr_mut(&rev) else {
        return TC_ACT_OK;
    };
    let v = unsafe { *e };
    unsafe { (*e).last_seen_ns = bpf_ktime_get_ns() };
    if rewrite(ctx, &p, false, &v.addr, v.port).is_err() {
        count(VERDICT_DROPPED, DROP_INVALID_PACKET, p.bytes as u64);
        return TC_ACT_SHOT;
    }
    count(VERDICT_TRANSLATED, DROP_NONE, p.bytes as u64);
    TC_ACT_OK
}
