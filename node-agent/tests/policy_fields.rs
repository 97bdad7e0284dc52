//! Policy fields end to end on real packets: a tenant view compiled by the real compiler,
//! programmed by the agent's own sync code into the loaded datapath, and TCP between pod
//! namespaces. Covers what the model tests cannot show: that the kernel gets it too.

mod common;

use common::*;
use node_agent::agent::wire::{Programmed, SyncMessage, Update};
use node_agent::netns::{PinDir, Topology};
use node_agent::tools::Server;
use std::net::{IpAddr, SocketAddrV4};
use weft_datapath_common as c;
use weft_model::desired::{compile, EndpointView, NodeView, PolicyView, TenantView};
use weft_model::labels::Labels;

fn labels(app: &str) -> Labels {
    [("app".to_string(), app.to_string())].into_iter().collect()
}

/// Pods a, b, c (identities 1000, 1001, 1002) on node n1, and the given policies.
fn view(topo: &Topology, specs: &[serde_json::Value]) -> TenantView {
    let endpoints = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, app)| EndpointView {
            id: app.to_string(),
            cluster_id: "c1".into(),
            node_id: "n1".into(),
            name: app.to_string(),
            labels: labels(app).into(),
            ips: vec![IpAddr::V4(topo.pods[i].ip)],
            identity: 1000 + i as u32,
            named_ports: vec![],
        })
        .collect();
    TenantView {
        nodes: vec![NodeView {
            id: "n1".into(),
            cluster_id: "c1".into(),
            name: "n1".into(),
            addresses: vec!["10.0.9.1".parse().unwrap()],
            labels: Default::default(),
            pod_cidrs: vec![],
        }],
        endpoints,
        policies: vec![PolicyView {
            id: "p".into(),
            name: "p".into(),
            specs: specs
                .iter()
                .map(|s| serde_json::from_value(s.clone()).expect("test spec parses"))
                .collect(),
            clusters: None,
        }],
        ..TenantView::default()
    }
}

