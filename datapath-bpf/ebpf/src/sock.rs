//! Socket-level (east-west) load balancing on a cgroup v2: VIP:port -> backend at
//! connect/sendmsg, and the VIP shown back to recvmsg/getpeername of translated sockets.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockAddrContext,
    EbpfContext,
};
use weft_datapath_common::*;

use crate::events::{config, count, lost_event};
use crate::lb::select_backend;
use crate::maps::{WEFT_BACKENDS, WEFT_EVENTS, WEFT_SERVICES, WEFT_SOCK_REVNAT};

#[inline(always)]
fn sock_event(
    sa: &aya_ebpf::bindings::bpf_sock_addr,
    verdict: u8,
    reason: u8,
    obs: u8,
    svc_id: u32,
    orig: (Addr, u16),
) {
    match WEFT_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            let ip = sa.user_ip4.to_ne_bytes();
            entry.write(FlowEvent {
                ts_ns: unsafe { bpf_ktime_get_ns() },
                bytes: 0,
                saddr: [0; 16],
                daddr: if verdict == VERDICT_TRANSLATED {
                    addr_v4(ip)
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
                family: FAMILY_IPV4,
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

/// VIP -> backend translation for connect4/sendmsg4. Returns 1 (continue) or 0 (reject).
#[inline(always)]
pub(crate) fn sock_translate(ctx: &SockAddrContext, obs: u8) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let vip = addr_v4(sa.user_ip4.to_ne_bytes());
    let vport = sa.user_port as u16;
    let proto = sa.protocol as u8;
    let key = ServiceKey {
        vip,
        port: vport,
        proto,
        family: FAMILY_IPV4,
    };
    let svc = match unsafe { WEFT_SERVICES.get(&key) } {
        Some(s) => *s,
        None => return 1,
    };
    let cfg = config();
    if svc.count == 0 {
        count(VERDICT_DROPPED, DROP_NO_BACKEND, 0);
        if cfg.event_flags & EVENTS_ON_DROP != 0 {
            sock_event(
                sa,
                VERDICT_DROPPED,
                DROP_NO_BACKEND,
                obs,
                svc.svc_id,
                (vip, vport),
            );
        }
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let client = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let backend = match select_backend(&svc, client, &cfg, now) {
        Some(id) => unsafe { WEFT_BACKENDS.get(&id) }.copied(),
        None => None,
    };
    let b = match backend {
        Some(b) => b,
        None => {
            count(VERDICT_DROPPED, DROP_NO_BACKEND, 0);
            if cfg.event_flags & EVENTS_ON_DROP != 0 {
                sock_event(
                    sa,
                    VERDICT_DROPPED,
                    DROP_NO_BACKEND,
                    obs,
                    svc.svc_id,
                    (vip, vport),
                );
            }
            return 0;
        }
    };
    sa.user_ip4 = u32::from_ne_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]);
    sa.user_port = b.port as u32;
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = WEFT_SOCK_REVNAT.insert(
        &SockRevNatKey {
            cookie,
            addr: b.addr,
            port: b.port,
            family: FAMILY_IPV4,
            _pad: [0; 5],
        },
        &SockRevNatValue {
            vip,
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
            VERDICT_TRANSLATED,
            DROP_NONE,
            obs,
            svc.svc_id,
            (vip, vport),
        );
    }
    1
}

/// Backend -> VIP for recvmsg4/getpeername4 of sockets we translated.
#[inline(always)]
pub(crate) fn sock_reverse(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = SockRevNatKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: addr_v4(sa.user_ip4.to_ne_bytes()),
        port: sa.user_port as u16,
        family: FAMILY_IPV4,
        _pad: [0; 5],
    };
    if let Some(v) = unsafe { WEFT_SOCK_REVNAT.get(&key) } {
        sa.user_ip4 = u32::from_ne_bytes([v.vip[0], v.vip[1], v.vip[2], v.vip[3]]);
        sa.user_port = v.port as u32;
    }
    1
}
