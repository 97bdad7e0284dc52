//! Socket-level (east-west) load balancing on a cgroup v2: VIP:port -> backend at
//! connect/sendmsg, and the VIP shown back to recvmsg/getpeername of translated sockets.
//! One code path for both families: the `4` and `6` hooks differ only in where the
//! address sits in `bpf_sock_addr` (`user_ip4` or the four words of `user_ip6`).

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockAddrContext,
    EbpfContext,
};
use weft_datapath_common::*;

use crate::events::{config, count, lost_event};
use crate::lb::select_backend;
use crate::maps::{WEFT_BACKENDS, WEFT_EVENTS, WEFT_SERVICES, WEFT_SOCK_REVNAT};

/// The address the socket call names, in the family of the hook.
#[inline(always)]
fn user_addr(sa: &bpf_sock_addr, family: u8) -> Addr {
    if family == FAMILY_IPV6 {
        // Word by word: the context allows 4-byte accesses to `user_ip6`.
        let w = |i: usize| unsafe { core::ptr::read_volatile(&sa.user_ip6[i]) }.to_ne_bytes();
        let (a, b, c, d) = (w(0), w(1), w(2), w(3));
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    } else {
        addr_v4(sa.user_ip4.to_ne_bytes())
    }
}

/// Rewrites the address the socket call names.
#[inline(always)]
fn set_user_addr(sa: &mut bpf_sock_addr, family: u8, a: &Addr) {
    if family == FAMILY_IPV6 {
        for i in 0..4 {
            let w = u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]);
            unsafe { core::ptr::write_volatile(&mut sa.user_ip6[i], w) };
        }
    } else {
        sa.user_ip4 = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
    }
}

/// An IPv4 address in IPv6 form (`::ffff:a.b.c.d`), as a dual-stack IPv6 socket names it.
#[inline(always)]
fn v4_mapped(a: &Addr) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[inline(always)]
fn is_v4_mapped(a: &Addr) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

#[inline(always)]
fn sock_event(
    sa: &bpf_sock_addr,
    family: u8,
    verdict: u8,
    reason: u8,
    obs: u8,
    svc_id: u32,
    orig: (Addr, u16),
) {
    match WEFT_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            entry.write(FlowEvent {
                ts_ns: unsafe { bpf_ktime_get_ns() },
                bytes: 0,
                saddr: [0; 16],
                daddr: if verdict == VERDICT_TRANSLATED {
                    user_addr(sa, family)
                } else {
                    orig.0
                },
                sport: 0,
                dport: if verdict == VERDICT_TRANSLATED {
                    u16::from_be(sa.user_port as u16)
                } else {
                    u16::from_be(orig.1)
                },
                proto: sa.protocol as u8,
                family,
                verdict,
                drop_reason: reason,
                direction: DIR_EGRESS,
                obs_point: obs,
                tcp_flags: 0,
                _pad: 0,
                ep_id: 0,
                src_identity: 0,
                dst_identity: 0,
                svc_id,
                _pad2: 0,
            });
            entry.submit(0);
        }
        None => lost_event(),
    }
}

/// VIP -> backend translation for connect/sendmsg of `family`. Returns 1 (continue) or 0
/// (reject).
#[inline(always)]
pub(crate) fn sock_translate(ctx: &SockAddrContext, family: u8, obs: u8) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let named = user_addr(sa, family);
    // An IPv6 socket naming an IPv4 address (`::ffff:10.96.0.10`) reaches the IPv4 service.
    let mapped = family == FAMILY_IPV6 && is_v4_mapped(&named);
    let (svc_family, vip) = if mapped {
        (
            FAMILY_IPV4,
            addr_v4([named[12], named[13], named[14], named[15]]),
        )
    } else {
        (family, named)
    };
    let vport = sa.user_port as u16;
    let proto = sa.protocol as u8;
    let key = ServiceKey {
        vip,
        port: vport,
        proto,
        family: svc_family,
    };
    let svc = match unsafe { WEFT_SERVICES.get(&key) } {
        Some(s) => *s,
        None => return 1,
    };
    let cfg = config();
    // A service with no backend, or none selectable now: the connect fails here.
    let backend = if svc.count == 0 {
        None
    } else {
        let now = unsafe { bpf_ktime_get_ns() };
        let client = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        select_backend(&svc, client, &cfg, now)
            .and_then(|id| unsafe { WEFT_BACKENDS.get(&id) }.copied())
    };
    let Some(b) = backend else {
        count(VERDICT_DROPPED, DROP_NO_BACKEND, 0);
        if cfg.event_flags & EVENTS_ON_DROP != 0 {
            sock_event(
                sa,
                family,
                VERDICT_DROPPED,
                DROP_NO_BACKEND,
                obs,
                svc.svc_id,
                (named, vport),
            );
        }
        return 0;
    };
    if b.family != svc_family {
        // The agent writes one family per service; a mix would be its bug, never a rewrite.
        count(VERDICT_DROPPED, DROP_INTERNAL, 0);
        return 0;
    }
    let to = if mapped { v4_mapped(&b.addr) } else { b.addr };
    set_user_addr(sa, family, &to);
    sa.user_port = b.port as u32;
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = WEFT_SOCK_REVNAT.insert(
        &SockRevNatKey {
            cookie,
            addr: to,
            port: b.port,
            family,
            _pad: [0; 5],
        },
        &SockRevNatValue {
            vip: named,
            port: vport,
            _pad: [0; 2],
            svc_id: svc.svc_id,
        },
        0,
    );
    count(VERDICT_TRANSLATED, DROP_NONE, 0);
    if cfg.event_flags & EVENTS_ON_TRANSLATE != 0 {
        sock_event(
            sa,
            family,
            VERDICT_TRANSLATED,
            DROP_NONE,
            obs,
            svc.svc_id,
            (named, vport),
        );
    }
    1
}

/// Backend -> VIP for recvmsg/getpeername of `family` on sockets we translated.
#[inline(always)]
pub(crate) fn sock_reverse(ctx: &SockAddrContext, family: u8) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = SockRevNatKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: user_addr(sa, family),
        port: sa.user_port as u16,
        family,
        _pad: [0; 5],
    };
    if let Some(v) = unsafe { WEFT_SOCK_REVNAT.get(&key) } {
        let (vip, port) = (v.vip, v.port);
        set_user_addr(sa, family, &vip);
        sa.user_port = port as u32;
    }
    1
}
