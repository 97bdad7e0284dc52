//! Semantics tables: which traffic a set of policies allows, denies or leaves to the default.

use std::net::IpAddr;

use super::*;
use crate::labels::Labels;

use FlowProtocol::{Icmp, IcmpV6, Tcp, Udp};
use Verdict::{Allowed, DefaultAllowed, Denied};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn web() -> Subject {
    Subject::endpoint(labels(&[("app", "web")]))
}

fn pod(app: &str) -> Peer {
    Peer::endpoint(labels(&[("app", app)]))
}

/// Runs a table against one policy set.
fn check(policies: &[&str], cases: Vec<(&str, Subject, Traffic, Verdict)>) {
    let policies: Vec<PolicySpec> = policies.iter().map(|y| spec(y)).collect();
    for p in &policies {
        assert_eq!(p.validate(), Ok(()), "test policy must be valid: {p:?}");
    }
    for (name, subject, traffic, want) in cases {
        let got = evaluate(&policies, &subject, &traffic);
        assert_eq!(got.verdict, want, "{name}: {got:?}");
    }
}

#[test]
fn no_policy_allows_everything() {
    check(
        &[],
        vec![
            (
                "ingress",
                web(),
                Traffic::ingress(pod("x"), Tcp, 80),
                DefaultAllowed,
            ),
            (
                "egress",
                web(),
                Traffic::egress(Peer::world(ip("1.1.1.1")), Udp, 53),
                DefaultAllowed,
            ),
        ],
    );
}

#[test]
fn default_allow_until_selected_per_direction() {
    let allow_api_80 = r#"
endpointSelector: {matchLabels: {app: web}}
ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;
    check(
        &[allow_api_80],
        vec![
            (
                "selected, allowed peer and port",
                web(),
                Traffic::ingress(pod("api"), Tcp, 80),
                Allowed,
            ),
            (
                "selected, other port",
                web(),
                Traffic::ingress(pod("api"), Tcp, 81),
                Denied,
            ),
            (
                "selected, other protocol",
                web(),
                Traffic::ingress(pod("api"), Udp, 80),
                Denied,
            ),
            (
                "selected, other peer",
                web(),
                Traffic::ingress(pod("db"), Tcp, 80),
                Denied,
            ),
            (
                "selected, world",
                web(),
                Traffic::ingress(Peer::world(ip("8.8.8.8")), Tcp, 80),
                Denied,
            ),
            (
                "egress untouched",
                web(),
                Traffic::egress(pod("db"), Tcp, 5432),
                DefaultAllowed,
            ),
            (
                "not selected",
                Subject::endpoint(labels(&[("app", "db")])),
                Traffic::ingress(pod("x"), Tcp, 1),
                DefaultAllowed,
            ),
            (
                "node not selected by endpointSelector",
                Subject::node(labels(&[("app", "web")])),
                Traffic::ingress(pod("x"), Tcp, 1),
                DefaultAllowed,
            ),
        ],
    );
    let egress_only = "endpointSelector: {}\negress: [{toEntities: [cluster]}]";
    check(
        &[egress_only],
        vec![
            (
                "egress in cluster",
                web(),
                Traffic::egress(pod("db"), Tcp, 5432),
                Allowed,
            ),
            (
                "egress to world",
                web(),
                Traffic::egress(Peer::world(ip("1.1.1.1")), Tcp, 443),
                Denied,
            ),
            (
                "ingress untouched",
                web(),
                Traffic::ingress(Peer::world(ip("1.1.1.1")), Tcp, 443),
                DefaultAllowed,
            ),
        ],
    );
}

