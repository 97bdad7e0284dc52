//! Agent restart: pinned maps and links keep traffic flowing while no agent runs; a new agent
//! reuses them (conntrack state included) and reconciles instead of starting empty.

mod common;

use common::*;
use node_agent::datapath::{Backend, BackendState, Direction, LbAlgorithm, Maps, Service};
use node_agent::netns::{Cgroup, PinDir, Topology};
use node_agent::tools::{self, Server};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_datapath_common as c;

#[test]
fn restart_drops_no_allowed_connection_and_reuses_state() {
    if !bpf_available("restart_drops_no_allowed_connection_and_reuses_state") {
        return;
    }
    let topo = Topology::new(3).unwrap();
    let pins = PinDir::create("t").unwrap();
    let cg = Cgroup::create("cg").unwrap();
    let policy = [rule(Direction::Ingress, Some(100), c::PROTO_TCP, 8080)];
    let svc = Service {
        id: 1,
        vip: Ipv4Addr::new(10, 96, 0, 1).into(),
        port: 80,
        proto: c::PROTO_TCP,
        algorithm: LbAlgorithm::Maglev { m: 251 },
        affinity: None,
        backends: vec![Backend {
            id: 9,
            ip: topo.pods[1].ip.into(),
            port: 8080,
            weight: 1,
            state: BackendState::Active,
        }],
    };
    let mut dp = load(&pins);
    attach_all(&dp, &topo);
    dp.attach_cgroup(cg.path()).unwrap();
    apply_endpoints(
        &mut dp,
        &topo,
        &[(100, false, false), (200, true, true), (300, false, false)],
    );
    dp.apply_policy(2, &policy).unwrap();
    dp.apply_service(&svc).unwrap();
    let _server = Server::tcp(&topo.pods[1].ns, 8080, "b").unwrap();
    let target = SocketAddrV4::new(topo.pods[1].ip, 8080);

    // A long-lived connection, and a client loop that must never fail.
    let mut held = topo.pods[0]
        .ns
        .spawn(move || TcpStream::connect_timeout(&target.into(), Duration::from_secs(1)))
        .join()
        .unwrap()
        .unwrap()
        .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (stop2, ok2, failed2) = (stop.clone(), ok.clone(), failed.clone());
    let looper = topo.pods[0].ns.spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            match tools::tcp_request(target.into(), Duration::from_secs(1)) {
                Ok((a, _)) if a == "b" => ok2.fetch_add(1, Ordering::Relaxed),
                _ => failed2.fetch_add(1, Ordering::Relaxed),
            };
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let ct_before = dp.maps.list_ct().unwrap().len();
    let rev_before = rev_of(&dp.maps, 2);

    // The agent goes away: nothing is detached (links and maps are pinned).
    drop(dp);
    std::thread::sleep(Duration::from_millis(300));
    let during = ok.load(Ordering::Relaxed);

    std::thread::sleep(Duration::from_millis(300));
    assert!(
        ok.load(Ordering::Relaxed) > during,
        "traffic flows with no agent running"
    );
    // Policy is still enforced with no agent: pod 3 is denied.
    let denied = topo.pods[2]
        .ns
        .spawn(move || tools::tcp_request(target.into(), Duration::from_millis(300)))
        .join()
        .unwrap()
        .unwrap();
    assert!(denied.is_err(), "policy still enforced without the agent");

    // A new agent: reuses maps (state intact), atomically updates the pinned links.
    let mut dp = load(&pins);
    assert!(
        dp.maps.list_ct().unwrap().len() >= ct_before.min(1),
        "conntrack survived"
    );
    assert_eq!(
        dp.maps.list_endpoints().unwrap().len(),
        3,
        "endpoints survived"
    );
    attach_all(&dp, &topo);
    dp.attach_cgroup(cg.path()).unwrap();
    // Reconciled: re-applying the same desired state writes nothing.
    dp.apply_endpoint(&endpoint(2, &topo, 200, true, true))
        .unwrap();
    dp.apply_policy(2, &policy).unwrap();
    assert_eq!(
        rev_of(&dp.maps, 2),
        rev_before,
        "no policy change seen after restart"
    );
    dp.apply_service(&svc).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    stop.store(true, Ordering::Relaxed);
    looper.join().unwrap().unwrap();
    held.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    held.write_all(b"?").unwrap();
    let mut buf = [0u8; 8];
    let n = held
        .read(&mut buf)
        .expect("long-lived connection survived the restart");
    assert_eq!(&buf[..n], b"b\n");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no allowed request failed ({} ok)",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 20);

    // The socket LB kept working through the restart too (client in the cgroup).
    let r = tools::spawn_client(
        std::path::Path::new(env!("CARGO_BIN_EXE_node-agent")),
        Some(cg.path()),
        &topo.pods[0].ns,
        &tools::ClientOptions {
            target: SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 80).into(),
            udp: false,
            count: 5,
            duration: None,
            verbose: true,
            parallel: 1,
        },
    )
    .unwrap();
    assert_eq!(r.answers.len(), 5, "{:?}", r.errors);
}

fn rev_of(maps: &Maps, ep_id: u32) -> u32 {
    maps.list_endpoints()
        .unwrap()
        .iter()
        .find(|(_, v)| v.ep_id == ep_id)
        .map(|(_, v)| v.policy_rev)
        .unwrap()
}
