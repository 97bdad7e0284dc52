//! Shared helpers of the datapath integration tests.
#![allow(dead_code)]

use node_agent::datapath::{Datapath, DatapathConfig};
use node_agent::netns::PinDir;
use std::net::Ipv4Addr;

pub use weft_testkit::bpf::bpf_available;
#[allow(unused_imports)] // only the pod-to-pod tests use them
pub use weft_testkit::netns::{tcp_from, udp_from};

/// Loads the datapath with its maps pinned under a fresh per-run directory.
pub fn load(pins: &PinDir) -> Datapath {
    Datapath::load(DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        ..DatapathConfig::default()
    })
    .expect("load datapath")
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;

/// Builds an Ethernet + IPv4 + TCP/UDP/SCTP/ICMP frame.
pub fn packet(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
) -> Vec<u8> {
    let l4: Vec<u8> = match proto {
        6 => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[12] = 5 << 4;
            t[13] = tcp_flags;
            t[14..16].copy_from_slice(&1024u16.to_be_bytes());
            t
        }
        17 => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&8u16.to_be_bytes());
            u
        }
        132 => {
            // SCTP common header (ports, verification tag, checksum) + an INIT chunk header.
            let mut s = vec![0u8; 16];
            s[0..2].copy_from_slice(&sport.to_be_bytes());
            s[2..4].copy_from_slice(&dport.to_be_bytes());
            s[12] = 1;
            s[14..16].copy_from_slice(&4u16.to_be_bytes());
            s
        }
        _ => {
            // ICMP: type = dport, echo id = sport
            let mut i = vec![0u8; 8];
            i[0] = dport as u8;
            i[4..6].copy_from_slice(&sport.to_be_bytes());
            i
        }
    };
    let mut p = vec![0u8; 14];
    p[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    p[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&l4);
    p
}

/// Builds an Ethernet + IPv6 + TCP/UDP/ICMPv6 frame (ICMPv6: type = dport, echo id = sport).
pub fn packet6(
    proto: u8,
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
) -> Vec<u8> {
    let v4 = packet(
        if proto == 58 { 1 } else { proto },
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        sport,
        dport,
        tcp_flags,
    );
    let l4 = &v4[34..];
    let mut p = vec![0u8; 14];
    p[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    ip[6] = proto;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(&ip);
    p.extend_from_slice(l4);
    p
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

use node_agent::datapath::{Endpoint, PolicyEntry};
use node_agent::netns::Topology;

/// Loads the datapath and attaches the policy programs to every pod's host-side veth (from
/// inside the node namespace, where the interfaces live).
pub fn attach_all(dp: &Datapath, topo: &Topology) {
    let _in_node = topo.node.enter().expect("enter node namespace");
    for pod in &topo.pods {
        dp.attach_endpoint_interface(&pod.host_if)
            .expect("attach tc");
    }
}

pub fn endpoint(
    id: u32,
    topo: &Topology,
    identity: u32,
    enforce_ingress: bool,
    enforce_egress: bool,
) -> Endpoint {
    Endpoint {
        id,
        ip: topo.pods[id as usize - 1].ip,
        ip6: None,
        identity,
        ifindex: 0,
        enforce_ingress,
        enforce_egress,
    }
}

/// Pod `i + 1` of `topo` as endpoint `i + 1`, with `(identity, enforce_ingress,
/// enforce_egress)` from `pods[i]`.
pub fn apply_endpoints(dp: &mut Datapath, topo: &Topology, pods: &[(u32, bool, bool)]) {
    for (i, &(identity, ingress, egress)) in pods.iter().enumerate() {
        dp.apply_endpoint(&endpoint(i as u32 + 1, topo, identity, ingress, egress))
            .expect("apply endpoint");
    }
}

pub fn rule(
    direction: node_agent::datapath::Direction,
    peer: Option<u32>,
    proto: u8,
    port: u16,
) -> PolicyEntry {
    PolicyEntry {
        direction,
        peer_identity: peer,
        proto: Some(proto),
        ports: Some((port, port)),
        action: node_agent::datapath::Action::Allow,
        rule_id: 1,
    }
}
