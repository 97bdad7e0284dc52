use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::json;

use super::*;
use crate::identity;
use crate::identity::{
    CIDR_BASE, HEALTH, HOST, INGRESS, INIT, KUBE_APISERVER, REMOTE_NODE, UNMANAGED, WORLD,
};
use crate::labels::Labels;
use crate::policy::{evaluate, Decision, FlowProtocol, Peer, Subject, Traffic, Verdict};
use crate::policy::{Direction, Entity, NamedPort, PolicySpec};
use crate::service::{Algorithm, ServiceSpec};
use crate::workload::{DesiredProbe, DesiredWorkload, WorkloadKind};

// ---------------------------------------------------------------------------------------
// Fixtures

fn labels(s: &str) -> Labels {
    s.split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("k=v");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().expect("test IP")).collect()
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}

fn node(id: &str, cluster: &str, addrs: &[&str], l: &str) -> NodeView {
    NodeView {
        id: id.into(),
        cluster_id: cluster.into(),
        name: format!("{id}-name"),
        addresses: ips(addrs),
        labels: labels(l),
    }
}

fn ep(id: &str, cluster: &str, node: &str, l: &str, addrs: &[&str], identity: u32) -> EndpointView {
    EndpointView {
        named_ports: vec![],
        id: id.into(),
        cluster_id: cluster.into(),
        node_id: node.into(),
        name: id.into(),
        labels: labels(l),
        ips: ips(addrs),
        identity,
    }
}

fn policy(name: &str, specs: &[serde_json::Value], clusters: Option<&[&str]>) -> PolicyView {
    PolicyView {
        id: format!("id-{name}"),
        name: name.into(),
        specs: specs
            .iter()
            .map(|s| serde_json::from_value(s.clone()).expect("test spec parses"))
            .collect(),
        clusters: clusters.map(|cs| cs.iter().map(|c| c.to_string()).collect()),
    }
}

const WEB: u32 = 300;
const FRONTEND: u32 = 301;
const DB: u32 = 302;

/// Cluster c1: nodes n1, n2; web on both, frontend on n2, db on n1. Cluster c2: node m1
/// with a frontend (same labels, same identity: identities are tenant-wide).
fn base() -> TenantView {
    TenantView {
        nodes: vec![
            node("n1", "c1", &["10.0.0.1", "fd00::1"], "zone=a"),
            node("n2", "c1", &["10.0.0.2"], "zone=b"),
            node("m1", "c2", &["10.9.0.1"], "zone=a"),
        ],
        endpoints: vec![
            ep("web-1", "c1", "n1", "app=web", &["10.1.0.1"], WEB),
            ep("web-2", "c1", "n2", "app=web", &["10.1.0.2"], WEB),
            ep("fe-1", "c1", "n2", "app=frontend", &["10.1.0.3"], FRONTEND),
            ep("db-1", "c1", "n1", "app=db", &["10.1.0.4", "fd01::4"], DB),
            ep("fe-9", "c2", "m1", "app=frontend", &["10.9.1.1"], FRONTEND),
        ],
        policies: vec![],
        services: vec![],
        workloads: vec![],
        probes: vec![],
        clusters: vec![],
    }
}

fn with_policies(policies: Vec<PolicyView>) -> TenantView {
    TenantView { policies, ..base() }
}

/// A rule without its origin, for compact expectations.
type Bare = (
    Direction,
    Option<u32>,
    Option<u8>,
    Option<(u16, u16)>,
    Action,
    bool,
);

fn bare(state: &NodeDesiredState, ep: &str) -> Vec<Bare> {
    state
        .policy
        .get(ep)
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    (
                        r.direction,
                        r.peer_identity,
                        r.proto,
                        r.ports,
                        r.action,
                        r.l7,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn endpoint<'a>(state: &'a NodeDesiredState, id: &str) -> &'a DesiredEndpoint {
    state
        .endpoints
        .iter()
        .find(|e| e.id == id)
        .expect("endpoint present")
}

fn compile_ok(view: &TenantView, node: &str) -> NodeDesiredState {
    compile(view, node).expect("compiles")
}

use Action::{Allow, Deny};
use Direction::{Egress, Ingress};

const TCP: Option<u8> = Some(PROTO_TCP);

// ---------------------------------------------------------------------------------------
// Peers, ports, actions

#[test]
fn endpoint_selector_peers_resolve_to_identities_of_the_cluster() {
    let view = with_policies(vec![policy(
        "web",
        &[json!({
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                 "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
                {"fromEndpoints": [{"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "web"]}]}]},
                {"fromEndpoints": [{"matchLabels": {"app": "nobody"}}]}
            ]
        })],
        None,
    )]);
    let s = compile_ok(&view, "n1");
    assert_eq!(
        bare(&s, "web-1"),
        vec![
            (Ingress, Some(WEB), None, None, Allow, false),
            (Ingress, Some(FRONTEND), TCP, Some((80, 80)), Allow, false),
            (Ingress, Some(DB), None, None, Allow, false),
        ]
    );
    let web = endpoint(&s, "web-1");
    assert!(web.enforce_ingress && !web.enforce_egress);
    // db-1 is not selected: no rules, no enforcement.
    assert!(!s.policy.contains_key("db-1"));
    assert!(!endpoint(&s, "db-1").enforce_ingress);
    assert_eq!(
        s.policy["web-1"][1].origin, "web specs[0].ingress[0]",
        "origin names the policy and rule"
    );
}

#[test]
fn entities_table() {
    let cluster: Vec<u32> = vec![
        HOST,
        UNMANAGED,
        HEALTH,
        INIT,
        REMOTE_NODE,
        KUBE_APISERVER,
        INGRESS,
        WEB,
        FRONTEND,
        DB,
    ];
    let mut cluster_sorted = cluster.clone();
    cluster_sorted.sort();
    let table: Vec<(&str, Option<Vec<u32>>)> = vec![
        ("host", Some(vec![HOST])),
        ("remote-node", Some(vec![REMOTE_NODE])),
        ("health", Some(vec![HEALTH])),
        ("init", Some(vec![INIT])),
        // Nothing in Weft carries these: their stand-ins, as unsupported entries.
        ("unmanaged", Some(vec![WORLD])),
        ("kube-apiserver", Some(vec![HOST, WORLD, REMOTE_NODE])),
        ("ingress", Some(vec![INGRESS])),
        ("world", Some(vec![WORLD])),
        ("cluster", Some(cluster_sorted)),
        ("all", None),
    ];
    for (entity, peers) in table {
        let view = with_policies(vec![policy(
            "p",
            &[json!({"endpointSelector": {}, "ingress": [{"fromEntities": [entity]}]})],
            None,
        )]);
        let s = compile_ok(&view, "n1");
        let got: Vec<Option<u32>> = bare(&s, "web-1").iter().map(|r| r.1).collect();
        let want: Vec<Option<u32>> = match peers {
            Some(ids) => ids.into_iter().map(Some).collect(),
            None => vec![None],
        };
        assert_eq!(got, want, "entity {entity}");
    }
}

#[test]
fn world_ipv4_and_ipv6_split_outside_addresses_by_family() {
    let view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {}, "egress": [
            {"toEntities": ["world-ipv4"]},
            {"toCIDR": ["2001:db8::/32"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}
        ]})],
        None,
    )]);
    let s = compile_ok(&view, "n1");
    let ids: BTreeMap<IpNet, u32> = s
        .ipcache
        .iter()
        .filter(|e| identity::is_cidr(e.identity))
        .map(|e| (e.prefix, e.identity))
        .collect();
    // The catch-all of the used family is added; the v6 CIDR does not count as IPv4.
    assert_eq!(
        ids.keys().copied().collect::<Vec<_>>(),
        vec![net("0.0.0.0/0"), net("2001:db8::/32")]
    );
    let mut want = vec![
        (
            Egress,
            Some(ids[&net("0.0.0.0/0")]),
            None,
            None,
            Allow,
            false,
        ),
        (
            Egress,
            Some(ids[&net("2001:db8::/32")]),
            TCP,
            Some((443, 443)),
            Allow,
            false,
        ),
    ];
    want.sort_by_key(|r| r.1);
    assert_eq!(bare(&s, "web-1"), want);
}

