//! The kernel program: no bypass, no collateral drops (issue 15, section 2). Program-level
//! cases run crafted frames with BPF_PROG_TEST_RUN; the others send real packets between
//! namespaces through the attached programs.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use common::*;
use node_agent::datapath::{Action, Datapath, Direction, Endpoint, PolicyEntry};
use node_agent::netns::{NetNs, PinDir, Topology};
use node_agent::tools::{self, Server};
use weft_datapath_common as c;

const FROM: &str = c::progs::FROM_ENDPOINT;
const TO: &str = c::progs::TO_ENDPOINT;
const T: Duration = Duration::from_millis(700);

const EP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const EP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 5);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);

fn run(dp: &Datapath, prog: &'static str, pkt: &[u8]) -> u32 {
    dp.test_run(prog, pkt, 1).expect("test run").retval
}

fn entry(dir: Direction, proto: u8, port: u16, action: Action) -> PolicyEntry {
    PolicyEntry {
        direction: dir,
        peer_identity: None,
        proto: Some(proto),
        ports: Some((port, port)),
        action,
        rule_id: 1,
    }
}

/// Endpoint 1 (10.0.1.1 and fd00:1::1) enforcing both directions; peers 10.0.2.5 and
/// fd00:2::5 have identity 2000.
fn setup(pins: &PinDir, enforce: bool) -> Datapath {
    let mut dp = load(pins);
    dp.apply_endpoint(&Endpoint {
        id: 1,
        ip: EP,
        ip6: Some(EP6),
        identity: 1001,
        ifindex: 0,
        enforce_ingress: enforce,
        enforce_egress: enforce,
    })
    .unwrap();
    dp.apply_ipcache_v4(PEER, 32, 2000).unwrap();
    dp.apply_ipcache_ip(PEER6.into(), 128, 2000).unwrap();
    dp
}

fn drops(dp: &Datapath, reason: u8) -> u64 {
    dp.counters().unwrap().packets(c::VERDICT_DROPPED, reason)
}

/// An IPv6 frame whose payload is `ext` (extension headers, their chain starting with
/// next header `first`) followed by the L4 header of `proto` (TCP SYN / ICMPv6 type = port).
fn v6_with_ext(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    first: u8,
    ext: &[u8],
    proto: u8,
    port: u16,
) -> Vec<u8> {
    let base = packet6(proto, src, dst, 40000, port, TCP_SYN);
    let l4 = &base[54..];
    let mut p = base[..54].to_vec();
    p[20] = first;
    let plen = (ext.len() + l4.len()) as u16;
    p[18..20].copy_from_slice(&plen.to_be_bytes());
    p.extend_from_slice(ext);
    p.extend_from_slice(l4);
    p
}

/// An 8-byte hop-by-hop / destination options / routing header (PadN) chaining to `next`.
fn opt8(next: u8) -> [u8; 8] {
    [next, 0, 1, 4, 0, 0, 0, 0]
}

/// A fragment header: `offset` in 8-byte units, `more` fragments, identification `id`.
fn frag6(next: u8, offset: u16, more: bool, id: u32) -> [u8; 8] {
    let o = (offset << 3) | u16::from(more);
    let i = id.to_be_bytes();
    [next, 0, (o >> 8) as u8, o as u8, i[0], i[1], i[2], i[3]]
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_ports() {
    if !bpf_available("ipv6_extension_headers_are_walked_to_the_ports") {
        return;
    }
    let pins = PinDir::create("exthdr").unwrap();
    let mut dp = setup(&pins, true);
    dp.apply_policy(1, &[entry(Direction::Ingress, 6, 80, Action::Allow)])
        .unwrap();
    // Hop-by-hop -> destination options -> routing -> TCP.
    let mut chain = Vec::new();
    chain.extend_from_slice(&opt8(60));
    chain.extend_from_slice(&opt8(43));
    chain.extend_from_slice(&opt8(6));
    assert_eq!(
        run(&dp, TO, &v6_with_ext(PEER6, EP6, 0, &chain, 6, 80)),
        TC_ACT_OK
    );
    assert_eq!(
        run(&dp, TO, &v6_with_ext(PEER6, EP6, 0, &chain, 6, 22)),
        TC_ACT_SHOT,
        "an extension header must not let port 22 through a port-80 rule"
    );
    // A first fragment carries the ports and is judged by them.
    let first = frag6(6, 0, true, 7);
    assert_eq!(
        run(&dp, TO, &v6_with_ext(PEER6, EP6, 44, &first, 6, 22)),
        TC_ACT_SHOT
    );
    assert_eq!(
        run(&dp, TO, &v6_with_ext(PEER6, EP6, 44, &first, 6, 80)),
        TC_ACT_OK
    );
    // Its later fragment follows it; a later fragment of a datagram never seen is dropped.
    let later = frag6(6, 8, false, 7);
    assert_eq!(
        run(&dp, TO, &v6_with_ext(PEER6, EP6, 44, &later, 6, 0)),
        TC_ACT_OK
    );
    let stray = frag6(6, 8, false, 8);
    assert_eq!(
        run(&dp, TO, &v6_with_ext(PEER6, EP6, 44, &stray, 6, 0)),
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, c::DROP_FRAGMENT), 1);
    // Nine extension headers: more than the walk follows: dropped, never judged portless.
    let mut long = Vec::new();
    for _ in 0..8 {
        long.extend_from_slice(&opt8(60));
    }
    long.extend_from_slice(&opt8(6));
    assert_eq!(
        run(&dp, TO, &v6_with_ext(PEER6, EP6, 60, &long, 6, 80)),
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, c::DROP_INVALID_PACKET), 1);
}

