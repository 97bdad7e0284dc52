//! Random policies, decided as the reference evaluator does.

use super::realistic::{assert_equivalent, realistic};
use super::*;

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

/// A random rule built from the blocks Cilium rules are made of, mixing freely what
/// validation would refuse (the compiler must still agree with the evaluator).
fn random_rule(rng: &mut Rng, ingress: bool, allow: bool) -> serde_json::Value {
    let dir = if ingress { "from" } else { "to" };
    let selectors = [
        json!({}),
        json!({"matchLabels": {"app": "web"}}),
        json!({"matchLabels": {"tier": "back"}}),
        json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}),
        json!({"matchLabels": {"k8s:app": "dns"}}),
        json!({"matchLabels": {"app": "nothing"}}),
    ];
    let entities = [
        "world",
        "world-ipv4",
        "world-ipv6",
        "cluster",
        "all",
        "host",
        "remote-node",
        "health",
        "kube-apiserver",
        "init",
    ];
    let cidrs = [
        "198.51.100.0/24",
        "203.0.113.0/24",
        "203.0.113.0/26",
        "0.0.0.0/0",
        "2001:db8::/32",
        "10.1.0.1/32",
        "10.0.0.0/8",
        "::/0",
    ];
    let cidr_sets = [
        json!({"cidr": "203.0.113.0/24", "except": ["203.0.113.64/26"]}),
        json!({"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.0.2.0/24"]}),
        json!({"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25", "198.51.100.0/30"]}),
    ];
    let mut rule = serde_json::Map::new();
    let peer_kinds = 1 + rng.below(2);
    for _ in 0..peer_kinds {
        match rng.below(6) {
            0 => {}
            1 => {
                rule.insert(format!("{dir}Endpoints"), json!([pick(rng, &selectors)]));
            }
            2 => {
                rule.insert(format!("{dir}Entities"), json!([pick(rng, &entities)]));
            }
            3 => {
                rule.insert(format!("{dir}CIDR"), json!([pick(rng, &cidrs)]));
            }
            4 => {
                rule.insert(format!("{dir}CIDRSet"), json!([pick(rng, &cidr_sets)]));
            }
            _ => {
                rule.insert(
                    format!("{dir}Endpoints"),
                    json!([pick(rng, &selectors), pick(rng, &selectors)]),
                );
            }
        }
    }
    let port = || -> Vec<serde_json::Value> {
        vec![
            json!({"port": "80", "protocol": "TCP"}),
            json!({"port": "53"}),
            json!({"port": "53", "protocol": "UDP"}),
            json!({"port": "0", "protocol": "TCP"}),
            json!({"protocol": "SCTP"}),
            json!({"port": "8000", "endPort": 8100, "protocol": "TCP"}),
            json!({"port": "9100", "endPort": 9102}),
            json!({"port": "8", "protocol": "ICMP"}),
            json!({"port": "443", "protocol": "ANY"}),
        ]
    };
    let ports = port();
    let icmps = [
        json!({"type": 8}),
        json!({"type": "EchoReply"}),
        json!({"type": "EchoRequest", "family": "IPv6"}),
    ];
    match rng.below(6) {
        0 => {}
        1 => {
            rule.insert("toPorts".into(), json!([{"ports": [pick(rng, &ports)]}]));
        }
        2 => {
            rule.insert("toPorts".into(), json!([{}]));
        }
        3 => {
            rule.insert("icmps".into(), json!([{"fields": [pick(rng, &icmps)]}]));
        }
        4 => {
            let mut pr = json!({"ports": [pick(rng, &ports), pick(rng, &ports)]});
            if allow && rng.chance(60) {
                pr["rules"] = json!({"http": [{"method": "GET"}]});
            }
            rule.insert("toPorts".into(), json!([pr]));
        }
        _ => {
            let l7 =
                json!({"ports": [pick(rng, &ports)], "rules": {"dns": [{"matchPattern": "*"}]}});
            rule.insert(
                "toPorts".into(),
                json!([l7, {"ports": [pick(rng, &ports)]}]),
            );
            if rng.chance(30) {
                rule.insert("icmps".into(), json!([{"fields": [pick(rng, &icmps)]}]));
            }
        }
    }
    serde_json::Value::Object(rule)
}

fn random_spec(rng: &mut Rng) -> serde_json::Value {
    let subjects = [
        json!({"endpointSelector": {}}),
        json!({"endpointSelector": {"matchLabels": {"app": "web"}}}),
        json!({"endpointSelector": {"matchLabels": {"tier": "back"}}}),
        json!({"endpointSelector": {"matchLabels": {"env": "prod"}}}),
        json!({"endpointSelector": {"matchLabels": {"app": "dns"}}}),
        json!({"nodeSelector": {"matchLabels": {"zone": "a"}}}),
    ];
    let mut spec = pick(rng, &subjects).clone();
    for (section, ingress, allow) in [
        ("ingress", true, true),
        ("ingressDeny", true, false),
        ("egress", false, true),
        ("egressDeny", false, false),
    ] {
        let odds = if allow { 60 } else { 25 };
        if rng.chance(odds) {
            let n = 1 + rng.below(3);
            spec[section] = (0..n).map(|_| random_rule(rng, ingress, allow)).collect();
        }
    }
    if rng.chance(25) {
        let mut dd = serde_json::Map::new();
        for dir in ["ingress", "egress"] {
            if rng.chance(60) {
                dd.insert(dir.into(), json!(rng.chance(50)));
            }
        }
        spec["enableDefaultDeny"] = serde_json::Value::Object(dd);
    }
    spec
}

#[test]
fn random_policies_decide_every_flow_as_the_reference_evaluator() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut total = 0;
    for round in 0..40 {
        let mut view = realistic();
        view.policies = (0..2 + rng.below(4))
            .map(|i| {
                let specs: Vec<serde_json::Value> = (0..1 + rng.below(2))
                    .map(|_| random_spec(&mut rng))
                    .collect();
                let clusters: Option<&[&str]> = if rng.chance(15) { Some(&["c2"]) } else { None };
                policy(&format!("r{round}-{i}"), &specs, clusters)
            })
            .collect();
        let node = *pick(&mut rng, &["n1", "n2", "n3", "m1"]);
        // Shown only when the test fails: the policies to reproduce it with.
        eprintln!(
            "round {round}, node {node}: {}",
            serde_json::to_string(&view.policies).unwrap_or_default()
        );
        let (cases, _) = assert_equivalent(&view, &[node]);
        total += cases;
    }
    assert!(total > 200_000, "{total}");
}