#[test]
fn cidr_with_except_gets_identities_so_longest_match_excludes() {
    let view = with_policies(vec![
        policy(
            "outside",
            &[
                json!({"endpointSelector": {"matchLabels": {"app": "web"}}, "egress": [
                    {"toCIDRSet": [{"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}]}
                ]}),
            ],
            None,
        ),
        policy(
            "other",
            &[
                json!({"endpointSelector": {"matchLabels": {"app": "db"}}, "egress": [
                    {"toCIDR": ["192.168.2.0/24", "192.168.1.128/25", "10.1.0.4/32"]}
                ]}),
            ],
            None,
        ),
    ]);
    let s = compile_ok(&view, "n1");
    let cidr: BTreeMap<IpNet, u32> = s
        .ipcache
        .iter()
        .filter(|e| identity::is_cidr(e.identity))
        .map(|e| (e.prefix, e.identity))
        .collect();
    // 10.1.0.4/32 is db-1's address: it keeps the endpoint identity, no CIDR identity.
    assert_eq!(
        cidr.keys().copied().collect::<Vec<_>>(),
        vec![
            net("192.168.0.0/16"),
            net("192.168.1.0/24"),
            net("192.168.1.128/25"),
            net("192.168.2.0/24")
        ]
    );
    assert!(s.ipcache.contains(&IpcacheEntry {
        prefix: net("10.1.0.4/32"),
        identity: DB
    }));
    // Inside the /16 and outside the except: the /16 itself and the /24 another policy named.
    let mut want = vec![cidr[&net("192.168.0.0/16")], cidr[&net("192.168.2.0/24")]];
    want.sort();
    let got: Vec<u32> = bare(&s, "web-1").iter().filter_map(|r| r.1).collect();
    assert_eq!(got, want);
    // db's rule on its own address matches nothing (CIDRs never match in-cluster peers).
    let db: Vec<Option<u32>> = bare(&s, "db-1").iter().map(|r| r.1).collect();
    let mut want_db = vec![
        Some(cidr[&net("192.168.2.0/24")]),
        Some(cidr[&net("192.168.1.128/25")]),
    ];
    want_db.sort();
    assert_eq!(db, want_db);
}

type PeerL4 = (Option<u32>, Option<u8>, Option<(u16, u16)>);

#[test]
fn ports_ranges_and_any_protocol() {
    let ports = |p: serde_json::Value| {
        let view = with_policies(vec![policy(
            "p",
            &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"toPorts": [p]}]})],
            None,
        )]);
        bare(&compile_ok(&view, "n1"), "web-1")
            .into_iter()
            .map(|r| (r.1, r.2, r.3))
            .collect::<Vec<_>>()
    };
    let any = [Some(PROTO_TCP), Some(PROTO_UDP), Some(PROTO_SCTP)];
    let table: Vec<(serde_json::Value, Vec<PeerL4>)> = vec![
        (
            json!({"ports": [{"port": "8000", "endPort": 8100, "protocol": "TCP"}]}),
            vec![(None, TCP, Some((8000, 8100)))],
        ),
        // endPort below port: the single port, as the evaluator.
        (
            json!({"ports": [{"port": "8000", "endPort": 7000, "protocol": "TCP"}]}),
            vec![(None, TCP, Some((8000, 8000)))],
        ),
        (
            json!({"ports": [{"port": "0", "protocol": "UDP"}]}),
            vec![(None, Some(PROTO_UDP), None)],
        ),
        (
            json!({"ports": [{"protocol": "SCTP"}]}),
            vec![(None, Some(PROTO_SCTP), None)],
        ),
        // ANY: TCP, UDP, SCTP, never ICMP.
        (
            json!({"ports": [{"port": "53"}]}),
            any.iter().map(|p| (None, *p, Some((53, 53)))).collect(),
        ),
        (
            json!({"ports": [{"port": "53", "protocol": "ANY"}]}),
            any.iter().map(|p| (None, *p, Some((53, 53)))).collect(),
        ),
        // ICMP port rule: the type is the port.
        (
            json!({"ports": [{"port": "8", "protocol": "ICMP"}]}),
            vec![(None, Some(PROTO_ICMP), Some((8, 8)))],
        ),
        // A port rule without ports: every protocol and port.
        (json!({}), vec![(None, None, None)]),
    ];
    for (input, want) in table {
        assert_eq!(ports(input.clone()), want, "{input}");
    }
}

#[test]
fn icmp_fields_compile_to_type_as_port() {
    let view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEntities": ["world"], "icmps": [{"fields": [
           {"type": 8}, {"type": "EchoRequest", "family": "IPv6"}, {"type": "Nope"}
        ]}]}]})],
        None,
    )]);
    let s = compile_ok(&view, "n1");
    assert_eq!(
        bare(&s, "web-1"),
        vec![
            (
                Ingress,
                Some(WORLD),
                Some(PROTO_ICMP),
                Some((8, 8)),
                Allow,
                false
            ),
            (
                Ingress,
                Some(WORLD),
                Some(PROTO_ICMPV6),
                Some((128, 128)),
                Allow,
                false
            ),
        ]
    );
    assert_eq!(s.unsupported.len(), 1, "{:?}", s.unsupported);
    assert!(s.unsupported[0].starts_with("p specs[0].ingress[0].icmps[0].fields[2]: "));
}

#[test]
fn deny_rules_and_l7() {
    let view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}],
                                  "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}],
                 "egress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                          "rules": {"http": [{"method": "GET"}]}}]}]})],
        None,
    )]);
    let s = compile_ok(&view, "n1");
    assert_eq!(
        bare(&s, "web-1"),
        vec![
            (Ingress, Some(DB), TCP, Some((22, 22)), Deny, false),
            // No L7 proxy: fails closed, as UNSUPPORTED_RULE.
            (
                Egress,
                None,
                TCP,
                Some((80, 80)),
                Action::Unsupported,
                false
            ),
        ]
    );
    let web = endpoint(&s, "web-1");
    assert!(web.enforce_ingress && web.enforce_egress);
}