#[test]
fn ipv6_neighbour_discovery_and_mld_pass_and_peers_keep_their_identity() {
    if !bpf_available("ipv6_neighbour_discovery_and_mld_pass_and_peers_keep_their_identity") {
        return;
    }
    let pins = PinDir::create("nd").unwrap();
    let mut dp = setup(&pins, true);
    // Only identity 2000 may reach port 80; world may reach everything but port 80.
    dp.apply_policy(
        1,
        &[
            PolicyEntry {
                peer_identity: Some(2000),
                ..entry(Direction::Ingress, 6, 80, Action::Allow)
            },
            PolicyEntry {
                peer_identity: Some(c::IDENTITY_WORLD),
                proto: Some(6),
                ports: None,
                ..entry(Direction::Ingress, 6, 0, Action::Allow)
            },
            PolicyEntry {
                peer_identity: Some(c::IDENTITY_WORLD),
                ..entry(Direction::Ingress, 6, 80, Action::Deny)
            },
        ],
    )
    .unwrap();
    let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9);
    // Neighbour solicitation (135) and an MLDv2 report (143) behind a hop-by-hop header.
    assert_eq!(run(&dp, FROM, &packet6(58, EP6, ll, 0, 135, 0)), TC_ACT_OK);
    assert_eq!(run(&dp, TO, &packet6(58, ll, EP6, 0, 136, 0)), TC_ACT_OK);
    let mld = v6_with_ext(EP6, "ff02::16".parse().unwrap(), 0, &opt8(58), 58, 143);
    assert_eq!(run(&dp, FROM, &mld), TC_ACT_OK);
    // The IPv6 peer has its identity (2000), not world's: port 80 passes.
    assert_eq!(
        run(&dp, TO, &packet6(6, PEER6, EP6, 40000, 80, TCP_SYN)),
        TC_ACT_OK
    );
    let world6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(
        run(&dp, TO, &packet6(6, world6, EP6, 40000, 80, TCP_SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, c::DROP_DENY_RULE), 1);
}

#[test]
fn sctp_ports_match_port_rules_and_denies() {
    if !bpf_available("sctp_ports_match_port_rules_and_denies") {
        return;
    }
    let pins = PinDir::create("sctp").unwrap();
    let mut dp = setup(&pins, true);
    dp.apply_policy(
        1,
        &[
            PolicyEntry {
                ports: Some((3000, 4000)),
                ..entry(Direction::Ingress, c::PROTO_SCTP, 0, Action::Allow)
            },
            entry(Direction::Ingress, c::PROTO_SCTP, 3868, Action::Deny),
        ],
    )
    .unwrap();
    let sctp = |port| packet(c::PROTO_SCTP, PEER, EP, 40000, port, 0);
    assert_eq!(
        run(&dp, TO, &sctp(3000)),
        TC_ACT_OK,
        "{:?}",
        dp.counters().unwrap()
    );
    assert_eq!(run(&dp, TO, &sctp(3868)), TC_ACT_SHOT);
    assert_eq!(run(&dp, TO, &sctp(4001)), TC_ACT_SHOT);
    assert_eq!(drops(&dp, c::DROP_DENY_RULE), 1);
    assert_eq!(drops(&dp, c::DROP_POLICY_DENIED), 1);
}