#[test]
fn default_deny_switches() {
    check(
        &["endpointSelector: {}\ningress: [{}]"],
        vec![
            (
                "empty rule denies all ingress",
                web(),
                Traffic::ingress(pod("api"), Tcp, 80),
                Denied,
            ),
            (
                "egress unaffected",
                web(),
                Traffic::egress(pod("api"), Tcp, 80),
                DefaultAllowed,
            ),
        ],
    );
    check(
        &["endpointSelector: {}\nenableDefaultDeny: {egress: true}"],
        vec![
            (
                "explicit egress default deny",
                web(),
                Traffic::egress(pod("api"), Tcp, 80),
                Denied,
            ),
            (
                "ingress has no rules",
                web(),
                Traffic::ingress(pod("api"), Tcp, 80),
                DefaultAllowed,
            ),
        ],
    );
    check(
        &["endpointSelector: {}\nenableDefaultDeny: {ingress: false}\ningress: [{fromEndpoints: [{matchLabels: {app: api}}]}]"],
        vec![
            ("allow rule still allows", web(), Traffic::ingress(pod("api"), Tcp, 80), Allowed),
            ("no default deny", web(), Traffic::ingress(pod("db"), Tcp, 80), DefaultAllowed),
        ],
    );
    // A deny-only policy also puts the subject in default deny, as in Cilium.
    check(
        &["endpointSelector: {}\ningressDeny: [{fromEntities: [world]}]"],
        vec![
            (
                "denied peer",
                web(),
                Traffic::ingress(Peer::world(ip("1.2.3.4")), Tcp, 80),
                Denied,
            ),
            (
                "others default-denied",
                web(),
                Traffic::ingress(pod("api"), Tcp, 80),
                Denied,
            ),
        ],
    );
    check(
        &["endpointSelector: {}\nenableDefaultDeny: {ingress: false}\ningressDeny: [{fromEntities: [world]}]"],
        vec![
            ("denied peer", web(), Traffic::ingress(Peer::world(ip("1.2.3.4")), Tcp, 80), Denied),
            ("others allowed", web(), Traffic::ingress(pod("api"), Tcp, 80), DefaultAllowed),
        ],
    );
}

#[test]
fn allow_rules_add_up_and_deny_wins() {
    let a = "endpointSelector: {matchLabels: {app: web}}\ningress: [{fromEndpoints: [{matchLabels: {app: api}}], toPorts: [{ports: [{port: 80, protocol: TCP}]}]}]";
    let b = "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 443, protocol: TCP}]}]}]";
    let c = "endpointSelector: {matchLabels: {app: web}}\ningress: [{fromEndpoints: [{matchLabels: {app: db}}]}]";
    check(
        &[a, b, c],
        vec![
            (
                "first policy",
                web(),
                Traffic::ingress(pod("api"), Tcp, 80),
                Allowed,
            ),
            (
                "second policy, any peer",
                web(),
                Traffic::ingress(Peer::world(ip("9.9.9.9")), Tcp, 443),
                Allowed,
            ),
            (
                "third policy, any port",
                web(),
                Traffic::ingress(pod("db"), Udp, 9999),
                Allowed,
            ),
            ("none", web(), Traffic::ingress(pod("api"), Tcp, 81), Denied),
        ],
    );
    let allow_all =
        "endpointSelector: {}\ningress: [{fromEntities: [all]}]\negress: [{toEntities: [all]}]";
    let deny = r#"
endpointSelector: {matchLabels: {app: web}}
ingressDeny:
  - fromEntities: [world]
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: 22}]}]
egressDeny:
  - toCIDRSet: [{cidr: 169.254.0.0/16}]
"#;
    check(
        &[allow_all, deny],
        vec![
            (
                "world denied despite allow all",
                web(),
                Traffic::ingress(Peer::world(ip("8.8.8.8")), Tcp, 80),
                Denied,
            ),
            (
                "api port 22 denied",
                web(),
                Traffic::ingress(pod("api"), Tcp, 22),
                Denied,
            ),
            (
                "api port 80 allowed",
                web(),
                Traffic::ingress(pod("api"), Tcp, 80),
                Allowed,
            ),
            (
                "metadata denied",
                web(),
                Traffic::egress(Peer::world(ip("169.254.169.254")), Tcp, 80),
                Denied,
            ),
            (
                "other egress allowed",
                web(),
                Traffic::egress(Peer::world(ip("1.1.1.1")), Tcp, 80),
                Allowed,
            ),
            (
                "deny only applies to its subjects",
                Subject::endpoint(labels(&[("app", "db")])),
                Traffic::ingress(Peer::world(ip("8.8.8.8")), Tcp, 80),
                Allowed,
            ),
        ],
    );
}

#[test]
fn ports_and_protocols() {
    let p = r#"
endpointSelector: {}
ingress:
  - toPorts:
      - ports:
          - {port: 8000, endPort: 8080, protocol: TCP}
          - {port: "53"}
          - {port: http, protocol: TCP}
  - fromEndpoints: [{matchLabels: {app: any-port}}]
    toPorts: [{ports: [{port: 0, protocol: UDP}]}]
  - fromEndpoints: [{matchLabels: {app: all-ports}}]
    toPorts: [{ports: []}]
  - fromEndpoints: [{matchLabels: {app: pinger}}]
    icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}]}]
  - fromEndpoints: [{matchLabels: {app: sctp}}]
    toPorts: [{ports: [{port: 9000, protocol: SCTP}]}]