#[test]
fn one_entry_per_key_and_no_l7_under_a_plain_allow() {
    let view = with_policies(vec![
        policy(
            "a",
            &[
                json!({"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [
                    {"fromEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
                    {"fromEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}],
                                                                                 "rules": {"http": [{"path": "/x"}]}}]},
                    {"toPorts": [{"ports": [{"port": "9000", "protocol": "TCP"}], "rules": {"http": [{"path": "/y"}]}}]},
                    {"fromEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "8050", "endPort": 8200, "protocol": "TCP"}],
                                                                                 "rules": {"http": [{"path": "/z"}]}}]}
                ]}),
            ],
            None,
        ),
        policy(
            "b",
            &[
                json!({"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [
                    {"fromEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
                    {"fromEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "8000", "endPort": 8100, "protocol": "TCP"}]}]}
                ]}),
            ],
            None,
        ),
    ]);
    let s = compile_ok(&view, "n1");
    type Row<'a> = (Option<u32>, Option<(u16, u16)>, Action, &'a str);
    let rules: Vec<Row> = s.policy["web-1"]
        .iter()
        .map(|r| (r.peer_identity, r.ports, r.action, r.origin.as_str()))
        .collect();
    use Action::Unsupported;
    assert_eq!(
        rules,
        vec![
            (
                Some(DB),
                Some((80, 80)),
                Allow,
                "a specs[0].ingress[0], b specs[0].ingress[0]"
            ),
            // The L7 rule on 8080 is gone: b allows db on 8000-8100 without L7.
            (Some(DB), Some((8000, 8100)), Allow, "b specs[0].ingress[1]"),
            // Any peer on 9000 stays unsupported: no plain allow covers it.
            (
                None,
                Some((9000, 9000)),
                Unsupported,
                "a specs[0].ingress[2]"
            ),
            // Only partly covered: kept (the datapath never lets an unsupported entry hide
            // an allow: it only names the drop reason when nothing allows).
            (
                Some(DB),
                Some((8050, 8200)),
                Unsupported,
                "a specs[0].ingress[3]"
            ),
        ]
    );
}

#[test]
fn empty_rule_matches_nothing_and_only_ports_match_any_peer() {
    let view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]})],
        None,
    )]);
    let s = compile_ok(&view, "n1");
    assert!(s.policy.is_empty());
    assert!(
        endpoint(&s, "web-1").enforce_ingress,
        "an empty rule still enforces"
    );
}

#[test]
fn enforcement_flags_follow_enable_default_deny() {
    let table = [
        (
            json!({"ingress": [{"fromEntities": ["host"]}]}),
            (true, false),
        ),
        (
            json!({"egressDeny": [{"toEntities": ["world"]}]}),
            (false, true),
        ),
        (
            json!({"ingress": [{"fromEntities": ["host"]}], "enableDefaultDeny": {"ingress": false}}),
            (false, false),
        ),
        (
            json!({"enableDefaultDeny": {"egress": true}}),
            (false, true),
        ),
        (
            json!({"egress": [{}], "enableDefaultDeny": {"ingress": true, "egress": false}}),
            (true, false),
        ),
    ];
    for (body, want) in table {
        let mut spec = body.clone();
        spec["endpointSelector"] = json!({"matchLabels": {"app": "web"}});
        let view = with_policies(vec![policy("p", &[spec], None)]);
        let s = compile_ok(&view, "n1");
        let web = endpoint(&s, "web-1");
        assert_eq!((web.enforce_ingress, web.enforce_egress), want, "{body}");
        let db = endpoint(&s, "db-1");
        assert_eq!((db.enforce_ingress, db.enforce_egress), (false, false));
    }
}

#[test]
fn deny_rules_without_default_deny_still_deny_in_the_datapath() {
    // The datapath skips lookups in a direction it does not enforce, so the compiler
    // enforces it and adds an explicit allow-any: default allow, and the deny still wins.
    let spec = json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                      "ingressDeny": [{"fromEntities": ["host"]}],
                      "enableDefaultDeny": {"ingress": false}});
    let view = with_policies(vec![policy("p", &[spec], None)]);
    let s = compile_ok(&view, "n1");
    let web = endpoint(&s, "web-1");
    assert!(web.enforce_ingress && !web.enforce_egress);
    let rules = &s.policy["web-1"];
    assert!(rules.iter().any(|r| r.direction == Direction::Ingress
        && r.action == Action::Allow
        && r.peer_identity.is_none()
        && r.proto.is_none()
        && r.ports.is_none()));
    assert!(rules
        .iter()
        .any(|r| r.action == Action::Deny && r.peer_identity == Some(identity::HOST)));
    assert!(
        rules.iter().all(|r| r.direction == Direction::Ingress),
        "egress untouched"
    );
}

#[test]
fn policies_scoped_to_clusters_apply_only_there() {
    let spec = json!({"endpointSelector": {"matchLabels": {"app": "frontend"}},
                      "egress": [{"toCIDR": ["203.0.113.0/24"]}]});
    let view = with_policies(vec![policy("c2-only", &[spec], Some(&["c2"]))]);
    let n2 = compile_ok(&view, "n2");
    assert!(n2.policy.is_empty());
    assert!(!endpoint(&n2, "fe-1").enforce_egress);
    assert!(
        n2.ipcache.iter().all(|e| !identity::is_cidr(e.identity)),
        "CIDRs of out-of-scope policies"
    );
    let m1 = compile_ok(&view, "m1");
    assert_eq!(m1.policy["fe-9"].len(), 1);
    assert!(endpoint(&m1, "fe-9").enforce_egress);
}

#[test]
fn unsupported_parts_are_reported_and_never_widen() {
    let view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
        "egress": [
           // Only an FQDN peer: must not become "any peer".
           {"toFQDNs": [{"matchName": "example.com"}],
            "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
           // Only a named port nobody declares: must not become "any port".
           {"toEndpoints": [{"matchLabels": {"app": "db"}}],
            "toPorts": [{"ports": [{"port": "postgres", "protocol": "TCP"}]}]}
        ],
        "egressDeny": [
           {"toEntities": ["host"], "toPorts": [{"ports": [{"port": "ssh", "protocol": "TCP"}]}]},
           {"toFQDNs": [{"matchPattern": "*.evil.com"}]}
        ]})],
        None,
    )]);
    let s = compile_ok(&view, "n1");
    assert_eq!(
        bare(&s, "web-1"),
        vec![
            // A deny on an undeclared named port denies nothing (never every port); an
            // FQDN deny (refused by validation) denies every outside peer.
            (Egress, Some(WORLD), None, None, Deny, false),
            // The FQDN allow fails closed, as UNSUPPORTED_RULE, on its ports.
            (
                Egress,
                Some(WORLD),
                TCP,
                Some((443, 443)),
                Action::Unsupported,
                false
            ),
        ]
    );
    assert_eq!(
        s.unsupported,
        vec![
            "p specs[0].egressDeny[1].toFQDNs[0]: toFQDNs is not compiled yet; denies every outside peer",
            "p specs[0].egress[0].toFQDNs[0]: toFQDNs is not enforced; outside peers on its ports are dropped as UNSUPPORTED_RULE",
        ]
    );
    // Reported only where the policy applies.
    let n2 = compile_ok(&view, "m1");
    assert!(n2.unsupported.is_empty());
}