/// An IPv4 UDP fragment: `offset` in 8-byte units.
fn frag4(src: Ipv4Addr, dst: Ipv4Addr, id: u16, offset: u16, more: bool, dport: u16) -> Vec<u8> {
    let mut p = packet(17, src, dst, 40000, dport, 0);
    p[18..20].copy_from_slice(&id.to_be_bytes());
    let f = offset | if more { 0x2000 } else { 0 };
    p[20..22].copy_from_slice(&f.to_be_bytes());
    if offset != 0 {
        // No UDP header in a later fragment: make the payload look like another port.
        p[36..38].copy_from_slice(&9999u16.to_be_bytes());
    }
    p
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    if !bpf_available("later_fragments_follow_their_first_fragment") {
        return;
    }
    let pins = PinDir::create("frag").unwrap();
    let mut dp = setup(&pins, true);
    dp.apply_policy(1, &[entry(Direction::Ingress, 17, 5353, Action::Allow)])
        .unwrap();
    assert_eq!(run(&dp, TO, &frag4(PEER, EP, 1, 0, true, 5353)), TC_ACT_OK);
    assert_eq!(run(&dp, TO, &frag4(PEER, EP, 1, 185, true, 0)), TC_ACT_OK);
    assert_eq!(run(&dp, TO, &frag4(PEER, EP, 1, 370, false, 0)), TC_ACT_OK);
    // A denied first fragment: its later fragments are dropped too.
    assert_eq!(run(&dp, TO, &frag4(PEER, EP, 2, 0, true, 53)), TC_ACT_SHOT);
    assert_eq!(
        run(&dp, TO, &frag4(PEER, EP, 2, 185, false, 0)),
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, c::DROP_FRAGMENT), 1);
    // An endpoint without policy is never affected.
    let pins2 = PinDir::create("fragb").unwrap();
    let dp2 = setup(&pins2, false);
    assert_eq!(run(&dp2, TO, &frag4(PEER, EP, 3, 185, false, 0)), TC_ACT_OK);
}

#[test]
fn non_ip_frames_from_an_endpoint_are_dropped_except_arp() {
    if !bpf_available("non_ip_frames_from_an_endpoint_are_dropped_except_arp") {
        return;
    }
    let pins = PinDir::create("ltwo").unwrap();
    let dp = setup(&pins, false);
    let ip = packet(17, EP, PEER, 1, 2, 0);
    assert_eq!(
        run(&dp, FROM, &with_ethertype(&ip, 0x8847)),
        TC_ACT_SHOT,
        "MPLS"
    );
    assert_eq!(run(&dp, FROM, &vlan(&ip, 7)), TC_ACT_SHOT, "VLAN");
    assert_eq!(run(&dp, FROM, &arp(EP, PEER)), TC_ACT_OK, "ARP");
    assert_eq!(drops(&dp, c::DROP_UNSUPPORTED_L3), 2);
}

fn with_ethertype(frame: &[u8], ethertype: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f
}

