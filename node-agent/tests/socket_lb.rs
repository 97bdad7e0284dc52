//! East-west load balancing at the socket (cgroup connect/sendmsg/recvmsg/getpeername, IPv4
//! and IPv6) with real clients in a cgroup and network namespaces the test creates.

mod common;

use common::*;
use node_agent::datapath::{Backend, BackendState, LbAlgorithm, Service};
use node_agent::netns::{Cgroup, PinDir, Topology};
use node_agent::tools::{spawn_client, ClientOptions, ClientReport, Server};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::Path;
use weft_datapath_common as c;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_node-agent"))
}

fn backend(topo: &Topology, pod: usize, id: u32, port: u16) -> Backend {
    Backend {
        id,
        ip: topo.pods[pod].ip.into(),
        port,
        weight: 1,
        state: BackendState::Active,
    }
}

fn client(
    topo: &Topology,
    cg: &Cgroup,
    pod: usize,
    target: impl Into<SocketAddr>,
    udp: bool,
    count: u64,
) -> ClientReport {
    spawn_client(
        exe(),
        Some(cg.path()),
        &topo.pods[pod].ns,
        &ClientOptions {
            target: target.into(),
            udp,
            count,
            duration: None,
            verbose: true,
            parallel: 1,
        },
    )
    .expect("client ran")
}

/// Service 1 (TCP 80 -> 8080) and service 2 (UDP 53 -> 5353) on `vip`, random choice; the
/// TCP one is returned for changes.
fn tcp_and_udp(
    dp: &mut node_agent::datapath::Datapath,
    vip: IpAddr,
    backends: impl Fn(u16) -> Vec<Backend>,
) -> Service {
    let tcp = Service {
        id: 1,
        vip,
        port: 80,
        proto: c::PROTO_TCP,
        algorithm: LbAlgorithm::Random,
        affinity: None,
        backends: backends(8080),
    };
    dp.apply_service(&tcp).unwrap();
    dp.apply_service(&Service {
        id: 2,
        port: 53,
        proto: c::PROTO_UDP,
        backends: backends(5353),
        ..tcp.clone()
    })
    .unwrap();
    tcp
}

/// Echo servers answering as `b<i>` on TCP 8080 and UDP 5353 in each pod `i` of `pods`.
fn tcp_and_udp_servers(topo: &Topology, pods: std::ops::RangeInclusive<usize>) -> Vec<Server> {
    pods.flat_map(|i| {
        let name = format!("b{i}");
        [
            Server::tcp(&topo.pods[i].ns, 8080, &name).expect("TCP server"),
            Server::udp(&topo.pods[i].ns, 5353, &name).expect("UDP server"),
        ]
    })
    .collect()
}

fn spread(r: &ClientReport) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (a, _) in &r.answers {
        *m.entry(a.clone()).or_insert(0) += 1;
    }
    m
}

/// What every test here starts from: its pods, and the datapath loaded (pinned in a directory
/// of its own) with the socket programs attached to the cgroup its clients run in. Tests bind
/// them in this order (`(topo, _pins, cg, mut dp)`), so they drop in reverse: the datapath
/// first, the pods last. `None` (the test passes as skipped, or fails under
/// `WEFT_REQUIRE_BPF`) where BPF cannot load here.
fn rig<E: std::fmt::Debug>(
    test: &str,
    pods: impl FnOnce() -> Result<Topology, E>,
) -> Option<(Topology, PinDir, Cgroup, node_agent::datapath::Datapath)> {
    if !bpf_available(test) {
        return None;
    }
    let topo = pods().expect("test pods");
    let pins = PinDir::create("t").expect("pin directory");
    let cg = Cgroup::create("cg").expect("test cgroup");
    let dp = load(&pins);
    dp.attach_cgroup(cg.path())
        .expect("attach to the test cgroup");
    Some((topo, pins, cg, dp))
}