#[test]
fn invalid_parts_match_nothing_on_allow_and_fail_closed_on_deny() {
    // Validation refuses all of these; the compiler must still never widen what is allowed.
    let view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
        "egress": [
           {"toEntities": ["nowhere"]},
           {"toCIDR": ["not-a-cidr"]},
           {"toCIDRSet": [{"cidr": "192.0.2.0/24", "except": ["bogus"]}]},
           {"toEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "99999", "protocol": "TCP"}]}]}
        ],
        "egressDeny": [
           {"toCIDRSet": [{"cidr": "198.51.100.0/24", "except": ["bogus"]}]}
        ]})],
        None,
    )]);
    let s = compile_ok(&view, "n1");
    let cidr = |p: &str| {
        s.ipcache
            .iter()
            .find(|e| e.prefix == net(p))
            .map(|e| e.identity)
            .expect("CIDR in ipcache")
    };
    // Only the deny survives, over its whole CIDR (the unparsable except is ignored, as the
    // evaluator does).
    assert_eq!(
        bare(&s, "web-1"),
        vec![(
            Egress,
            Some(cidr("198.51.100.0/24")),
            None,
            None,
            Deny,
            false
        )]
    );
    let paths: Vec<&str> = s
        .unsupported
        .iter()
        .map(|u| u.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        [
            "p specs[0].egressDeny[0].toCIDRSet[0].except[0]",
            "p specs[0].egress[0].toEntities[0]",
            "p specs[0].egress[1].toCIDR[0]",
            "p specs[0].egress[2].toCIDRSet[0].except[0]",
            "p specs[0].egress[3].toPorts[0].ports[0]",
        ]
    );
    assert!(
        s.unsupported[3].ends_with("the set allows nothing"),
        "{:?}",
        s.unsupported
    );
}

#[test]
fn host_endpoint_takes_node_selector_policies() {
    let view = with_policies(vec![policy(
        "hosts",
        &[json!({"nodeSelector": {"matchLabels": {"zone": "a"}},
                 "ingress": [{"fromEntities": ["remote-node"],
                              "toPorts": [{"ports": [{"port": "10250", "protocol": "TCP"}]}]}]})],
        None,
    )]);
    let n1 = compile_ok(&view, "n1");
    let host = endpoint(&n1, HOST_ENDPOINT_ID);
    assert_eq!((host.identity, host.enforce_ingress), (HOST, true));
    assert_eq!(host.ips, ips(&["10.0.0.1", "fd00::1"]));
    assert_eq!(
        bare(&n1, HOST_ENDPOINT_ID),
        vec![(
            Ingress,
            Some(REMOTE_NODE),
            TCP,
            Some((10250, 10250)),
            Allow,
            false
        )]
    );
    // Workload endpoints are not selected by a node selector, and zone=b nodes are not.
    assert!(!n1.policy.contains_key("web-1"));
    let n2 = compile_ok(&view, "n2");
    assert!(n2.policy.is_empty() && !endpoint(&n2, HOST_ENDPOINT_ID).enforce_ingress);
}

// ---------------------------------------------------------------------------------------
// ipcache, endpoints, services, errors

#[test]
fn ipcache_holds_cluster_endpoints_and_nodes() {
    let s = compile_ok(&base(), "n1");
    let want = vec![
        (net("10.0.0.1/32"), HOST),
        (net("10.0.0.2/32"), REMOTE_NODE),
        (net("10.1.0.1/32"), WEB),
        (net("10.1.0.2/32"), WEB),
        (net("10.1.0.3/32"), FRONTEND),
        (net("10.1.0.4/32"), DB),
        (net("fd00::1/128"), HOST),
        (net("fd01::4/128"), DB),
    ];
    let got: Vec<(IpNet, u32)> = s.ipcache.iter().map(|e| (e.prefix, e.identity)).collect();
    assert_eq!(got, want, "other cluster (10.9.x) left out");
    let ids: Vec<&str> = s.endpoints.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["db-1", HOST_ENDPOINT_ID, "web-1"]);
    assert_eq!(endpoint(&s, "db-1").ips, ips(&["10.1.0.4", "fd01::4"]));
    // From n2's point of view n1 is a remote node.
    let n2 = compile_ok(&base(), "n2");
    assert!(n2.ipcache.contains(&IpcacheEntry {
        prefix: net("10.0.0.1/32"),
        identity: REMOTE_NODE
    }));
    assert!(n2.ipcache.contains(&IpcacheEntry {
        prefix: net("10.0.0.2/32"),
        identity: HOST
    }));
}

#[test]
fn services_of_the_cluster_sorted_with_active_flags() {
    let spec = |backends: serde_json::Value| -> ServiceSpec {
        serde_json::from_value(json!({
            "frontends": [{"vip": "10.96.0.11", "port": 443, "protocol": "TCP"},
                          {"vip": "10.96.0.10", "port": 80, "protocol": "TCP"}],
            "backends": backends,
            "algorithm": "maglev",
            "session_affinity": {"timeout_seconds": 60}
        }))
        .expect("service spec")
    };
    let mut view = base();
    view.services = vec![
        ServiceView {
            id: "s2".into(),
            cluster_id: "c1".into(),
            name: "web".into(),
            spec: spec(json!([
                {"address": "10.1.0.2", "port": 8080},
                {"address": "10.1.0.1", "port": 8080, "state": "terminating"},
                {"address": "10.1.0.3", "port": 8080, "weight": 0},
            ])),
        },
        ServiceView {
            id: "s1".into(),
            cluster_id: "c2".into(),
            name: "elsewhere".into(),
            spec: spec(json!([])),
        },
    ];
    let s = compile_ok(&view, "n1");
    assert_eq!(s.services.len(), 1);
    let svc = &s.services[0];
    assert_eq!(
        (svc.id.as_str(), svc.algorithm, svc.affinity_timeout),
        ("s2", Algorithm::Maglev, Some(60))
    );
    let vips: Vec<String> = svc.frontends.iter().map(|f| f.vip.to_string()).collect();
    assert_eq!(vips, ["10.96.0.10", "10.96.0.11"]);
    let backends: Vec<(String, bool)> = svc
        .backends
        .iter()
        .map(|b| (b.address.to_string(), b.active))
        .collect();
    assert_eq!(
        backends,
        [
            ("10.1.0.1".to_string(), false),
            ("10.1.0.2".to_string(), true),
            ("10.1.0.3".to_string(), false)
        ]
    );
}

type Mutation = Box<dyn Fn(&mut TenantView)>;

#[test]
fn inconsistent_input_is_refused() {
    assert_eq!(
        compile(&base(), "nope"),
        Err(CompileError::UnknownNode("nope".into()))
    );
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|v| v.endpoints[0].identity = 7),
            "IdentityOutOfRange",
        ),
        (
            Box::new(|v| v.endpoints[0].identity = CIDR_BASE),
            "IdentityOutOfRange",
        ),
        (
            Box::new(|v| v.endpoints[2].identity = WEB),
            "IdentityLabelsMismatch",
        ),
        (
            Box::new(|v| v.endpoints[2].ips = ips(&["10.1.0.1"])),
            "AddressConflict",
        ),
        (
            Box::new(|v| v.nodes[1].addresses = ips(&["10.1.0.4"])),
            "AddressConflict",
        ),
        (
            Box::new(|v| v.endpoints[1].id = "web-1".into()),
            "DuplicateId",
        ),
        (
            Box::new(|v| v.endpoints[0].id = HOST_ENDPOINT_ID.into()),
            "ReservedEndpointId",
        ),
        (
            Box::new(|v| v.endpoints[0].cluster_id = "c2".into()),
            "EndpointClusterMismatch",
        ),
    ];
    for (mutate, want) in cases {
        let mut view = base();
        mutate(&mut view);
        let err = compile(&view, "n1").expect_err(want);
        assert!(format!("{err:?}").starts_with(want), "{want}: {err:?}");
    }
    // Same identity on two addresses and on another node: fine.
    let mut view = base();
    view.endpoints[1].ips = ips(&["10.1.0.1"]);
    assert!(
        compile(&view, "n1").is_ok(),
        "same identity on one address is no conflict"
    );
}

