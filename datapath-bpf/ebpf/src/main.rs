//! Weft's eBPF datapath.
//!
//! - `weft_from_endpoint` / `weft_to_endpoint`: tc programs on an endpoint's host-side veth
//!   (ingress hook = packets the endpoint sends, egress hook = packets it receives): identity
//!   policy with conntrack, flow events and per-CPU counters.
//! - `weft_connect4` / `weft_sendmsg4` / `weft_recvmsg4` / `weft_getpeername4` and their `6`
//!   twins: socket-level east-west load balancing on a cgroup v2 (VIP:port -> backend at
//!   connect time), IPv4 and IPv6.
//! - `weft_lb_ingress` / `weft_lb_egress`: north-south load balancing on the node's uplink.
//! - `weft_to_tunnel` / `weft_from_tunnel`: tc programs on the node's VXLAN device that
//!   carry the source endpoint's identity in the VNI (identity on the wire).
//! - `weft_to_proxy`: tc ingress on the node's L7 proxy device: hands connections that
//!   endpoints' ingress L7 rules redirect to the agent's proxy socket (see `proxy`).
//! - `weft_pass`: tc pass-through (benchmark floor).
//!
//! Fail closed: any classification error drops the packet and counts the drop.
//!
//! The entry points live here; the modules hold what they share: `maps` (every map, named as
//! the agent looks them up), `parse`, `policy`, `conntrack`, `events` (config, counters, flow
//! events), `endpoint` (the endpoint programs' packet path), `lb` (backend selection and the
//! uplink LB), `sock` (socket-level LB), `tunnel` (identity on the wire).
#![no_std]
#![no_main]

mod conntrack;
mod endpoint;
mod events;
mod lb;
mod maps;
mod parse;
mod policy;
mod proxy;
mod sock;
mod tunnel;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use weft_datapath_common::{
    FAMILY_IPV4, FAMILY_IPV6, OBS_FROM_ENDPOINT, OBS_SOCK_CONNECT, OBS_SOCK_SENDMSG,
    OBS_TO_ENDPOINT,
};

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// ---- endpoint policy (tc on the endpoint's host-side veth) ----

#[classifier]
pub fn weft_from_endpoint(mut ctx: TcContext) -> i32 {
    endpoint::handle(&mut ctx, OBS_FROM_ENDPOINT)
}

#[classifier]
pub fn weft_to_endpoint(mut ctx: TcContext) -> i32 {
    endpoint::handle(&mut ctx, OBS_TO_ENDPOINT)
}

// ---- identity on the wire (tc on the node's VXLAN device) ----

#[classifier]
pub fn weft_to_tunnel(mut ctx: TcContext) -> i32 {
    tunnel::to_tunnel(&mut ctx)
}

#[classifier]
pub fn weft_from_tunnel(mut ctx: TcContext) -> i32 {
    tunnel::from_tunnel(&mut ctx)
}

// ---- L7 proxy hand-off (tc ingress on the node's proxy device) ----

#[classifier]
pub fn weft_to_proxy(mut ctx: TcContext) -> i32 {
    proxy::to_proxy(&mut ctx)
}

#[classifier]
pub fn weft_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

// ---- socket-level load balancing (cgroup v2 sock_addr) ----

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    sock::sock_translate(&ctx, FAMILY_IPV4, OBS_SOCK_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn weft_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::sock_translate(&ctx, FAMILY_IPV4, OBS_SOCK_SENDMSG)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn weft_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::sock_reverse(&ctx, FAMILY_IPV4)
}

#[cgroup_sock_addr(getpeername4)]
pub fn weft_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::sock_reverse(&ctx, FAMILY_IPV4)
}

#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    sock::sock_translate(&ctx, FAMILY_IPV6, OBS_SOCK_CONNECT)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn weft_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::sock_translate(&ctx, FAMILY_IPV6, OBS_SOCK_SENDMSG)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn weft_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::sock_reverse(&ctx, FAMILY_IPV6)
}

#[cgroup_sock_addr(getpeername6)]
pub fn weft_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::sock_reverse(&ctx, FAMILY_IPV6)
}

// ---- north-south load balancing on the uplink (tc) ----

#[classifier]
pub fn weft_lb_ingress(mut ctx: TcContext) -> i32 {
    lb::lb_ingress(&mut ctx)
}

#[classifier]
pub fn weft_lb_egress(mut ctx: TcContext) -> i32 {
    lb::lb_egress(&mut ctx)
}