#[test]
fn vip_spreads_connections_translates_back_and_drops_without_backend() {
    // pod 0 is the client; pods 1..=3 serve TCP 8080 and UDP 5353 as b1..b3.
    let rig = rig(
        "vip_spreads_connections_translates_back_and_drops_without_backend",
        || Topology::new(4),
    );
    let Some((topo, _pins, cg, mut dp)) = rig else {
        return;
    };
    let _servers = tcp_and_udp_servers(&topo, 1..=3);
    let backends = |port| {
        (1..=3)
            .map(|i| backend(&topo, i, 10 + i as u32 + port as u32, port))
            .collect::<Vec<_>>()
    };
    let mut tcp_svc = tcp_and_udp(&mut dp, VIP.into(), backends);

    let mut events = dp.flow_events().unwrap();
    let r = client(&topo, &cg, 0, SocketAddrV4::new(VIP, 80), false, 60);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let translated: Vec<_> = events
        .drain()
        .into_iter()
        .filter(|e| e.verdict == c::VERDICT_TRANSLATED)
        .collect();
    assert_eq!(translated.len(), 60, "one translation event per connect");
    assert!(translated
        .iter()
        .all(|e| e.svc_id == 1 && e.obs_point == c::OBS_SOCK_CONNECT && e.dport == 8080));
    let s = spread(&r);
    assert_eq!(
        s.keys().cloned().collect::<Vec<_>>(),
        vec!["b1", "b2", "b3"],
        "all backends used: {s:?}"
    );
    assert!(s.values().all(|&n| n >= 5), "spread roughly evenly: {s:?}");
    // getpeername shows the VIP, not the backend.
    assert!(
        r.answers.iter().all(|(_, peer)| peer == "10.96.0.10:80"),
        "{:?}",
        r.answers[0]
    );

    let r = client(&topo, &cg, 0, SocketAddrV4::new(VIP, 53), true, 30);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(spread(&r).len() >= 2, "UDP spread: {:?}", spread(&r));
    // recvmsg shows the answer coming from the VIP.
    assert!(
        r.answers.iter().all(|(_, from)| from == "10.96.0.10:53"),
        "{:?}",
        r.answers[0]
    );

    // An IPv6 socket naming the VIP as an IPv4-mapped address reaches the same service
    // and sees the VIP in that form.
    let mapped = SocketAddrV6::new(VIP.to_ipv6_mapped(), 80, 0, 0);
    let r = client(&topo, &cg, 0, mapped, false, 30);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(spread(&r).len() >= 2, "mapped spread: {:?}", spread(&r));
    assert!(
        r.answers
            .iter()
            .all(|(_, peer)| peer == "[::ffff:10.96.0.10]:80"),
        "{:?}",
        r.answers[0]
    );

    // A terminating backend gets no new connections.
    tcp_svc.backends[2].state = BackendState::Terminating;
    dp.apply_service(&tcp_svc).unwrap();
    let s = spread(&client(
        &topo,
        &cg,
        0,
        SocketAddrV4::new(VIP, 80),
        false,
        40,
    ));
    assert!(!s.contains_key("b3"), "terminating b3 got traffic: {s:?}");
    assert_eq!(s.len(), 2);

    // No backend: connect fails, counted as "no backend".
    tcp_svc.backends.clear();
    dp.apply_service(&tcp_svc).unwrap();
    let r = client(&topo, &cg, 0, SocketAddrV4::new(VIP, 80), false, 3);
    assert_eq!((r.answers.len(), r.errors.len()), (0, 3));
    let k = dp.counters().unwrap();
    assert_eq!(k.packets(c::VERDICT_DROPPED, c::DROP_NO_BACKEND), 3);
    assert!(k.packets(c::VERDICT_TRANSLATED, c::DROP_NONE) >= 130);
    // A process outside the cgroup is not translated (the VIP answers nobody).
    let outside = topo.pods[0]
        .ns
        .spawn(|| {
            node_agent::tools::tcp_request(
                SocketAddrV4::new(VIP, 80).into(),
                std::time::Duration::from_millis(300),
            )
        })
        .join()
        .unwrap()
        .unwrap();
    assert!(outside.is_err());
}

