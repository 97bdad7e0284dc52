//! North-south load balancing with real traffic, IPv4 and IPv6: an external client
//! namespace reaches a service VIP through the node's uplink; the node DNATs to pod backends and replies come back
//! from the VIP.

mod common;

use common::*;
use node_agent::datapath::{Backend, BackendState, LbAlgorithm, Service};
use node_agent::netns::{NetNs, PinDir, Topology};
use node_agent::tools::{self, Server};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use weft_datapath_common as c;

#[test]
fn external_clients_reach_pods_through_ipv4_and_ipv6_vips() {
    if !bpf_available("external_clients_reach_pods_through_ipv4_and_ipv6_vips") {
        return;
    }
    let topo = Topology::dual_stack(2).unwrap();
    // The outside world: a namespace on the other end of the node's uplink, dual stack.
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
    for (ns, ifname, v4, v6) in [
        (&topo.node, "uplink0", "192.0.2.1/24", "2001:db8:2::1/64"),
        (&ext, "eth0", "192.0.2.2/24", "2001:db8:2::2/64"),
    ] {
        ns.ip(&["addr", "add", v4, "dev", ifname]).unwrap();
        ns.ip(&["-6", "addr", "add", v6, "dev", ifname, "nodad"])
            .unwrap();
        ns.ip(&["link", "set", ifname, "up"]).unwrap();
    }
    ext.ip(&["route", "add", "default", "via", "192.0.2.1"])
        .unwrap();
    ext.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])
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
    let v6 = |i: usize| IpAddr::V6(topo.pods[i].ip6.expect("dual-stack pod"));
    let cases: [(u32, IpAddr, [IpAddr; 2], LbAlgorithm, &str); 2] = [
        (
            1,
            Ipv4Addr::new(10, 96, 0, 10).into(),
            [topo.pods[0].ip.into(), topo.pods[1].ip.into()],
            LbAlgorithm::Random,
            "10.96.0.10:80",
        ),
        (
            2,
            "fd00:96::10".parse().unwrap(),
            [v6(0), v6(1)],
            LbAlgorithm::Maglev { m: 251 },
            "[fd00:96::10]:80",
        ),
    ];
    for (id, vip, backends, algorithm, shown) in cases {
        let mut svc = Service {
            id,
            vip,
            port: 80,
            proto: c::PROTO_TCP,
            algorithm,
            affinity: None,
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, ip)| Backend {
                    id: id * 10 + i as u32,
                    ip: *ip,
                    port: 8080,
                    weight: 1,
                    state: BackendState::Active,
                })
                .collect(),
        };
        dp.apply_service(&svc).unwrap();
        let target = SocketAddr::new(vip, 80);
        // Each request from its own source port: Maglev spreads by the whole tuple.
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
            let (answer, peer) = r.unwrap_or_else(|e| panic!("request to {shown}: {e}"));
            assert_eq!(peer.to_string(), shown, "replies come from the VIP");
            *seen.entry(answer).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "both pods serve {shown}: {seen:?}");

        // No backend: the VIP drops, counted as such.
        let before = dp
            .counters()
            .unwrap()
            .packets(c::VERDICT_DROPPED, c::DROP_NO_BACKEND);
        svc.backends.clear();
        dp.apply_service(&svc).unwrap();
        let r = ext
            .spawn(move || tools::tcp_request(target, Duration::from_millis(300)))
            .join()
            .unwrap()
            .unwrap();
        assert!(r.is_err(), "{shown} without backends answered: {r:?}");
        assert!(
            dp.counters()
                .unwrap()
                .packets(c::VERDICT_DROPPED, c::DROP_NO_BACKEND)
                > before,
            "{shown}: the drop is counted"
        );
    }
    drop(ext);
}