"#;
    let from = |app: &str, proto, port| Traffic::ingress(pod(app), proto, port);
    check(
        &[p],
        vec![
            ("range start", web(), from("x", Tcp, 8000), Allowed),
            ("range end", web(), from("x", Tcp, 8080), Allowed),
            ("past range", web(), from("x", Tcp, 8081), Denied),
            ("before range", web(), from("x", Tcp, 7999), Denied),
            ("range is TCP only", web(), from("x", Udp, 8000), Denied),
            ("ANY covers UDP", web(), from("x", Udp, 53), Allowed),
            ("ANY covers TCP", web(), from("x", Tcp, 53), Allowed),
            (
                "ANY covers SCTP",
                web(),
                from("x", FlowProtocol::Sctp, 53),
                Allowed,
            ),
            ("ANY is not ICMP", web(), from("x", Icmp, 53), Denied),
            (
                "named port resolved",
                web(),
                from("x", Tcp, 8888).with_named_port("http", 8888),
                Allowed,
            ),
            (
                "named port other number",
                web(),
                from("x", Tcp, 8889).with_named_port("http", 8888),
                Denied,
            ),
            ("named port unknown", web(), from("x", Tcp, 8888), Denied),
            (
                "port 0 any UDP port",
                web(),
                from("any-port", Udp, 12345),
                Allowed,
            ),
            (
                "port 0 still UDP only",
                web(),
                from("any-port", Tcp, 12345),
                Denied,
            ),
            (
                "empty ports: all ports and protocols",
                web(),
                from("all-ports", Icmp, 0),
                Allowed,
            ),
            ("icmp echo v4", web(), from("pinger", Icmp, 8), Allowed),
            ("icmp other type", web(), from("pinger", Icmp, 0), Denied),
            ("icmpv6 echo", web(), from("pinger", IcmpV6, 128), Allowed),
            (
                "icmp rule is not TCP",
                web(),
                from("pinger", Tcp, 8),
                Denied,
            ),
            (
                "sctp",
                web(),
                from("sctp", FlowProtocol::Sctp, 9000),
                Allowed,
            ),
            ("sctp rule not TCP", web(), from("sctp", Tcp, 9000), Denied),
        ],
    );
}