#[test]
fn maglev_keeps_clients_on_their_backend_when_another_is_removed() {
    // pods 0..=3 are backends m0..m3, pods 4..=11 are clients.
    let rig = rig(
        "maglev_keeps_clients_on_their_backend_when_another_is_removed",
        || Topology::new(12),
    );
    let Some((topo, _pins, cg, mut dp)) = rig else {
        return;
    };
    let _servers: Vec<Server> = (0..4)
        .map(|i| Server::tcp(&topo.pods[i].ns, 8080, &format!("m{i}")).unwrap())
        .collect();
    let m = 16381;
    let mut svc = Service {
        id: 7,
        vip: VIP.into(),
        port: 80,
        proto: c::PROTO_TCP,
        algorithm: LbAlgorithm::Maglev { m },
        affinity: None,
        backends: (0..4)
            .map(|i| backend(&topo, i, 100 + i as u32, 8080))
            .collect(),
    };
    dp.apply_service(&svc).unwrap();
    let seed = dp.config().runtime.hash_seed;
    let name_of = |id: u32| format!("m{}", id - 100);
    let predict = |dp: &node_agent::datapath::Datapath, cookie: u64| {
        let table = dp.maps.maglev_table(7, m).unwrap();
        name_of(table[node_agent::datapath::maglev_slot(seed, cookie, 7, m)])
    };

    let mut before = BTreeMap::new();
    for pod in 4..12 {
        let r = client(&topo, &cg, pod, SocketAddrV4::new(VIP, 80), false, 5);
        let got: BTreeSet<String> = r.answers.iter().map(|(a, _)| a.clone()).collect();
        assert_eq!(got.len(), 1, "client {pod} stays on one backend: {got:?}");
        let got = got.into_iter().next().unwrap();
        assert_eq!(
            got,
            predict(&dp, r.cookie),
            "datapath and userspace agree on the slot"
        );
        before.insert(pod, (r.cookie, got));
    }
    // Remove the backend used by the first client.
    let removed = before[&4].1.clone();
    let old_table = dp.maps.maglev_table(7, m).unwrap();
    svc.backends.retain(|b| name_of(b.id) != removed);
    dp.apply_service(&svc).unwrap();
    let new_table = dp.maps.maglev_table(7, m).unwrap();
    let moved_slots = old_table
        .iter()
        .zip(&new_table)
        .filter(|(o, n)| name_of(**o) != removed && o != n)
        .count();
    assert!(
        moved_slots * 50 <= m as usize,
        "Maglev moved {moved_slots} other slots of {m}"
    );
    let (mut kept, mut others) = (0, 0);
    for pod in 4..12 {
        let (cookie, old) = &before[&pod];
        let r = client(&topo, &cg, pod, SocketAddrV4::new(VIP, 80), false, 3);
        let got: BTreeSet<String> = r.answers.iter().map(|(a, _)| a.clone()).collect();
        assert_eq!(got.len(), 1);
        let got = got.into_iter().next().unwrap();
        assert_ne!(got, removed);
        assert_eq!(got, predict(&dp, *cookie));
        let slot = node_agent::datapath::maglev_slot(seed, *cookie, 7, m);
        if *old != removed && old_table[slot] == new_table[slot] {
            // Its slot still names its backend: it must not move.
            others += 1;
            assert_eq!(&got, old, "client {pod} moved although its backend stayed");
            kept += 1;
        }
    }
    assert!(others > 0 && kept == others, "kept {kept} of {others}");
}

#[test]
fn client_affinity_keeps_a_client_on_one_backend_until_it_terminates() {
    let rig = rig(
        "client_affinity_keeps_a_client_on_one_backend_until_it_terminates",
        || Topology::new(4),
    );
    let Some((topo, _pins, cg, mut dp)) = rig else {
        return;
    };
    let _servers: Vec<Server> = (1..=3)
        .map(|i| Server::tcp(&topo.pods[i].ns, 8080, &format!("b{i}")).unwrap())
        .collect();
    let mut svc = Service {
        id: 3,
        vip: VIP.into(),
        port: 80,
        proto: c::PROTO_TCP,
        algorithm: LbAlgorithm::Random,
        affinity: Some(std::time::Duration::from_secs(60)),
        backends: (1..=3)
            .map(|i| backend(&topo, i, 30 + i as u32, 8080))
            .collect(),
    };
    dp.apply_service(&svc).unwrap();
    let s = spread(&client(
        &topo,
        &cg,
        0,
        SocketAddrV4::new(VIP, 80),
        false,
        20,
    ));
    assert_eq!(
        s.len(),
        1,
        "random LB with affinity: one backend for the client: {s:?}"
    );
    let (first, _) = s.into_iter().next().unwrap();
    // Its backend starts terminating: the client moves, and sticks to the new one.
    for b in svc.backends.iter_mut() {
        if format!("b{}", b.id - 30) == first {
            b.state = BackendState::Terminating;
        }
    }
    dp.apply_service(&svc).unwrap();
    let s = spread(&client(
        &topo,
        &cg,
        0,
        SocketAddrV4::new(VIP, 80),
        false,
        20,
    ));
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(
        !s.contains_key(&first),
        "moved off the terminating backend: {s:?}"
    );
}

