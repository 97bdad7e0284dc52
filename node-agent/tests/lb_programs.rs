//! North-south LB programs (uplink tc) on crafted packets: DNAT with checksum fixes, reverse
//! translation of replies, connection stickiness, no backend.

mod common;

use common::*;
use node_agent::datapath::{Backend, BackendState, Datapath, LbAlgorithm, Service};
use node_agent::netns::PinDir;
use std::net::Ipv4Addr;
use weft_datapath_common as c;

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn svc(
    id: u32,
    port: u16,
    proto: u8,
    backends: &[(u32, Ipv4Addr)],
    algorithm: LbAlgorithm,
) -> Service {
    Service {
        id,
        vip: VIP.into(),
        port,
        proto,
        algorithm,
        affinity: None,
        backends: backends
            .iter()
            .map(|&(id, ip)| Backend {
                id,
                ip: ip.into(),
                port: 8080,
                weight: 1,
                state: BackendState::Active,
            })
            .collect(),
    }
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    acc
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// IPv4 header and TCP/UDP checksums both verify.
fn checksums_ok(p: &[u8]) -> bool {
    let ip = &p[14..34];
    let l4 = &p[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    fold(sum16(ip, 0)) == 0xffff && fold(sum16(l4, sum16(&pseudo, 0))) == 0xffff
}

/// A packet with correct checksums.
fn pkt(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut p = packet(proto, src, dst, sport, dport, TCP_SYN);
    let l4_len = p.len() - 34;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[26..34]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    let off = if proto == 6 { 34 + 16 } else { 34 + 6 };
    let s = !fold(sum16(&p[34..], sum16(&pseudo, 0)));
    p[off..off + 2].copy_from_slice(&s.to_be_bytes());
    assert!(checksums_ok(&p));
    p
}

fn addrs(p: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    (
        Ipv4Addr::new(p[26], p[27], p[28], p[29]),
        u16::from_be_bytes([p[34], p[35]]),
        Ipv4Addr::new(p[30], p[31], p[32], p[33]),
        u16::from_be_bytes([p[36], p[37]]),
    )
}

fn run(dp: &Datapath, prog: &'static str, p: &[u8]) -> (u32, Vec<u8>) {
    let r = dp.test_run(prog, p, 1).expect("test run");
    (r.retval, r.data_out)
}

#[test]
fn dnat_to_backend_and_reverse_nat_of_replies_keep_checksums_valid() {
    if !bpf_available("dnat_to_backend_and_reverse_nat_of_replies_keep_checksums_valid") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    let b1 = Ipv4Addr::new(10, 0, 1, 2);
    for (proto, port) in [(c::PROTO_TCP, 80u16), (c::PROTO_UDP, 53)] {
        dp.apply_service(&svc(
            port as u32,
            port,
            proto,
            &[(port as u32 * 10, b1)],
            LbAlgorithm::Random,
        ))
        .unwrap();
        let (ret, out) = run(
            &dp,
            c::progs::LB_INGRESS,
            &pkt(proto, CLIENT, VIP, 40000, port),
        );
        assert_eq!(ret, TC_ACT_OK);
        assert_eq!(
            addrs(&out),
            (CLIENT, 40000, b1, 8080),
            "DNAT to the backend"
        );
        assert!(checksums_ok(&out), "checksums after DNAT (proto {proto})");
        let (ret, out) = run(
            &dp,
            c::progs::LB_EGRESS,
            &pkt(proto, b1, CLIENT, 8080, 40000),
        );
        assert_eq!(ret, TC_ACT_OK);
        assert_eq!(
            addrs(&out),
            (VIP, port, CLIENT, 40000),
            "reply comes from the VIP"
        );
        assert!(
            checksums_ok(&out),
            "checksums after reverse NAT (proto {proto})"
        );
    }
    // Not a service, not a reply: untouched.
    let other = pkt(c::PROTO_TCP, CLIENT, Ipv4Addr::new(10, 0, 9, 9), 1, 80);
    assert_eq!(
        run(&dp, c::progs::LB_INGRESS, &other),
        (TC_ACT_OK, other.clone())
    );
    assert_eq!(run(&dp, c::progs::LB_EGRESS, &other), (TC_ACT_OK, other));
    assert!(
        dp.counters()
            .unwrap()
            .packets(c::VERDICT_TRANSLATED, c::DROP_NONE)
            >= 4
    );
}

#[test]
fn connections_stick_to_their_backend_and_no_backend_drops() {
    if !bpf_available("connections_stick_to_their_backend_and_no_backend_drops") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    let backends: Vec<(u32, Ipv4Addr)> = (1..=4)
        .map(|i| (i, Ipv4Addr::new(10, 0, 1, i as u8)))
        .collect();
    dp.apply_service(&svc(
        1,
        80,
        c::PROTO_TCP,
        &backends,
        LbAlgorithm::Maglev { m: 251 },
    ))
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for sport in 40000..40064u16 {
        let p = pkt(c::PROTO_TCP, CLIENT, VIP, sport, 80);
        let first = addrs(&run(&dp, c::progs::LB_INGRESS, &p).1).2;
        for _ in 0..3 {
            assert_eq!(
                addrs(&run(&dp, c::progs::LB_INGRESS, &p).1).2,
                first,
                "sticky per connection"
            );
        }
        seen.insert(first);
    }
    assert_eq!(
        seen.len(),
        4,
        "Maglev spreads connections over all backends: {seen:?}"
    );
    // An established connection keeps its backend when the set changes (while it exists).
    let p = pkt(c::PROTO_TCP, CLIENT, VIP, 40000, 80);
    let before = addrs(&run(&dp, c::progs::LB_INGRESS, &p).1).2;
    let others: Vec<(u32, Ipv4Addr)> = backends.iter().copied().filter(|b| b.1 != before).collect();
    let mut with_new = others.clone();
    with_new.push((9, Ipv4Addr::new(10, 0, 1, 9)));
    with_new.push(*backends.iter().find(|b| b.1 == before).unwrap());
    dp.apply_service(&svc(
        1,
        80,
        c::PROTO_TCP,
        &with_new,
        LbAlgorithm::Maglev { m: 251 },
    ))
    .unwrap();
    assert_eq!(addrs(&run(&dp, c::progs::LB_INGRESS, &p).1).2, before);
    // No backend: dropped with its reason.
    dp.apply_service(&svc(2, 81, c::PROTO_TCP, &[], LbAlgorithm::Random))
        .unwrap();
    let (ret, _) = run(
        &dp,
        c::progs::LB_INGRESS,
        &pkt(c::PROTO_TCP, CLIENT, VIP, 1234, 81),
    );
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(
        dp.counters()
            .unwrap()
            .packets(c::VERDICT_DROPPED, c::DROP_NO_BACKEND),
        1
    );
}

#[test]
fn client_affinity_on_the_uplink_keeps_a_client_ip_on_one_backend() {
    if !bpf_available("client_affinity_on_the_uplink_keeps_a_client_ip_on_one_backend") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    let backends: Vec<(u32, Ipv4Addr)> = (1..=4)
        .map(|i| (i, Ipv4Addr::new(10, 0, 1, i as u8)))
        .collect();
    let mut s = svc(1, 80, c::PROTO_TCP, &backends, LbAlgorithm::Random);
    s.affinity = Some(std::time::Duration::from_secs(60));
    dp.apply_service(&s).unwrap();
    // New connections (different source ports) of one client IP: one backend.
    let chosen: std::collections::BTreeSet<Ipv4Addr> = (50000..50040u16)
        .map(|sport| {
            addrs(
                &run(
                    &dp,
                    c::progs::LB_INGRESS,
                    &pkt(c::PROTO_TCP, CLIENT, VIP, sport, 80),
                )
                .1,
            )
            .2
        })
        .collect();
    assert_eq!(chosen.len(), 1, "{chosen:?}");
    // Without affinity the same connections spread.
    s.affinity = None;
    dp.apply_service(&s).unwrap();
    let spread: std::collections::BTreeSet<Ipv4Addr> = (51000..51040u16)
        .map(|sport| {
            addrs(
                &run(
                    &dp,
                    c::progs::LB_INGRESS,
                    &pkt(c::PROTO_TCP, CLIENT, VIP, sport, 80),
                )
                .1,
            )
            .2
        })
        .collect();
    assert!(spread.len() > 1, "{spread:?}");
}

#[test]
fn a_backend_shared_by_two_services_survives_the_removal_of_one() {
    if !bpf_available("a_backend_shared_by_two_services_survives_the_removal_of_one") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    let b = Ipv4Addr::new(10, 0, 1, 2);
    dp.apply_service(&svc(1, 80, c::PROTO_TCP, &[(7, b)], LbAlgorithm::Random))
        .unwrap();
    dp.apply_service(&svc(2, 81, c::PROTO_TCP, &[(7, b)], LbAlgorithm::Random))
        .unwrap();
    dp.remove_service(1).unwrap();
    let (ret, out) = run(
        &dp,
        c::progs::LB_INGRESS,
        &pkt(c::PROTO_TCP, CLIENT, VIP, 40000, 81),
    );
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(
        addrs(&out).2,
        b,
        "service 2 still reaches the shared backend"
    );
    let (_, out) = run(
        &dp,
        c::progs::LB_INGRESS,
        &pkt(c::PROTO_TCP, CLIENT, VIP, 40000, 80),
    );
    assert_eq!(addrs(&out).2, VIP, "service 1 is gone: not translated");
    dp.remove_service(2).unwrap();
    assert!(
        dp.maps.backend(7).is_err(),
        "last reference gone: backend removed"
    );
}