#[test]
fn cidrs_entities_and_fqdns() {
    let p = r#"
endpointSelector: {}
egress:
  - toCIDRSet:
      - cidr: 10.0.0.0/8
        except: [10.1.0.0/16]
  - toCIDR: [192.0.2.1/24, "2001:db8::/32"]
    toPorts: [{ports: [{port: 443, protocol: TCP}]}]
  - toFQDNs:
      - matchName: api.github.com
      - matchPattern: "*.s3.amazonaws.com"
ingress:
  - fromEntities: [host, remote-node]
  - fromEntities: [world-ipv6]
    toPorts: [{ports: [{port: 80}]}]
"#;
    let world = |s: &str| Peer::world(ip(s));
    let out = |peer, port| Traffic::egress(peer, Tcp, port);
    let inn = |peer, port| Traffic::ingress(peer, Tcp, port);
    check(
        &[p],
        vec![
            ("in cidr", web(), out(world("10.2.3.4"), 1), Allowed),
            ("in except", web(), out(world("10.1.2.3"), 1), Denied),
            ("outside cidr", web(), out(world("11.0.0.1"), 1), Denied),
            (
                "pod IP never matches CIDR",
                web(),
                out(pod("db").with_ip(ip("10.2.3.4")), 1),
                Denied,
            ),
            (
                "host bits ignored",
                web(),
                out(world("192.0.2.200"), 443),
                Allowed,
            ),
            (
                "cidr rule port",
                web(),
                out(world("192.0.2.200"), 80),
                Denied,
            ),
            ("ipv6 cidr", web(), out(world("2001:db8::1"), 443), Allowed),
            (
                "fqdn exact",
                web(),
                out(world("140.82.1.1").with_dns_name("API.github.com."), 443),
                Allowed,
            ),
            (
                "fqdn other",
                web(),
                out(world("140.82.1.1").with_dns_name("github.com"), 443),
                Denied,
            ),
            (
                "fqdn pattern one label",
                web(),
                out(
                    world("52.1.1.1").with_dns_name("bucket.s3.amazonaws.com"),
                    443,
                ),
                Allowed,
            ),
            (
                "fqdn pattern not two labels",
                web(),
                out(world("52.1.1.1").with_dns_name("a.b.s3.amazonaws.com"), 443),
                Denied,
            ),
            (
                "fqdn pattern not bare",
                web(),
                out(world("52.1.1.1").with_dns_name("s3.amazonaws.com"), 443),
                Denied,
            ),
            ("host", web(), inn(Peer::entity(Entity::Host), 1), Allowed),
            (
                "remote node",
                web(),
                inn(Peer::entity(Entity::RemoteNode), 1),
                Allowed,
            ),
            (
                "health not listed",
                web(),
                inn(Peer::entity(Entity::Health), 1),
                Denied,
            ),
            ("pod not an entity here", web(), inn(pod("api"), 1), Denied),
            (
                "world-ipv6 v6",
                web(),
                inn(world("2001:db8::9"), 80),
                Allowed,
            ),
            (
                "world-ipv6 not v4",
                web(),
                inn(world("8.8.8.8"), 80),
                Denied,
            ),
        ],
    );
    let entities = |e: &str, dir_in: bool| {
        if dir_in {
            format!("endpointSelector: {{}}\ningress: [{{fromEntities: [{e}]}}]")
        } else {
            format!("endpointSelector: {{}}\negress: [{{toEntities: [{e}]}}]")
        }
    };
    let peers: Vec<(&str, Peer)> = vec![
        ("pod", pod("db")),
        ("host", Peer::entity(Entity::Host)),
        ("remote-node", Peer::entity(Entity::RemoteNode)),
        ("world", Peer::world(ip("1.1.1.1"))),
        (
            "bare ip",
            Peer {
                ip: Some(ip("1.1.1.1")),
                ..Default::default()
            },
        ),
        ("kube-apiserver", Peer::entity(Entity::KubeApiserver)),
    ];
    // Expected verdict per (entity, peer): true = allowed.
    let table: &[(&str, [bool; 6])] = &[
        ("all", [true, true, true, true, true, true]),
        ("cluster", [true, true, true, false, false, true]),
        ("world", [false, false, false, true, true, false]),
        ("host", [false, true, false, false, false, false]),
        ("remote-node", [false, false, true, false, false, false]),
        ("kube-apiserver", [false, false, false, false, false, true]),
    ];
    for (entity, want) in table {
        for dir_in in [true, false] {
            let policy = spec(&entities(entity, dir_in));
            for ((peer_name, peer), allowed) in peers.iter().zip(want) {
                let traffic = if dir_in {
                    Traffic::ingress(peer.clone(), Tcp, 80)
                } else {
                    Traffic::egress(peer.clone(), Tcp, 80)
                };
                let got = evaluate(std::slice::from_ref(&policy), &web(), &traffic).verdict;
                let want = if *allowed { Allowed } else { Denied };
                assert_eq!(
                    got, want,
                    "entity {entity} peer {peer_name} ingress={dir_in}"
                );
            }
        }
    }
}

#[test]
fn node_selector_and_reasons() {
    let node_policy =
        "nodeSelector: {matchLabels: {role: edge}}\ningress: [{fromEntities: [cluster]}]";
    let l7 = "endpointSelector: {matchLabels: {app: web}}\ningress: [{toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{path: /}]}}]}]";
    let policies = vec![spec(node_policy), spec(l7)];
    let edge = Subject::node(labels(&[("role", "edge")]));
    assert_eq!(
        evaluate(&policies, &edge, &Traffic::ingress(pod("a"), Tcp, 1)).verdict,
        Allowed
    );
    assert_eq!(
        evaluate(
            &policies,
            &edge,
            &Traffic::ingress(Peer::world(ip("1.1.1.1")), Tcp, 1)
        )
        .verdict,
        Denied
    );
    let endpoint_edge = Subject::endpoint(labels(&[("role", "edge")]));
    assert_eq!(
        evaluate(
            &policies,
            &endpoint_edge,
            &Traffic::ingress(Peer::world(ip("1.1.1.1")), Tcp, 1)
        )
        .verdict,
        DefaultAllowed
    );

    let d = evaluate(&policies, &web(), &Traffic::ingress(pod("a"), Tcp, 80));
    assert_eq!(
        d.reason,
        Reason::AllowedBy {
            rules: vec![RuleRef { policy: 1, rule: 0 }],
            l7: true
        }
    );
    let d = evaluate(&policies, &web(), &Traffic::ingress(pod("a"), Tcp, 81));
    assert_eq!(d.reason, Reason::DefaultDeny);
    let deny = spec(
        "endpointSelector: {}\ningressDeny: [{fromCIDR: [10.0.0.0/8]}, {fromEntities: [world]}]",
    );
    let d = evaluate(
        &[spec(l7), deny],
        &web(),
        &Traffic::ingress(Peer::world(ip("1.1.1.1")), Tcp, 80),
    );
    assert_eq!(
        d,
        Decision {
            verdict: Denied,
            reason: Reason::DeniedBy(RuleRef { policy: 1, rule: 1 })
        }
    );
}

