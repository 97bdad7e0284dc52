//! Hand-off to the agent's L7 proxy, which listens in the node's own namespace.
//!
//! A connection that hits a policy entry with L7 rules is delivered to the proxy socket of
//! that entry's rule set (`proxy_port`) with its addresses unchanged: the proxy's listener
//! is transparent (`IP_TRANSPARENT`), so the accepted socket's local address is the
//! original destination (UDP: the DNS proxy reads it with `IP_ORIGDSTADDR`). The packet keeps `MARK_PROXY | port << 16`, which the agent's
//! policy routing rule in the node namespace routes to the local table (a socket assigned
//! to a packet only takes it when the packet is delivered locally).
//! - Egress rules: `weft_from_endpoint` runs at tc ingress and assigns the socket itself.
//! - Ingress rules: `weft_to_endpoint` runs at tc egress, where no socket can be assigned;
//!   it redirects the packet into the ingress of the node's proxy device, whose
//!   `weft_to_proxy` assigns it.

use aya_ebpf::{
    bindings::{
        bpf_sock, bpf_sock_tuple, BPF_F_CURRENT_NETNS, BPF_F_INGRESS, BPF_TCP_LISTEN,
        BPF_TCP_TIME_WAIT, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    helpers::{
        bpf_redirect, bpf_sk_assign, bpf_sk_lookup_udp, bpf_sk_release, bpf_skb_change_type,
        bpf_skc_lookup_tcp,
    },
    programs::TcContext,
    EbpfContext,
};
use weft_datapath_common::*;

use crate::events::count;
use crate::parse::{parse, Parsed, Pkt};

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// `PACKET_HOST`: a packet redirected into the proxy device was addressed to an endpoint's
/// MAC; without this the IP layer would discard it as meant for another host.
const PACKET_HOST: u32 = 0;

fn fail(p: &Pkt) -> i32 {
    count(VERDICT_DROPPED, DROP_INTERNAL, p.bytes as u64);
    TC_ACT_SHOT
}

/// The lookup tuple of `p` with destination port `dport`, and its size.
#[inline(always)]
fn tuple(p: &Pkt, dport: u16) -> (bpf_sock_tuple, u32) {
    // SAFETY: a zeroed tuple is valid for both of the union's members.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if p.family == FAMILY_IPV6 {
        // SAFETY: writing the IPv6 member of a union of plain integers.
        unsafe {
            let v6 = &mut t.__bindgen_anon_1.ipv6;
            v6.saddr = core::mem::transmute::<[u8; 16], [u32; 4]>(p.saddr);
            v6.daddr = core::mem::transmute::<[u8; 16], [u32; 4]>(p.daddr);
            v6.sport = p.sport;
            v6.dport = dport;
            core::mem::size_of_val(v6) as u32
        }
    } else {
        // SAFETY: writing the IPv4 member of a union of plain integers.
        unsafe {
            let v4 = &mut t.__bindgen_anon_1.ipv4;
            v4.saddr = u32::from_ne_bytes([p.saddr[0], p.saddr[1], p.saddr[2], p.saddr[3]]);
            v4.daddr = u32::from_ne_bytes([p.daddr[0], p.daddr[1], p.daddr[2], p.daddr[3]]);
            v4.sport = p.sport;
            v4.dport = dport;
            core::mem::size_of_val(v4) as u32
        }
    };
    (t, size)
}

/// Looks up the socket for `p` in this namespace: the tuple as it is (`dport` = the
/// original destination's) finds an established proxy connection; with `dport` = the
/// proxy port, the listener (a new connection). The caller releases what it gets.
#[inline(always)]
fn lookup(ctx: &TcContext, p: &Pkt, dport: u16, established: bool) -> Option<*mut bpf_sock> {
    let (mut t, size) = tuple(p, dport);
    // SAFETY: a valid tuple of the size given; the context is a valid __sk_buff.
    let sk = unsafe {
        bpf_skc_lookup_tcp(ctx.as_ptr(), &mut t, size, BPF_F_CURRENT_NETNS as u64, 0)
    };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket the helper returned (released below or by the caller).
    let state = unsafe { (*sk).state };
    let wanted = if established {
        state != BPF_TCP_LISTEN && state != BPF_TCP_TIME_WAIT
    } else {
        state == BPF_TCP_LISTEN
    };
    if !wanted {
        // SAFETY: releasing the reference the lookup took.
        unsafe { bpf_sk_release(sk as *mut _) };
        return None;
    }
    Some(sk)
}