/// The frame with an 802.1Q tag inserted.
fn vlan(frame: &[u8], id: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

fn arp(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

// ---------------------------------------------------------------------------------------
// Real packets between namespaces

/// Sends one raw Ethernet frame on `ifname` of `ns` (AF_PACKET).
fn send_raw(ns: &NetNs, ifname: &str, frame: Vec<u8>) {
    let ifname = ifname.to_string();
    ns.spawn(move || {
        let idx = node_agent::datapath::ifindex(&ifname).expect("ifindex");
        // SAFETY: plain socket syscalls on a socket owned here and closed below.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = idx as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
            let n = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            libc::close(fd);
            assert_eq!(n, frame.len() as isize, "raw send");
        }
    })
    .join()
    .expect("raw sender")
    .expect("enter the namespace");
    std::thread::sleep(Duration::from_millis(50));
}

/// Pods 1..=3 (identities 100, 200, 300), programs attached, interfaces bound.
fn topology(pins: &PinDir, enforce: [bool; 3]) -> (Topology, Datapath) {
    let topo = Topology::new(3).unwrap();
    let mut dp = load(pins);
    let ifindexes: Vec<u32> = {
        let _in_node = topo.node.enter().expect("enter node namespace");
        topo.pods
            .iter()
            .map(|p| dp.attach_endpoint_interface(&p.host_if).expect("attach"))
            .collect()
    };
    for (i, pod) in topo.pods.iter().enumerate() {
        dp.bind_endpoint_interface(pod.ip.into(), ifindexes[i])
            .unwrap();
        let id = i as u32 + 1;
        dp.apply_endpoint(&endpoint(id, &topo, 100 * id, enforce[i], enforce[i]))
            .unwrap();
    }
    (topo, dp)
}

fn udp_from(
    ns: &NetNs,
    bind: Option<Ipv4Addr>,
    to: SocketAddrV4,
    size: usize,
) -> std::io::Result<String> {
    ns.spawn(move || {
        let s = UdpSocket::bind((bind.unwrap_or(Ipv4Addr::UNSPECIFIED), 0))?;
        s.set_read_timeout(Some(T))?;
        s.send_to(&vec![b'x'; size], to)?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .join()
    .expect("client thread")?
}

#[test]
fn spoofed_sources_are_dropped_between_namespaces() {
    if !bpf_available("spoofed_sources_are_dropped_between_namespaces") {
        return;
    }
    let pins = PinDir::create("spoof").unwrap();
    let (topo, mut dp) = topology(&pins, [false, false, true]);
    // Pod 3 accepts UDP 5353 from pod 2 (identity 200) only.
    dp.apply_policy(
        3,
        &[rule(Direction::Ingress, Some(200), c::PROTO_UDP, 5353)],
    )
    .unwrap();
    let _srv = Server::udp(&topo.pods[2].ns, 5353, "c").unwrap();
    let c = SocketAddrV4::new(topo.pods[2].ip, 5353);
    assert_eq!(
        udp_from(&topo.pods[1].ns, None, c, 10).expect("b -> c"),
        "c\n"
    );
    assert!(
        udp_from(&topo.pods[0].ns, None, c, 10).is_err(),
        "a -> c denied"
    );
    // Pod 1 takes pod 2's address and sends from it: dropped at its own interface.
    let b = topo.pods[1].ip;
    topo.pods[0]
        .ns
        .ip(&["addr", "add", &format!("{b}/32"), "dev", "eth0"])
        .unwrap();
    let before = drops(&dp, c::DROP_SPOOFED_SOURCE);
    let _ = udp_from(&topo.pods[0].ns, Some(b), c, 10);
    assert!(
        drops(&dp, c::DROP_SPOOFED_SOURCE) > before,
        "{:?}",
        dp.counters().unwrap()
    );
}

#[test]
fn non_ip_frames_dropped_and_arp_works_between_namespaces() {
    if !bpf_available("non_ip_frames_dropped_and_arp_works_between_namespaces") {
        return;
    }
    let pins = PinDir::create("lns").unwrap();
    let (topo, dp) = topology(&pins, [true, false, false]);
    let ip = packet(17, topo.pods[0].ip, topo.pods[1].ip, 1, 2, 0);
    send_raw(&topo.pods[0].ns, "eth0", with_ethertype(&ip, 0x8847));
    send_raw(&topo.pods[0].ns, "eth0", vlan(&ip, 7));
    assert_eq!(
        drops(&dp, c::DROP_UNSUPPORTED_L3),
        2,
        "{:?}",
        dp.counters().unwrap()
    );
    // ARP must still work: pod 2 forgets its gateway's address and resolves it again (the
    // node answers for 169.254.1.1 on pod 2's interface).
    topo.node
        .ip(&[
            "addr",
            "add",
            "169.254.1.1/32",
            "dev",
            &topo.pods[1].host_if,
        ])
        .unwrap();
    topo.pods[1]
        .ns
        .ip(&["neigh", "del", "169.254.1.1", "dev", "eth0"])
        .unwrap();
    let _srv = Server::tcp(&topo.pods[2].ns, 8080, "c").unwrap();
    let target = SocketAddrV4::new(topo.pods[2].ip, 8080);
    let got = topo.pods[1]
        .ns
        .spawn(move || tools::tcp_request(target.into(), T).map(|(a, _)| a))
        .join()
        .unwrap()
        .expect("enter pod namespace")
        .expect("b -> c after ARP");
    assert_eq!(got, "c");
}

#[test]
fn a_4000_byte_udp_datagram_crosses_an_allow_rule() {
    if !bpf_available("a_4000_byte_udp_datagram_crosses_an_allow_rule") {
        return;
    }
    let pins = PinDir::create("fragns").unwrap();
    let (topo, mut dp) = topology(&pins, [false, true, false]);
    dp.apply_policy(
        2,
        &[rule(Direction::Ingress, Some(100), c::PROTO_UDP, 5353)],
    )
    .unwrap();
    let _b = Server::udp(&topo.pods[1].ns, 5353, "b").unwrap();
    let _c = Server::udp(&topo.pods[2].ns, 5353, "c").unwrap();
    let b = SocketAddrV4::new(topo.pods[1].ip, 5353);
    let c = SocketAddrV4::new(topo.pods[2].ip, 5353);
    assert_eq!(
        udp_from(&topo.pods[0].ns, None, b, 4000).expect("a -> b, 4000 bytes"),
        "b\n"
    );
    assert!(
        udp_from(&topo.pods[2].ns, None, b, 4000).is_err(),
        "c -> b denied"
    );
    // An endpoint without policy is never affected.
    assert_eq!(
        udp_from(&topo.pods[0].ns, None, c, 4000).expect("a -> c, 4000 bytes"),
        "c\n"
    );
    assert!(
        dp.counters()
            .unwrap()
            .packets(c::VERDICT_DROPPED, c::DROP_FRAGMENT)
            >= 1,
        "the denied datagram's later fragments: {:?}",
        dp.counters().unwrap()
    );
}