/// Compiles the view for n1 and programs it as the agent does; no item may fail.
fn program(dp: &mut node_agent::datapath::Datapath, state: &mut Programmed, v: &TenantView) {
    let desired = compile(v, "n1").expect("compiles");
    let errors = state.apply(
        dp,
        SyncMessage {
            revision: state.revision + 1,
            update: Update::Snapshot(desired),
        },
    );
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn explicit_empty_peer_lists_admit_nobody_on_the_wire() {
    if !bpf_available("explicit_empty_peer_lists_admit_nobody_on_the_wire") {
        return;
    }
    let topo = Topology::new(3).unwrap();
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    attach_all(&dp, &topo);
    let mut state = Programmed::default();
    let b = SocketAddrV4::new(topo.pods[1].ip, 8080);
    let _srv = Server::tcp(&topo.pods[1].ns, 8080, "b").unwrap();
    let only_port = |peers: serde_json::Value| {
        let mut rule =
            serde_json::json!({"toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]});
        if let (Some(r), Some(p)) = (rule.as_object_mut(), peers.as_object()) {
            r.extend(p.clone());
        }
        serde_json::json!({"endpointSelector": {"matchLabels": {"app": "b"}}, "ingress": [rule]})
    };

    // Absent peer field: any peer on the port.
    program(
        &mut dp,
        &mut state,
        &view(&topo, &[only_port(serde_json::json!({}))]),
    );
    assert_eq!(tcp_from(&topo, 0, b).expect("a -> b, peers absent"), "b");
    assert_eq!(tcp_from(&topo, 2, b).expect("c -> b, peers absent"), "b");

    for field in ["fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"] {
        let before = dp
            .counters()
            .unwrap()
            .packets(c::VERDICT_DROPPED, c::DROP_POLICY_DENIED);
        program(
            &mut dp,
            &mut state,
            &view(&topo, &[only_port(serde_json::json!({ field: [] }))]),
        );
        assert!(tcp_from(&topo, 0, b).is_err(), "{field}: [] let a in");
        assert!(tcp_from(&topo, 2, b).is_err(), "{field}: [] let c in");
        let after = dp
            .counters()
            .unwrap()
            .packets(c::VERDICT_DROPPED, c::DROP_POLICY_DENIED);
        assert!(after > before, "{field}: drops counted as policy denied");
    }

    // null is absent.
    program(
        &mut dp,
        &mut state,
        &view(
            &topo,
            &[only_port(serde_json::json!({"fromEndpoints": null}))],
        ),
    );
    assert_eq!(
        tcp_from(&topo, 0, b).expect("a -> b, fromEndpoints: null"),
        "b"
    );
}

#[test]
fn rules_weft_does_not_enforce_fail_closed_as_unsupported_rule() {
    if !bpf_available("rules_weft_does_not_enforce_fail_closed_as_unsupported_rule") {
        return;
    }
    let topo = Topology::new(3).unwrap();
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    attach_all(&dp, &topo);
    let mut state = Programmed::default();
    let b = SocketAddrV4::new(topo.pods[1].ip, 8080);
    let _srv = Server::udp(&topo.pods[1].ns, 8080, "b").unwrap();
    // a: HTTP rules on a UDP port towards b (nothing speaks HTTP over UDP: the rule allows
    // nothing); c has no egress policy.
    let spec = serde_json::json!({
        "endpointSelector": {"matchLabels": {"app": "a"}},
        "egress": [
            {"toEndpoints": [{"matchLabels": {"app": "b"}}],
             "toPorts": [{"ports": [{"port": "8080", "protocol": "UDP"}],
                          "rules": {"http": [{"method": "GET"}]}}]}
        ]
    });
    program(&mut dp, &mut state, &view(&topo, &[spec]));
    let unsupported = |dp: &node_agent::datapath::Datapath| {
        dp.counters()
            .unwrap()
            .packets(c::VERDICT_DROPPED, c::DROP_UNSUPPORTED_RULE)
    };
    assert_eq!(unsupported(&dp), 0);
    assert!(
        udp_from(&topo, 0, b).is_err(),
        "a -> b: an unenforceable HTTP rule on UDP must not allow"
    );
    assert!(unsupported(&dp) > 0, "dropped as UNSUPPORTED_RULE");
    assert_eq!(udp_from(&topo, 2, b).expect("c -> b: no policy"), "b");
    // Elsewhere the drop stays POLICY_DENIED.
    let before = unsupported(&dp);
    let _other = Server::udp(&topo.pods[1].ns, 9090, "b").unwrap();
    assert!(udp_from(&topo, 0, SocketAddrV4::new(topo.pods[1].ip, 9090)).is_err());
    assert_eq!(unsupported(&dp), before);
}

#[test]
fn named_ports_resolve_to_the_declared_port_on_the_wire() {
    if !bpf_available("named_ports_resolve_to_the_declared_port_on_the_wire") {
        return;
    }
    let topo = Topology::new(3).unwrap();
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    attach_all(&dp, &topo);
    let mut state = Programmed::default();
    let _http = Server::tcp(&topo.pods[1].ns, 8080, "b").unwrap();
    let _other = Server::tcp(&topo.pods[1].ns, 9090, "b").unwrap();
    let spec = serde_json::json!({
        "endpointSelector": {"matchLabels": {"app": "b"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "a"}}],
                     "toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}]}]},
                    {"fromEndpoints": [{"matchLabels": {"app": "c"}}],
                     "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}, {"port": "9090", "protocol": "TCP"}]}]}],
        // `ssh` is declared nowhere: the deny must not widen to every TCP port.
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "c"}}],
                         "toPorts": [{"ports": [{"port": "ssh", "protocol": "TCP"}]}]}]
    });
    let mut v = view(&topo, &[spec]);
    v.endpoints[1].named_ports = vec!["http=8080/TCP".parse().unwrap()];
    program(&mut dp, &mut state, &v);
    let b = |port| SocketAddrV4::new(topo.pods[1].ip, port);
    assert_eq!(tcp_from(&topo, 0, b(8080)).expect("a -> b:http"), "b");
    assert!(
        tcp_from(&topo, 0, b(9090)).is_err(),
        "a -> b:9090 is not http"
    );
    assert_eq!(
        tcp_from(&topo, 2, b(8080)).expect("c -> b:8080, undeclared deny"),
        "b"
    );
    assert_eq!(tcp_from(&topo, 2, b(9090)).expect("c -> b:9090"), "b");

    // b re-declares http on 9090: the same rule now admits 9090, not 8080.
    v.endpoints[1].named_ports = vec!["http=9090/TCP".parse().unwrap()];
    program(&mut dp, &mut state, &v);
    assert!(
        tcp_from(&topo, 0, b(8080)).is_err(),
        "a -> b:8080 after the change"
    );
    assert_eq!(
        tcp_from(&topo, 0, b(9090)).expect("a -> b:9090 is http now"),
        "b"
    );
}