// ---------------------------------------------------------------------------------------
// A realistic tenant, for equivalence, determinism and deltas

fn realistic() -> TenantView {
    let front = "app=web,tier=front,env=prod";
    let back = "app=api,tier=back,env=prod";
    TenantView {
        nodes: vec![
            node("n1", "c1", &["10.0.0.1", "fd00::1"], "zone=a,role=worker"),
            node("n2", "c1", &["10.0.0.2", "fd00::2"], "zone=b"),
            node("n3", "c1", &["10.0.0.3"], "zone=a"),
            node("m1", "c2", &["10.9.0.1"], "zone=a"),
        ],
        endpoints: vec![
            ep("web-1", "c1", "n1", front, &["10.1.0.1"], 300),
            ep("web-2", "c1", "n2", front, &["10.1.0.2", "fd01::2"], 300),
            ep("api-1", "c1", "n1", back, &["10.1.0.3"], 301),
            ep("api-2", "c1", "n3", back, &["10.1.0.4"], 301),
            ep("db-1", "c1", "n2", "app=db,tier=data,env=prod", &["10.1.0.5"], 302),
            ep("mon-1", "c1", "n3", "app=monitor,env=ops", &["10.1.0.6"], 303),
            ep("bad-1", "c1", "n1", "app=scanner,env=dev", &["10.1.0.7"], 304),
            ep("dns-1", "c1", "n2", "app=dns,k8s-app=kube-dns", &["10.1.0.8", "fd01::8"], 305),
            ep("api-9", "c2", "m1", back, &["10.9.1.1"], 301),
        ],
        policies: vec![
            policy("web", &[json!({
                "endpointSelector": {"matchLabels": {"tier": "front"}},
                "ingress": [
                    {"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}, {"port": "80", "protocol": "TCP"}]}]},
                    {"fromEndpoints": [{"matchLabels": {"app": "monitor"}}], "toPorts": [{"ports": [{"port": "9100", "endPort": 9102}]}]},
                    // Every port of TCP, UDP and SCTP, but not ICMP.
                    {"fromEndpoints": [{"matchLabels": {"app": "api"}}], "toPorts": [{"ports": [{"protocol": "ANY"}]}]}
                ],
                "ingressDeny": [
                    {"fromCIDRSet": [{"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]}]}
                ],
                "egress": [
                    {"toEndpoints": [{"matchLabels": {"tier": "back"}}], "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}], "rules": {"http": [{"method": "GET"}]}}]},
                    {"toEndpoints": [{"matchLabels": {"k8s:k8s-app": "kube-dns"}}], "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": "*"}]}}]}
                ]
            })], None),
            policy("api", &[json!({
                "endpointSelector": {"matchLabels": {"app": "api"}},
                "ingress": [
                    {"fromEndpoints": [{"matchLabels": {"tier": "front"}}], "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]},
                    {"fromEntities": ["cluster"], "toPorts": [{"ports": [{"port": "9100", "protocol": "TCP"}]}]},
                    {"fromEntities": ["host"]}
                ],
                "egress": [
                    {"toEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}]},
                    {"toCIDRSet": [{"cidr": "203.0.113.0/24", "except": ["203.0.113.64/26"]}], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
                    {"toCIDR": ["2001:db8::/32"]},
                    {"toEntities": ["kube-apiserver"]}
                ],
                "egressDeny": [{"toCIDR": ["203.0.113.10/32"]}]
            }), json!({
                // A second spec in the same policy, selecting the same endpoints.
                "endpointSelector": {"matchLabels": {"tier": "back"}},
                "egress": [{"toEndpoints": [{"matchLabels": {"app": "web"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]
            })], None),
            policy("db", &[json!({
                "endpointSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api"}}], "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}]}],
                "ingressDeny": [{"fromEndpoints": [{"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}],
                                 "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}]}],
                "enableDefaultDeny": {"egress": true}
            })], None),
            policy("icmp", &[json!({
                "endpointSelector": {},
                "ingress": [{"fromEntities": ["cluster"], "icmps": [{"fields": [{"type": 8}, {"type": "EchoRequest", "family": "IPv6"}]}]}],
                "enableDefaultDeny": {"ingress": false}
            })], None),
            policy("block-scanner", &[json!({
                "endpointSelector": {},
                "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "scanner"}}]}],
                "enableDefaultDeny": {"ingress": false}
            })], None),
            policy("monitor", &[json!({
                "endpointSelector": {"matchLabels": {"app": "monitor"}},
                "egress": [
                    {"toEntities": ["all"], "toPorts": [{"ports": [{"port": "9100", "endPort": 9200, "protocol": "TCP"}]}]},
                    {"toEntities": ["world-ipv6"]}
                ],
                "egressDeny": [{"toEntities": ["world"], "toPorts": [{"ports": [{"port": "9150", "protocol": "TCP"}]}]}]
            })], None),
            policy("dns", &[json!({
                "endpointSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                "ingress": [{"fromEntities": ["cluster"], "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}]}]}],
                "egress": [
                    {"toEntities": ["world"], "toPorts": [{"ports": [{"port": "53"}]}]},
                    {"toCIDR": ["0.0.0.0/0"], "toPorts": [{"ports": [{"port": "853", "protocol": "TCP"}]}]}
                ]
            })], None),
            policy("hosts", &[json!({
                "nodeSelector": {"matchLabels": {"zone": "a"}},
                "ingress": [
                    {"fromEntities": ["remote-node", "health"]},
                    {"fromEndpoints": [{"matchLabels": {"app": "monitor"}}], "toPorts": [{"ports": [{"port": "9100", "protocol": "TCP"}]}]}
                ],
                "egressDeny": [{"toCIDR": ["192.0.2.0/24"]}]
            })], None),
            policy("c2-only", &[json!({
                "endpointSelector": {},
                "ingressDeny": [{"fromEntities": ["all"]}]
            })], Some(&["c2"])),
            policy("scoped-c1", &[json!({
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "egress": [{"toEntities": ["world-ipv4"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]
            })], Some(&["c3", "c1"])),
        ],
        services: vec![ServiceView {
            id: "svc-api".into(),
            cluster_id: "c1".into(),
            name: "api".into(),
            spec: serde_json::from_value(json!({
                "frontends": [{"vip": "10.96.0.20", "port": 80, "protocol": "TCP"}],
                "backends": [{"address": "10.1.0.3", "port": 8080}, {"address": "10.1.0.4", "port": 8080}]
            }))
            .expect("service spec"),
        }],
        workloads: vec![
            workload("n1", "ct-client", WorkloadKind::Pod, "10.1.0.250", &[]),
            workload("n2", "ct-echo", WorkloadKind::Pod, "10.1.0.251", &[8080, 9090]),
            workload("n1", "ct-world", WorkloadKind::World, "198.51.100.1", &[8080]),
        ],
        probes: vec![
            probe("n1", "p1", Some("ct-client"), "10.1.0.251:8080"),
            probe("n1", "p2", None, "10.1.0.251:9090"),
            probe("n2", "p3", None, "10.1.0.250:80"),
        ],
        clusters: vec![],
    }
}

fn workload(node: &str, name: &str, kind: WorkloadKind, ip: &str, ports: &[u16]) -> WorkloadView {
    WorkloadView {
        node_id: node.into(),
        workload: DesiredWorkload {
            name: name.into(),
            kind,
            ip: ip.parse().expect("ip"),
            labels: [("weft-ct".to_string(), name.to_string())].into(),
            echo_ports: ports.to_vec(),
        },
    }
}

fn probe(node: &str, id: &str, from: Option<&str>, target: &str) -> ProbeView {
    ProbeView {
        node_id: node.into(),
        probe: DesiredProbe {
            id: id.into(),
            from_workload: from.map(str::to_string),
            target: target.parse().expect("target"),
            timeout_ms: 1000,
        },
    }
}

/// Longest-prefix match over the compiled ipcache, `world` on a miss: what the datapath does.
fn lookup(state: &NodeDesiredState, ip: IpAddr) -> u32 {
    state
        .ipcache
        .iter()
        .filter(|e| e.prefix.contains(&ip))
        .max_by_key(|e| e.prefix.prefix_len())
        .map_or(WORLD, |e| e.identity)
}

/// The datapath's decision over compiled rules: deny wins, allows add up, otherwise the
/// enforcement flag decides. Returns the verdict and, for allows, whether only L7 rules matched.
fn matcher(
    state: &NodeDesiredState,
    ep: &DesiredEndpoint,
    dir: Direction,
    peer: u32,
    proto: u8,
    port: u16,
) -> (Verdict, bool) {
    let rules = state
        .policy
        .get(&ep.id)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let hits: Vec<&PolicyRule> = rules
        .iter()
        .filter(|r| {
            r.direction == dir
                && r.peer_identity.is_none_or(|p| p == peer)
                && r.proto.is_none_or(|p| p == proto)
                && r.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
        })
        .collect();
    if hits.iter().any(|r| r.action == Deny) {
        return (Verdict::Denied, false);
    }
    // The compiler's explicit allow-any for deny-only directions is the evaluator's
    // default allow, not an allow by a rule.
    let (synthetic, hits): (Vec<&PolicyRule>, Vec<&PolicyRule>) = hits
        .into_iter()
        .partition(|r| r.origin == DEFAULT_ALLOW_ORIGIN);
    let (unsupported, hits): (Vec<&PolicyRule>, Vec<&PolicyRule>) = hits
        .into_iter()
        .partition(|r| r.action == Action::Unsupported);
    if !hits.is_empty() {
        return (Verdict::Allowed, hits.iter().all(|r| r.l7));
    }
    if !synthetic.is_empty() {
        return (Verdict::DefaultAllowed, false);
    }
    let enforce = match dir {
        Ingress => ep.enforce_ingress,
        Egress => ep.enforce_egress,
    };
    if enforce && !unsupported.is_empty() {
        // Dropped as UNSUPPORTED_RULE.
        return (Verdict::Denied, true);
    }
    (
        if enforce {
            Verdict::Denied
        } else {
            Verdict::DefaultAllowed
        },
        false,
    )
}

/// Whether a deny rule applying to `subject` in `dir` names `unmanaged` or `kube-apiserver`,
/// which Weft denies through their stand-ins (world; host and remote-node for the API server).
fn denies_stand_in(specs: &[PolicySpec], subject: &Subject, dir: Direction) -> bool {
    let names = |list: &Option<Vec<String>>| {
        crate::policy::items(list)
            .iter()
            .any(|e| e == "unmanaged" || e == "kube-apiserver")
    };
    specs
        .iter()
        .filter(|p| {
            p.subject_selector()
                .is_some_and(|(k, sel)| k == subject.kind && sel.matches(&subject.labels))
        })
        .any(|p| match dir {
            Ingress => p.ingress_deny.iter().any(|r| names(&r.from_entities)),
            Egress => p.egress_deny.iter().any(|r| names(&r.to_entities)),
        })
}

fn flow_protocol(proto: u8) -> FlowProtocol {
    match proto {
        PROTO_TCP => FlowProtocol::Tcp,
        PROTO_UDP => FlowProtocol::Udp,
        PROTO_SCTP => FlowProtocol::Sctp,
        PROTO_ICMP => FlowProtocol::Icmp,
        PROTO_ICMPV6 => FlowProtocol::IcmpV6,
        other => panic!("no flow protocol {other}"),
    }
}

#[test]
fn compiled_rules_decide_every_flow_as_the_reference_evaluator() {
    let (cases, verdicts) = assert_equivalent(&realistic(), &["n1", "n2", "n3"]);
    // The tenant exercises every outcome, so a matcher that always says one thing fails.
    assert!(cases > 10_000, "{cases} cases");
    for outcome in [
        "Allowed/false",
        "Denied/true",
        "Denied/false",
        "DefaultAllowed/false",
    ] {
        assert!(
            verdicts.get(outcome).is_some_and(|n| *n > 10),
            "{outcome}: {verdicts:?}"
        );
    }
}

/// Checks every (node of c1, subject, peer, direction, protocol, port) of the view against
/// the evaluator; returns the number of cases and how many had each outcome.
fn assert_equivalent(view: &TenantView, nodes: &[&str]) -> (usize, BTreeMap<String, usize>) {
    let flows: Vec<(u8, u16)> = [PROTO_TCP]
        .iter()
        .flat_map(|p| {
            [
                22, 53, 80, 443, 853, 5432, 8000, 8080, 8100, 8101, 9099, 9100, 9101, 9102, 9103,
                9150, 9200, 9201,
            ]
            .map(|port| (*p, port))
        })
        .chain([
            (PROTO_UDP, 53),
            (PROTO_UDP, 9100),
            (PROTO_UDP, 9102),
            (PROTO_UDP, 80),
        ])
        .chain([(PROTO_SCTP, 9101), (PROTO_SCTP, 53), (PROTO_SCTP, 8080)])
        .chain([
            (PROTO_ICMP, 0),
            (PROTO_ICMP, 8),
            (PROTO_ICMPV6, 128),
            (PROTO_ICMPV6, 129),
        ])
        .collect();
    let world_ips = [
        "198.51.100.1",
        "198.51.100.5",
        "198.51.100.200",
        "203.0.113.10",
        "203.0.113.20",
        "203.0.113.70",
        "192.0.2.1",
        "8.8.8.8",
        "2001:db8::1",
        "2001:db9::1",
    ];
    let mut cases = 0usize;
    let mut verdicts = BTreeMap::new();
    for n in view.nodes.iter().filter(|n| nodes.contains(&n.id.as_str())) {
        let state = compile_ok(view, &n.id);
        let in_scope: Vec<PolicySpec> = view
            .policies
            .iter()
            .filter(|p| {
                p.clusters
                    .as_ref()
                    .is_none_or(|cs| cs.contains(&n.cluster_id))
            })
            .flat_map(|p| p.specs.clone())
            .collect();

        // Peers as the evaluator sees them, each with the address the datapath would see.
        let mut peers: Vec<(Peer, u32, String)> = Vec::new();
        for e in view
            .endpoints
            .iter()
            .filter(|e| e.cluster_id == n.cluster_id)
        {
            for ip in &e.ips {
                let p = Peer::endpoint(e.labels.clone()).with_ip(*ip);
                peers.push((p, lookup(&state, *ip), format!("{} {ip}", e.id)));
            }
        }
        for other in view.nodes.iter().filter(|o| o.cluster_id == n.cluster_id) {
            let entity = if other.id == n.id {
                Entity::Host
            } else {
                Entity::RemoteNode
            };
            for ip in &other.addresses {
                let p = Peer::entity(entity).with_ip(*ip);
                peers.push((p, lookup(&state, *ip), format!("node {} {ip}", other.id)));
            }
        }
        // Addresses of other clusters' endpoints and nodes are outside peers here.
        let elsewhere = view
            .endpoints
            .iter()
            .filter(|e| e.cluster_id != n.cluster_id)
            .flat_map(|e| e.ips.clone())
            .chain(
                view.nodes
                    .iter()
                    .filter(|o| o.cluster_id != n.cluster_id)
                    .flat_map(|o| o.addresses.clone()),
            );
        let outside: Vec<IpAddr> = world_ips
            .iter()
            .map(|ip| ip.parse().expect("test IP"))
            .chain(elsewhere)
            .collect();
        for ip in outside {
            peers.push((Peer::world(ip), lookup(&state, ip), format!("world {ip}")));
        }
        for e in [
            Entity::Health,
            Entity::Init,
            Entity::Unmanaged,
            Entity::KubeApiserver,
            Entity::Ingress,
        ] {
            let id = identity::reserved(e).expect("reserved");
            peers.push((Peer::entity(e), id, e.to_string()));
        }

        for ep in &state.endpoints {
            let subject = if ep.id == HOST_ENDPOINT_ID {
                Subject::node(n.labels.clone())
            } else {
                let e = view
                    .endpoints
                    .iter()
                    .find(|e| e.id == ep.id)
                    .expect("endpoint");
                Subject::endpoint(e.labels.clone())
            };
            for (peer, peer_id, peer_name) in &peers {
                for dir in [Ingress, Egress] {
                    for &(proto, port) in &flows {
                        let traffic = Traffic {
                            direction: dir,
                            peer: peer.clone(),
                            protocol: flow_protocol(proto),
                            port,
                            named_ports: Default::default(),
                        };
                        let want = evaluate(&in_scope, &subject, &traffic);
                        let want_l7 = matches!(
                            want.reason,
                            crate::policy::Reason::AllowedBy { l7: true, .. }
                        );
                        let got = matcher(&state, ep, dir, *peer_id, proto, port);
                        // Weft's one difference from the reference (Cilium's semantics): what
                        // needs the L7 proxy, or names a peer nothing in Weft carries, is
                        // dropped (as UNSUPPORTED_RULE where the compiler knows it), never allowed.
                        let unenforced_peer = peer.entities.iter().any(|e| {
                            crate::policy::not_enforced::entity_not_enforced(*e).is_some()
                        });
                        let stand_in_peer = [WORLD, HOST, REMOTE_NODE].contains(peer_id)
                            || *peer_id >= crate::identity::CIDR_BASE;
                        let stand_in_denied = stand_in_peer
                            && got == (Verdict::Denied, false)
                            && denies_stand_in(&in_scope, &subject, dir);
                        let fail_closed = stand_in_denied
                            || (want_l7 && got == (Verdict::Denied, true))
                            || (got == (Verdict::Denied, true) && want.verdict == Verdict::Denied)
                            || (unenforced_peer
                                && want.verdict == Verdict::Allowed
                                && got.0 == Verdict::Denied);
                        let want = if fail_closed {
                            Decision {
                                verdict: got.0,
                                reason: want.reason,
                            }
                        } else {
                            want
                        };
                        let want_l7 = if fail_closed { got.1 } else { want_l7 };
                        assert_eq!(
                            got,
                            (want.verdict, want_l7),
                            "node {} endpoint {} {dir:?} peer {peer_name} (identity {peer_id}) proto {proto} port {port}: evaluator {:?}",
                            n.id, ep.id, want.reason
                        );
                        *verdicts
                            .entry(format!("{:?}/{}", want.verdict, want_l7))
                            .or_insert(0usize) += 1;
                        cases += 1;
                    }
                }
            }
        }
    }
    (cases, verdicts)
}

/// Reverses every list of the view whose order carries no meaning.
fn reordered(view: &TenantView) -> TenantView {
    let mut v = view.clone();
    v.nodes.reverse();
    v.endpoints.reverse();
    v.policies.reverse();
    v.services.reverse();
    for e in &mut v.endpoints {
        e.ips.reverse();
    }
    for n in &mut v.nodes {
        n.addresses.reverse();
    }
    for s in &mut v.services {
        s.spec.backends.reverse();
        s.spec.frontends.reverse();
    }
    v
}

#[test]
fn same_input_gives_byte_identical_output_whatever_the_order() {
    let view = realistic();
    for n in ["n1", "n2", "n3", "m1"] {
        let a = serde_json::to_vec(&compile_ok(&view, n)).expect("serializes");
        let b = serde_json::to_vec(&compile_ok(&view, n)).expect("serializes");
        let c = serde_json::to_vec(&compile_ok(&reordered(&view), n)).expect("serializes");
        assert_eq!(a, b, "{n}");
        assert_eq!(a, c, "{n}: input order leaked into the output");
        let back: NodeDesiredState = serde_json::from_slice(&a).expect("round-trips");
        assert_eq!(back, compile_ok(&view, n));
    }
}

#[test]
fn adding_a_cidr_keeps_the_other_identities() {
    let view = realistic();
    let before = compile_ok(&view, "n1");
    let mut more = view.clone();
    more.policies.push(policy(
        "extra",
        &[json!({"endpointSelector": {}, "egress": [{"toCIDR": ["100.64.0.0/10"]}]})],
        None,
    ));
    let after = compile_ok(&more, "n1");
    for e in &before.ipcache {
        assert!(after.ipcache.contains(e), "{e:?} renumbered");
    }
    let d = diff(&before, &after);
    assert_eq!(d.ipcache_upsert.len(), 1);
    assert!(d.ipcache_remove.is_empty() && d.endpoints_remove.is_empty());
}

// ---------------------------------------------------------------------------------------
// Deltas

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

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
            e.node_id = ["n1", "n2", "n3"][rng.below(3)].to_string();
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
            assert_eq!(&apply(old, &d), new);
            assert_eq!(d.is_empty(), old == new);
            let back = diff(new, old);
            assert_eq!(&apply(new, &back), old);
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
    assert!(!d.is_empty());
}

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

#[test]
fn workloads_and_probes_go_to_their_own_node_only_and_diff_item_by_item() {
    let view = realistic();
    let n1 = compile_ok(&view, "n1");
    let names = |s: &NodeDesiredState| {
        s.workloads
            .iter()
            .map(|w| w.name.clone())
            .collect::<Vec<_>>()
    };
    let ids = |s: &NodeDesiredState| s.probes.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    assert_eq!(names(&n1), ["ct-client", "ct-world"]);
    assert_eq!(ids(&n1), ["p1", "p2"]);
    let n2 = compile_ok(&view, "n2");
    assert_eq!(names(&n2), ["ct-echo"]);
    assert_eq!(ids(&n2), ["p3"]);
    assert!(compile_ok(&view, "m1").workloads.is_empty());

    // A probe gets its result (leaves the view): only that probe is removed.
    let mut done = view.clone();
    done.probes.retain(|p| p.probe.id != "p1");
    let d = diff(&n1, &compile_ok(&done, "n1"));
    assert_eq!(d.probes_remove, ["p1"]);
    assert!(d.probes_upsert.is_empty() && d.workloads_upsert.is_empty());
    assert!(d.endpoints_upsert.is_empty() && d.policy_upsert.is_empty());
}

#[test]
fn states_stored_before_workloads_existed_still_load() {
    let mut json = serde_json::to_value(compile_ok(&realistic(), "n2")).expect("json");
    let obj = json.as_object_mut().expect("object");
    obj.remove("workloads");
    obj.remove("probes");
    let old: NodeDesiredState = serde_json::from_value(json).expect("old state loads");
    assert!(old.workloads.is_empty() && old.probes.is_empty());
}

#[test]
fn explicit_empty_peer_lists_compile_to_no_entry() {
    for (section, field) in [
        ("ingress", "fromEndpoints"),
        ("ingress", "fromCIDR"),
        ("ingress", "fromCIDRSet"),
        ("ingress", "fromEntities"),
        ("ingressDeny", "fromEndpoints"),
        ("egress", "toEndpoints"),
        ("egress", "toCIDR"),
        ("egress", "toCIDRSet"),
        ("egress", "toEntities"),
        ("egress", "toFQDNs"),
    ] {
        let view = with_policies(vec![policy(
            "p",
            &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                section: [{field: [], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]})],
            None,
        )]);
        let s = compile_ok(&view, "n1");
        let rules = bare(&s, "web-1");
        assert!(
            rules.is_empty(),
            "{section}.{field}: [] must select nobody: {rules:?}"
        );
        let ep = endpoint(&s, "web-1");
        assert!(
            ep.enforce_ingress || ep.enforce_egress,
            "{section}.{field}: still enforces"
        );
    }
    // Absent: any peer on the port.
    let view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEndpoints": null, "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]})],
        None,
    )]);
    assert_eq!(
        bare(&compile_ok(&view, "n1"), "web-1"),
        vec![(Ingress, None, TCP, Some((80, 80)), Allow, false)]
    );
}

