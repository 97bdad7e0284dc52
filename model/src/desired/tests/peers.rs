//! Peers, ports, actions.

use super::*;

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
            // Through the L7 proxy, with the rule's HTTP rules.
            (Egress, None, TCP, Some((80, 80)), Allow, true),
        ]
    );
    let http = &s.policy["web-1"][1].http;
    assert_eq!(
        http,
        &vec![HttpMatch {
            method: Some("GET".into()),
            ..HttpMatch::default()
        }]
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
    type Row<'a> = (Option<u32>, Option<(u16, u16)>, Action, bool, &'a str);
    let rules: Vec<Row> = s.policy["web-1"]
        .iter()
        .map(|r| (r.peer_identity, r.ports, r.action, r.l7, r.origin.as_str()))
        .collect();
    assert_eq!(
        rules,
        vec![
            // Any peer on 9000: through the proxy, no plain allow covers it.
            (
                None,
                Some((9000, 9000)),
                Allow,
                true,
                "a specs[0].ingress[2]"
            ),
            (
                Some(DB),
                Some((80, 80)),
                Allow,
                false,
                "a specs[0].ingress[0], b specs[0].ingress[0]"
            ),
            // The L7 rule on 8080 is gone: b allows db on 8000-8100 without L7.
            (
                Some(DB),
                Some((8000, 8100)),
                Allow,
                false,
                "b specs[0].ingress[1]"
            ),
            // Only partly covered: the covered part goes, the rest keeps its L7 rules (the
            // datapath would otherwise pick one range for the ports both hold).
            (
                Some(DB),
                Some((8101, 8200)),
                Allow,
                true,
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
            // The FQDN allow is an entry of its own peer (never any peer), on its ports.
            (
                Egress,
                Some(identity::FQDN_PEER),
                TCP,
                Some((443, 443)),
                Action::Allow,
                false
            ),
            // A deny on an undeclared named port denies nothing (never every port); an
            // FQDN deny (refused by validation) denies every outside peer.
            (Egress, Some(WORLD), None, None, Deny, false),
        ]
    );
    assert_eq!(
        s.unsupported,
        vec![
            "p specs[0].egressDeny[1].toFQDNs[0]: toFQDNs on a deny rule denies every outside peer",
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