/// Cilium: an explicitly empty (non-nil) peer list selects no peer; only an absent one leaves
/// the rule to its ports. Each `[]` form, with `toPorts`, must admit nobody.
#[test]
fn explicit_empty_peer_lists_select_no_peer() {
    let world = || Peer::world(ip("192.0.2.9"));
    let ingress_fields = ["fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"];
    for field in ingress_fields {
        let p = format!(
            "endpointSelector: {{matchLabels: {{app: web}}}}\ningress: [{{{field}: [], toPorts: [{{ports: [{{port: '80', protocol: TCP}}]}}]}}]"
        );
        check(
            &[&p],
            vec![
                (field, web(), Traffic::ingress(pod("x"), Tcp, 80), Denied),
                (field, web(), Traffic::ingress(world(), Tcp, 80), Denied),
                (
                    field,
                    web(),
                    Traffic::ingress(Peer::entity(Entity::Host), Tcp, 80),
                    Denied,
                ),
            ],
        );
        // The `[]` survives a round trip (storage keeps it).
        let s = spec(&p);
        let json = serde_json::to_string(&s).expect("serialize");
        assert!(json.contains(&format!("\"{field}\":[]")), "{json}");
        assert_eq!(serde_json::from_str::<PolicySpec>(&json).expect("parse"), s);
    }
    let egress_fields = [
        "toEndpoints",
        "toCIDR",
        "toCIDRSet",
        "toEntities",
        "toFQDNs",
    ];
    for field in egress_fields {
        let p = format!(
            "endpointSelector: {{matchLabels: {{app: web}}}}\negress: [{{{field}: [], toPorts: [{{ports: [{{port: '443', protocol: TCP}}]}}]}}]"
        );
        check(
            &[&p],
            vec![
                (field, web(), Traffic::egress(pod("x"), Tcp, 443), Denied),
                (
                    field,
                    web(),
                    Traffic::egress(world().with_dns_name("a.io"), Tcp, 443),
                    Denied,
                ),
            ],
        );
    }
    // An empty deny list denies nobody.
    check(
        &[
            "endpointSelector: {matchLabels: {app: web}}\ningress: [{toPorts: [{ports: [{port: '80'}]}]}]\ningressDeny: [{fromEndpoints: []}]",
        ],
        vec![(
            "empty deny",
            web(),
            Traffic::ingress(pod("x"), Tcp, 80),
            Allowed,
        )],
    );
    // Absent and null keep their meaning: only ports, any peer.
    for p in [
        "endpointSelector: {matchLabels: {app: web}}\ningress: [{toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]",
        "endpointSelector: {matchLabels: {app: web}}\ningress: [{fromEndpoints: null, toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]",
    ] {
        check(
            &[p],
            vec![
                ("absent", web(), Traffic::ingress(pod("x"), Tcp, 80), Allowed),
                ("absent", web(), Traffic::ingress(world(), Tcp, 80), Allowed),
                ("absent", web(), Traffic::ingress(pod("x"), Tcp, 81), Denied),
            ],
        );
        assert_eq!(spec(p).ingress[0].from_endpoints, None);
    }
    // `[]` beside a non-empty list of another kind is no combination of kinds.
    check(
        &["endpointSelector: {matchLabels: {app: web}}\ningress: [{fromEndpoints: [], fromCIDR: [192.0.2.0/24]}]"],
        vec![
            ("mixed", web(), Traffic::ingress(world(), Tcp, 1), Allowed),
            ("mixed", web(), Traffic::ingress(pod("x"), Tcp, 1), Denied),
        ],
    );
}
