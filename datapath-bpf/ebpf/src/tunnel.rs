//! Identity on the wire: the tunnel programs on the node's VXLAN device carry the source
//! endpoint's security identity in the VNI, as Cilium does, so the receiving node judges a
//! packet by who sent it, also before its ipcache knows the sender's address.
//!
//! - `weft_to_tunnel` (egress): a packet that `weft_from_endpoint` marked with its
//!   endpoint's identity leaves with that identity as VNI, to the remote the route chose.
//! - `weft_from_tunnel` (ingress): a VNI that is an allocated identity, from an outer
//!   source that is a node of the cluster (the ipcache says `remote-node`), becomes the
//!   packet's identity mark for `weft_to_endpoint`. Anything else carries no identity: the
//!   source address is looked up as for any packet (a pod cannot name an identity by
//!   sending VXLAN to a node itself).

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{bpf_tunnel_key, BPF_F_ZERO_CSUM_TX, TC_ACT_OK},
    helpers::{bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    programs::TcContext,
    EbpfContext,
};
use weft_datapath_common::*;

use crate::policy::peer_identity_of;

fn mark_of(ctx: &TcContext) -> u32 {
    // SAFETY: the context of a tc program is a valid __sk_buff.
    unsafe { (*(ctx.as_ptr() as *const aya_ebpf::bindings::__sk_buff)).mark }
}

/// The tunnel key the packet carries (egress: the route's, ingress: the received one).
fn tunnel_key(ctx: &TcContext) -> Option<bpf_tunnel_key> {
    // SAFETY: a zeroed plain C struct; the helper writes at most its size.
    let mut key: bpf_tunnel_key = unsafe { zeroed() };
    let rc = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.as_ptr() as *mut _,
            &mut key,
            size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    (rc == 0).then_some(key)
}

pub(crate) fn to_tunnel(ctx: &mut TcContext) -> i32 {
    let Some(id) = identity_of_mark(mark_of(ctx)) else {
        return TC_ACT_OK;
    };
    // No tunnel info: not routed through the tunnel; the device drops it.
    let Some(mut key) = tunnel_key(ctx) else {
        return TC_ACT_OK;
    };
    key.tunnel_id = id;
    // The helper reads a key as received: its "remote" is the info's source and its
    // "local" the destination. This one is the route's, to be sent: swap them back.
    // SAFETY: IPv4 keys (the device is IPv4): the unions hold the IPv4 fields.
    unsafe {
        let (src, dst) = (key.__bindgen_anon_1.remote_ipv4, key.__bindgen_anon_3.local_ipv4);
        key.__bindgen_anon_1.remote_ipv4 = dst;
        key.__bindgen_anon_3.local_ipv4 = src;
    }
    // SAFETY: a valid key of the size given.
    unsafe {
        bpf_skb_set_tunnel_key(
            ctx.as_ptr() as *mut _,
            &mut key,
            size_of::<bpf_tunnel_key>() as u32,
            BPF_F_ZERO_CSUM_TX as u64,
        )
    };
    ctx.set_mark(0);
    TC_ACT_OK
}

pub(crate) fn from_tunnel(ctx: &mut TcContext) -> i32 {
    let mut mark = 0;
    if let Some(key) = tunnel_key(ctx) {
        let id = key.tunnel_id;
        // SAFETY: an IPv4 tunnel key (the device is IPv4): the union holds remote_ipv4,
        // in host byte order.
        let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes();
        let from_node =
            peer_identity_of(FAMILY_IPV4, &addr_v4(remote)) == IDENTITY_REMOTE_NODE;
        if from_node && (IDENTITY_FIRST_ALLOCATED..IDENTITY_CIDR_BASE).contains(&id) {
            mark = identity_mark(id);
        }
    }
    ctx.set_mark(mark);
    TC_ACT_OK
}