/// The UDP socket bound to `proxy_port` (the DNS proxy's: every datagram goes to it,
/// which reads the original destination from the packet). The caller releases it.
#[inline(always)]
fn lookup_udp(ctx: &TcContext, p: &Pkt, proxy_port: u16) -> Option<*mut bpf_sock> {
    let (mut t, size) = tuple(p, proxy_port.to_be());
    // SAFETY: a valid tuple of the size given; the context is a valid __sk_buff.
    let sk = unsafe {
        bpf_sk_lookup_udp(ctx.as_ptr(), &mut t, size, BPF_F_CURRENT_NETNS as u64, 0)
    };
    if sk.is_null() {
        None
    } else {
        Some(sk)
    }
}

/// Assigns the proxy's socket for this packet (TCP: its connection's, else the listener on
/// `proxy_port`; UDP: the socket on `proxy_port`) and marks it for local delivery. Only at
/// tc ingress.
#[inline(always)]
fn assign(ctx: &mut TcContext, p: &Pkt, proxy_port: u16) -> i32 {
    let found = match p.proto {
        PROTO_TCP => match lookup(ctx, p, p.dport, true) {
            Some(sk) => Some(sk),
            None => lookup(ctx, p, proxy_port.to_be(), false),
        },
        // DNS rules (UDP is only ever redirected for them).
        PROTO_UDP => lookup_udp(ctx, p, proxy_port),
        // Nothing else is ever redirected.
        _ => None,
    };
    let Some(sk) = found else {
        // No proxy listening: fail closed.
        return fail(p);
    };
    // SAFETY: a socket reference from the lookup, released right after.
    let ret = unsafe {
        let r = bpf_sk_assign(ctx.as_ptr(), sk as *mut _, 0);
        bpf_sk_release(sk as *mut _);
        r
    };
    if ret != 0 {
        return fail(p);
    }
    ctx.set_mark(MARK_PROXY | ((proxy_port as u32) << 16));
    TC_ACT_OK
}

/// Hands an allowed packet of an L7-checked connection to the proxy (see the module doc).
#[inline(always)]
pub(crate) fn redirect(ctx: &mut TcContext, p: &Pkt, dir: u8, proxy_port: u16, cfg: &Config) -> i32 {
    if dir == DIR_EGRESS {
        let r = assign(ctx, p, proxy_port);
        if r == TC_ACT_OK {
            count(VERDICT_REDIRECTED, DROP_NONE, p.bytes as u64);
        }
        return r;
    }
    if cfg.proxy_ifindex == 0 {
        return fail(p);
    }
    ctx.set_mark(MARK_PROXY | ((proxy_port as u32) << 16));
    count(VERDICT_REDIRECTED, DROP_NONE, p.bytes as u64);
    // SAFETY: plain helper call.
    let r = unsafe { bpf_redirect(cfg.proxy_ifindex, BPF_F_INGRESS as u64) };
    if r == TC_ACT_REDIRECT as i64 {
        TC_ACT_REDIRECT
    } else {
        fail(p)
    }
}

/// `weft_to_proxy`: a packet `weft_to_endpoint` redirected into the proxy device.
#[inline(always)]
pub(crate) fn to_proxy(ctx: &mut TcContext) -> i32 {
    let mut p = Pkt::default();
    if !matches!(parse(ctx, &mut p), Ok(Parsed::Ip)) {
        return TC_ACT_SHOT;
    }
    // SAFETY: the context of a tc program is a valid __sk_buff.
    let mark = unsafe { (*(ctx.as_ptr() as *const aya_ebpf::bindings::__sk_buff)).mark };
    let Some(port) = proxy_port_of_mark(mark) else {
        return fail(&p);
    };
    // SAFETY: the context of a tc program is a valid __sk_buff.
    if unsafe { bpf_skb_change_type(ctx.as_ptr() as *mut _, PACKET_HOST) } != 0 {
        return fail(&p);
    }
    assign(ctx, &p, port)
}