#[test]
fn ipv6_vip_spreads_over_ipv6_backends_and_answers_as_the_vip() {
    // pod 0 is the client; pods 1 and 2 serve TCP 8080 and UDP 5353 as b1, b2; all dual stack.
    let rig = rig(
        "ipv6_vip_spreads_over_ipv6_backends_and_answers_as_the_vip",
        || Topology::dual_stack(3),
    );
    let Some((topo, _pins, cg, mut dp)) = rig else {
        return;
    };
    let _servers = tcp_and_udp_servers(&topo, 1..=2);
    let vip6: Ipv6Addr = "fd00:96::10".parse().unwrap();
    let ip6 = |i: usize| topo.pods[i].ip6.expect("dual-stack pod");
    let backends = |port: u16| {
        (1..=2)
            .map(|i| Backend {
                id: 20 + i as u32 + u32::from(port),
                ip: ip6(i).into(),
                port,
                weight: 1,
                state: BackendState::Active,
            })
            .collect::<Vec<_>>()
    };
    let mut tcp_svc = tcp_and_udp(&mut dp, vip6.into(), backends);

    let mut events = dp.flow_events().unwrap();
    let r = client(&topo, &cg, 0, SocketAddrV6::new(vip6, 80, 0, 0), false, 40);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let s = spread(&r);
    assert_eq!(
        s.keys().cloned().collect::<Vec<_>>(),
        vec!["b1", "b2"],
        "{s:?}"
    );
    assert!(
        r.answers.iter().all(|(_, peer)| peer == "[fd00:96::10]:80"),
        "getpeername shows the VIP: {:?}",
        r.answers[0]
    );
    let translated: Vec<_> = events
        .drain()
        .into_iter()
        .filter(|e| e.verdict == c::VERDICT_TRANSLATED)
        .collect();
    assert_eq!(translated.len(), 40, "one translation event per connect");
    let backend_addrs = [ip6(1).octets(), ip6(2).octets()];
    assert!(
        translated.iter().all(|e| e.family == c::FAMILY_IPV6
            && e.svc_id == 1
            && e.dport == 8080
            && backend_addrs.contains(&e.daddr)),
        "{:?}",
        translated[0]
    );

    let r = client(&topo, &cg, 0, SocketAddrV6::new(vip6, 53, 0, 0), true, 30);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(spread(&r).len(), 2, "UDP spread: {:?}", spread(&r));
    assert!(
        r.answers.iter().all(|(_, from)| from == "[fd00:96::10]:53"),
        "recvmsg shows the VIP: {:?}",
        r.answers[0]
    );

    // The IPv4 VIP of the same number is another service: nothing listens behind it.
    let r = client(&topo, &cg, 0, SocketAddrV4::new(VIP, 80), false, 1);
    assert_eq!(r.errors.len(), 1, "{r:?}");

    // A backend of the other family is refused, naming it; the service stays as it was.
    let mut mixed = tcp_svc.clone();
    mixed.backends[0].ip = IpAddr::V4(topo.pods[1].ip);
    let err = dp.apply_service(&mixed).unwrap_err().to_string();
    assert!(
        err.contains("10.0.1.2") && err.contains("address family"),
        "{err}"
    );
    assert_eq!(
        spread(&client(
            &topo,
            &cg,
            0,
            SocketAddrV6::new(vip6, 80, 0, 0),
            false,
            10
        ))
        .len(),
        2
    );

    // No backend: connect is refused and the drop is an IPv6 event.
    tcp_svc.backends.clear();
    dp.apply_service(&tcp_svc).unwrap();
    let r = client(&topo, &cg, 0, SocketAddrV6::new(vip6, 80, 0, 0), false, 3);
    assert_eq!(r.errors.len(), 3, "{r:?}");
    let dropped: Vec<_> = events
        .drain()
        .into_iter()
        .filter(|e| e.verdict == c::VERDICT_DROPPED)
        .collect();
    assert!(
        !dropped.is_empty()
            && dropped.iter().all(|e| e.family == c::FAMILY_IPV6
                && e.drop_reason == c::DROP_NO_BACKEND
                && e.daddr == vip6.octets()),
        "{dropped:?}"
    );
}
