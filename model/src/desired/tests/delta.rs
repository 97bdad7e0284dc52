//! Deltas.

use super::realistic::{probe, realistic};
use super::*;

/// A random variation of the realistic tenant: policies, endpoints, addresses and services
/// come and go or change.
fn mutate(rng: &mut Rng, base: &TenantView) -> TenantView {
    let mut v = base.clone();
    v.policies.retain(|_| rng.chance(70));
    v.endpoints.retain(|e| e.id == "web-1" || rng.chance(80));
    for e in &mut v.endpoints {
        if rng.chance(15) {
            e.ips = vec![IpAddr::from([10, 2, 0, rng.below(250) as u8 + 1])];
            // Fresh addresses may collide; keep them unique by owner.
            e.ips.push(IpAddr::from([
                10,
                3,
                (e.identity % 256) as u8,
                e.id.len() as u8,
            ]));
            e.ips
                .retain(|ip| matches!(ip, IpAddr::V4(v4) if v4.octets()[1] == 3));
        }
        if rng.chance(10) {
            e.node_id = ["n1", "n2", "n3"][rng.below(3)].into();
        }
    }
    if rng.chance(30) {
        v.endpoints.push(ep(
            "new-1",
            "c1",
            "n1",
            "app=new",
            &["10.4.0.1"],
            400 + rng.below(3) as u32,
        ));
    }
    if rng.chance(30) {
        v.nodes[1].addresses.push(IpAddr::from([10, 0, 1, 2]));
    }
    for (i, n) in v.nodes.iter_mut().enumerate() {
        if rng.chance(50) {
            n.pod_cidrs = vec![net(&format!("10.{}.{i}.0/24", 100 + rng.below(3)))];
        }
    }
    if rng.chance(20) {
        v.nodes.retain(|n| n.id != "n3" || rng.chance(50));
    }
    if rng.chance(30) {
        v.clusters = vec![ClusterView {
            id: "c1".into(),
            allow_host_to_local_pods: rng.chance(50),
            routing: weft_routing_mode(rng.chance(50)),
        }];
    }
    if rng.chance(30) {
        v.policies.push(policy(
            "random",
            &[json!({"endpointSelector": {}, "egress": [{"toCIDR": [format!("172.16.{}.0/24", rng.below(4))]}]})],
            None,
        ));
    }
    for s in &mut v.services {
        if rng.chance(40) {
            s.spec.backends.retain(|_| rng.chance(50));
        }
    }
    if rng.chance(20) {
        v.services.clear();
    }
    v.workloads.retain(|_| rng.chance(70));
    for w in &mut v.workloads {
        if rng.chance(20) {
            w.workload.echo_ports.push(7000 + rng.below(10) as u16);
        }
    }
    v.probes.retain(|_| rng.chance(60));
    if rng.chance(30) {
        v.probes
            .push(probe("n1", "p9", Some("ct-client"), "198.51.100.1:8080"));
    }
    v
}

fn weft_routing_mode(native: bool) -> crate::routing::RoutingMode {
    if native {
        crate::routing::RoutingMode::Native
    } else {
        crate::routing::RoutingMode::Tunnel
    }
}

#[test]
fn applying_the_diff_yields_the_new_state() {
    let base = realistic();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut states = vec![NodeDesiredState::default()];
    for _ in 0..60 {
        let view = mutate(&mut rng, &base);
        let node = ["n1", "n2", "n3"][rng.below(3)];
        // A random mutation may produce an invalid view (two endpoints on one new
        // address); those are refused, not part of this property.
        if let Ok(s) = compile(&view, node) {
            states.push(s);
        }
    }
    assert!(
        states.len() > 40,
        "too many invalid views: {}",
        states.len()
    );
    for (i, old) in states.iter().enumerate() {
        for new in states.iter().skip(i) {
            let d = diff(old, new);
            assert_eq!(&apply(old.clone(), &d), new);
            assert_eq!(d.is_empty(), old == new);
            let back = diff(new, old);
            assert_eq!(&apply(new.clone(), &back), old);
        }
        assert!(diff(old, old).is_empty());
    }
}

#[test]
fn diff_is_per_item() {
    let view = realistic();
    let old = compile_ok(&view, "n1");
    let mut changed = view.clone();
    // web-1 gets a new address: its endpoint, its ipcache entries change; rules do not.
    changed.endpoints[0].ips = ips(&["10.1.0.9"]);
    let new = compile_ok(&changed, "n1");
    let d = diff(&old, &new);
    assert_eq!(
        d.endpoints_upsert
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>(),
        ["web-1"]
    );
    assert_eq!(
        d.ipcache_upsert,
        vec![IpcacheEntry {
            prefix: net("10.1.0.9/32"),
            identity: 300
        }]
    );
    assert_eq!(d.ipcache_remove, vec![net("10.1.0.1/32")]);
    assert!(d.policy_upsert.is_empty() && d.policy_remove.is_empty());
    assert!(d.services_upsert.is_empty() && d.unsupported.is_none());
    assert!(d.nodes_upsert.is_empty() && d.nodes_remove.is_empty() && d.routing.is_none());
    assert!(!d.is_empty());
}

#[test]
fn every_node_of_the_cluster_gets_the_cluster_nodes_and_routing_mode() {
    use crate::routing::{ClusterNode, RoutingMode};
    let mut view = realistic();
    view.nodes[0].pod_cidrs = vec![net("10.100.1.0/24")];
    view.nodes[1].pod_cidrs = vec![net("10.100.2.0/24"), net("fd00:2::/64")];
    view.clusters = vec![ClusterView {
        id: "c1".into(),
        allow_host_to_local_pods: true,
        routing: RoutingMode::Native,
    }];
    let n1 = compile_ok(&view, "n1");
    assert_eq!(n1.routing, RoutingMode::Native);
    let in_c1: Vec<&NodeView> = view.nodes.iter().filter(|n| n.cluster_id == "c1").collect();
    assert_eq!(n1.nodes.len(), in_c1.len(), "the node itself included");
    assert!(n1.nodes.windows(2).all(|w| w[0].name < w[1].name));
    let n2 = &view.nodes[1];
    assert!(n1.nodes.contains(&ClusterNode {
        name: n2.name.clone(),
        addresses: n2.addresses.clone(),
        pod_cidrs: vec![net("10.100.2.0/24"), net("fd00:2::/64")],
    }));
    // A node leaving is one removal by name on every other node.
    let mut gone = view.clone();
    gone.nodes.retain(|n| n.id != n2.id);
    gone.endpoints.retain(|e| *e.node_id != *n2.id);
    let d = diff(&n1, &compile_ok(&gone, "n1"));
    assert_eq!(d.nodes_remove, vec![n2.name.clone()]);
    assert!(d.nodes_upsert.is_empty() && d.routing.is_none());
    // Without a cluster row, the default: tunnel.
    view.clusters.clear();
    assert_eq!(compile_ok(&view, "n1").routing, RoutingMode::Tunnel);
}
