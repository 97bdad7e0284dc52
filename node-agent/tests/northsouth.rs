//! North-south load balancing with real traffic: an external client namespace reaches a
//! service VIP through the node's uplink; the node DNATs to pod backends and replies come back
//! from the VIP.

mod common;

use common::*;
use node_agent::datapath::{Backend, BackendState, LbAlgorithm, Service};
use node_agent::netns::{NetNs, PinDir, Topology};
use node_agent::tools::{self, Server};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use weft_datapath_common as c;

#[test]
fn external_client_reaches_pods_through_the_vip() {
    if !bpf_available("external_client_reaches_pods_through_the_vip") {
        return;
    }
    let topo = Topology::new(2).unwrap();
    // The outside world: a namespace on the other end of the node's uplink.
    let ext = NetNs::create("x").unwrap();
    topo.node
        .ip(&[
            "link",
            "add",
            "uplink0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ext.name(),
        ])
        .unwrap();
    topo.node
        .ip(&["addr", "add", "192.0.2.1/24", "dev", "uplink0"])
        .unwrap();
    topo.node.ip(&["link", "set", "uplink0", "up"]).unwrap();
    ext.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])
        .unwrap();
    ext.ip(&["link", "set", "eth0", "up"]).unwrap();
    ext.ip(&["route", "add", "default", "via", "192.0.2.1"])
        .unwrap();

    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    {
        let _in_node = topo.node.enter().unwrap();
        dp.attach_uplink("uplink0").unwrap();
    }
    let _servers: Vec<Server> = (0..2)
        .map(|i| Server::tcp(&topo.pods[i].ns, 8080, &format!("p{i}")).unwrap())
        .collect();
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let mut svc = Service {
        id: 1,
        vip: vip.into(),
        port: 80,
        proto: c::PROTO_TCP,
        algorithm: LbAlgorithm::Random,
        affinity: None,
        backends: (0..2)
            .map(|i| Backend {
                id: 1 + i as u32,
                ip: topo.pods[i].ip.into(),
                port: 8080,
                weight: 1,
                state: BackendState::Active,
            })
            .collect(),
    };
    dp.apply_service(&svc).unwrap();
    let target = SocketAddrV4::new(vip, 80).into();
    let results = ext
        .spawn(move || {
            (0..30)
                .map(|_| tools::tcp_request(target, Duration::from_secs(1)))
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap()
        .unwrap();
    let mut seen = BTreeMap::new();
    for r in results {
        let (answer, peer) = r.expect("request through the VIP");
        assert_eq!(peer.to_string(), "10.96.0.10:80");
        *seen.entry(answer).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both pods serve the VIP: {seen:?}");

    // No backend: the VIP drops, counted as such.
    svc.backends.clear();
    dp.apply_service(&svc).unwrap();
    let r = ext
        .spawn(move || tools::tcp_request(target, Duration::from_millis(300)))
        .join()
        .unwrap()
        .unwrap();
    assert!(r.is_err());
    assert!(
        dp.counters()
            .unwrap()
            .packets(c::VERDICT_DROPPED, c::DROP_NO_BACKEND)
            >= 1
    );
    drop(ext);
}