#[test]
fn allow_host_to_local_pods_is_a_cluster_setting() {
    let spec = json!({"endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}]}],
        "ingressDeny": [{"fromEntities": ["host"], "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]});
    let mut view = with_policies(vec![policy("p", &[spec], None)]);
    let host_allow = (Ingress, Some(HOST), None, None, Allow, false);
    // Off (or a cluster without settings): the host is a peer like any other.
    for setting in [None, Some(false)] {
        view.clusters = setting
            .map(|on| {
                vec![ClusterView {
                    id: "c1".into(),
                    allow_host_to_local_pods: on,
                }]
            })
            .unwrap_or_default();
        let s = compile_ok(&view, "n1");
        assert!(!bare(&s, "web-1").contains(&host_allow), "{setting:?}");
    }
    view.clusters = vec![ClusterView {
        id: "c1".into(),
        allow_host_to_local_pods: true,
    }];
    let s = compile_ok(&view, "n1");
    let web = bare(&s, "web-1");
    assert!(web.contains(&host_allow), "{web:?}");
    // Deny rules still win, the host endpoint and non-enforcing endpoints get nothing.
    assert!(web.contains(&(Ingress, Some(HOST), TCP, Some((22, 22)), Deny, false)));
    assert!(bare(&s, "db-1").is_empty());
    assert!(bare(&s, HOST_ENDPOINT_ID).is_empty());
    let origin = &s.policy["web-1"]
        .iter()
        .find(|r| r.peer_identity == Some(HOST) && r.action == Allow)
        .expect("host allow")
        .origin;
    assert_eq!(origin, HOST_TO_LOCAL_PODS_ORIGIN);
    // Only in its own cluster.
    view.clusters[0].id = "c2".into();
    assert!(!bare(&compile_ok(&view, "n1"), "web-1").contains(&host_allow));
}

#[test]
fn named_ports_resolve_per_destination_endpoint() {
    let np = |s: &str| s.parse::<NamedPort>().expect("named port");
    let mut view = base();
    for e in &mut view.endpoints {
        e.named_ports = match e.id.as_str() {
            "web-1" => vec![np("http=8080/TCP"), np("dns=53/UDP")],
            "web-2" => vec![np("http=8081/TCP")],
            "db-1" => vec![np("postgres=5432/TCP")],
            _ => vec![],
        };
    }
    view.policies = vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                         "toPorts": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "TCP"}]}]}],
            "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}],
                             "toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}, {"port": "ssh", "protocol": "TCP"}]}]}],
            "egress": [{"toEndpoints": [{"matchLabels": {"app": "db"}}],
                        "toPorts": [{"ports": [{"port": "postgres", "protocol": "TCP"}, {"port": "http"}]}]},
                       {"toEndpoints": [{"matchLabels": {"app": "web"}}],
                        "toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}]}]}]})],
        None,
    )];
    let s = compile_ok(&view, "n1");
    assert_eq!(
        bare(&s, "web-1"),
        vec![
            // Ingress: web-1's own `http`; `dns` is UDP there, so the TCP rule matches nothing.
            (
                Ingress,
                Some(FRONTEND),
                TCP,
                Some((8080, 8080)),
                Allow,
                false
            ),
            // The deny resolves too: exactly web-1's http port, and `ssh` (undeclared)
            // denies nothing rather than every TCP port.
            (Ingress, Some(DB), TCP, Some((8080, 8080)), Deny, false),
            // Egress: the peer's declared ports; db declares no `http`.
            (Egress, Some(WEB), TCP, Some((8080, 8080)), Allow, false),
            (Egress, Some(WEB), TCP, Some((8081, 8081)), Allow, false),
            (Egress, Some(DB), TCP, Some((5432, 5432)), Allow, false),
        ]
    );
    // On n2, web-2 declares http=8081: its ingress rule is on 8081.
    let s2 = compile_ok(&view, "n2");
    assert!(bare(&s2, "web-2").contains(&(
        Ingress,
        Some(FRONTEND),
        TCP,
        Some((8081, 8081)),
        Allow,
        false
    )));
    // Nothing declared anywhere: matches nothing, allow or deny.
    let mut bare_view = view.clone();
    for e in &mut bare_view.endpoints {
        e.named_ports.clear();
    }
    let s = compile_ok(&bare_view, "n1");
    assert!(bare(&s, "web-1").is_empty(), "{:?}", bare(&s, "web-1"));
    // And the evaluator agrees flow by flow where it can say (ingress to web-1).
    let specs = &view.policies[0].specs;
    let subject = Subject::endpoint(labels("app=web"));
    let fe = Peer::endpoint(labels("app=frontend"));
    let t = Traffic::ingress(fe.clone(), FlowProtocol::Tcp, 8080).with_named_port("http", 8080);
    assert_eq!(evaluate(specs, &subject, &t).verdict, Verdict::Allowed);
    let t = Traffic::ingress(fe, FlowProtocol::Tcp, 8081).with_named_port("http", 8080);
    assert_eq!(evaluate(specs, &subject, &t).verdict, Verdict::Denied);
}
