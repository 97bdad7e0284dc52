//! Table tests of the policy spec: parsing, validation and semantics.

use std::net::IpAddr;

use super::*;
use crate::labels::Labels;

fn spec(yaml: &str) -> PolicySpec {
    match serde_yaml::from_str(yaml) {
        Ok(spec) => spec,
        Err(err) => panic!("test spec does not parse: {err}\n{yaml}"),
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// A realistic CNP spec using L3, L4, L7, CIDR sets with except, entities, FQDNs and denies.
pub(crate) const REALISTIC: &str = r#"
endpointSelector:
  matchLabels:
    app: web
    k8s:io.kubernetes.pod.namespace: prod
description: web tier
labels: ["io.cilium.k8s.policy.name=web"]
ingress:
  - fromEndpoints:
      - matchLabels: {app: frontend}
      - matchExpressions:
          - {key: tier, operator: In, values: [edge, api]}
    toPorts:
      - ports:
          - port: "80"
            protocol: TCP
          - port: 8443
            endPort: 8450
            protocol: TCP
        rules:
          http:
            - method: GET
              path: "/api/v[0-9]+/.*"
              headers: ["X-Request-Id"]
            - method: "POST|PUT"
              path: /upload
              host: '^web\.example\.com$'
  - fromCIDRSet:
      - cidr: 10.0.0.0/8
        except: [10.96.0.0/12]
  - fromCIDR: [192.168.1.1/24]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - fromEntities: [remote-node, health]
    icmps:
      - fields:
          - {type: 8, family: IPv4}
          - {type: EchoRequest, family: IPv6}
egress:
  - toEndpoints:
      - matchLabels:
          k8s:io.kubernetes.pod.namespace: kube-system
          k8s:k8s-app: kube-dns
    toPorts:
      - ports: [{port: "53", protocol: ANY}]
        rules:
          dns:
            - matchPattern: "*"
  - toFQDNs:
      - matchName: api.github.com
      - matchPattern: "*.s3.amazonaws.com"
    toPorts:
      - ports: [{port: "443", protocol: TCP}]
  - toCIDR: [192.0.2.0/24, "2001:db8::/32"]
  - toEntities: [kube-apiserver]
    toPorts:
      - ports: [{port: https}]
ingressDeny:
  - fromEntities: [world]
    toPorts:
      - ports: [{port: "22"}]
egressDeny:
  - toCIDRSet:
      - cidr: 169.254.169.254/32
enableDefaultDeny:
  egress: true
"#;

#[test]
fn realistic_spec_validates_and_round_trips() {
    let s = spec(REALISTIC);
    assert_eq!(s.validate(), Ok(()));
    // The number 8443 is kept as Cilium's string form.
    assert_eq!(
        s.ingress[0].to_ports[0].ports[1].port,
        Some(Port::new("8443"))
    );
    let json = serde_json::to_string(&s).expect("serialize");
    let back: PolicySpec = serde_json::from_str(&json).expect("parse back");
    assert_eq!(back, s);
    let yaml = serde_yaml::to_string(&s).expect("serialize yaml");
    assert_eq!(
        serde_yaml::from_str::<PolicySpec>(&yaml).expect("parse back yaml"),
        s
    );
}

#[test]
fn serde_shape() {
    let s = spec("endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 80}]}]}]");
    let json = serde_json::to_string(&s).expect("serialize");
    // Empty fields omitted, Cilium spellings, port as a string, protocol ANY omitted.
    assert_eq!(
        json,
        r#"{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"80"}]}]}]}"#
    );
    let s = spec("endpointSelector: {}\negress: [{toCIDRSet: [{cidr: 10.0.0.0/8}], toFQDNs: [{matchName: a.io}]}]");
    let json = serde_json::to_string(&s).expect("serialize");
    assert!(
        json.contains(r#""toCIDRSet":[{"cidr":"10.0.0.0/8"}]"#),
        "{json}"
    );
    assert!(
        json.contains(r#""toFQDNs":[{"matchName":"a.io"}]"#),
        "{json}"
    );

    let rejected = [
        "endpointSelector: {}\ningres: []",
        "endpointSelector: {}\ningress: [{fromCidr: [10.0.0.0/8]}]",
        "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 80, protocol: FOO}]}]}]",
        "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: [80]}]}]}]",
    ];
    for yaml in rejected {
        assert!(serde_yaml::from_str::<PolicySpec>(yaml).is_err(), "{yaml}");
    }

    // Cilium rule labels may be objects; they become the string form.
    let s =
        spec("endpointSelector: {}\nlabels: [{key: a, value: b, source: k8s}, {key: c}, plain]");
    assert_eq!(s.labels, ["k8s:a=b", "c", "plain"]);
}

#[test]
fn validation_table() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "endpointSelector: {}\ningress: [{fromCIDR: [10.0.0.0/8, 10.0.0.0/33]}]",
            &[("spec.ingress[0].fromCIDR[1]", "invalid CIDR \"10.0.0.0/33\": ")],
        ),
        ("endpointSelector: {}\negress: [{toCIDR: [not-an-ip]}]", &[("spec.egress[0].toCIDR[0]", "invalid CIDR \"not-an-ip\"")]),
        // Host bits are accepted, as Cilium does; a bare address is a host.
        ("endpointSelector: {}\ningress: [{fromCIDR: [10.0.0.1/8, 10.1.2.3, \"::1\"]}]", &[]),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 70000}]}]}]",
            &[("spec.ingress[0].toPorts[0].ports[0].port", "port 70000 out of range 0..65535")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: \"-1\"}]}]}]",
            &[("spec.ingress[0].toPorts[0].ports[0].port", "port -1 out of range 0..65535")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: HTTP_1}]}]}]",
            &[("spec.ingress[0].toPorts[0].ports[0].port", "invalid port \"HTTP_1\"")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 8080, endPort: 8000}]}]}]",
            &[("spec.ingress[0].toPorts[0].ports[0].endPort", "endPort 8000 is lower than port 8080")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{endPort: 8000}]}]}]",
            &[("spec.ingress[0].toPorts[0].ports[0].endPort", "endPort requires a non-zero numeric port")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: http, endPort: 8000}]}]}]",
            &[("spec.ingress[0].toPorts[0].ports[0].endPort", "endPort cannot be used with named port \"http\"")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 80, endPort: 70000}]}]}]",
            &[("spec.ingress[0].toPorts[0].ports[0].endPort", "endPort 70000 out of range")],
        ),
        (
            "endpointSelector: {}\negress: [{toEntities: [world, internet]}]",
            &[("spec.egress[0].toEntities[1]", "unknown entity \"internet\"")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{path: \"/api/(\"}]}}]}]",
            &[("spec.ingress[0].toPorts[0].rules.http[0].path", "invalid regular expression \"/api/(\"")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{method: \"GET[\"}]}}]}]",
            &[("spec.ingress[0].toPorts[0].rules.http[0].method", "invalid regular expression")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 53, protocol: UDP}], rules: {http: [{path: /}]}}]}]",
            &[("spec.ingress[0].toPorts[0].rules.http", "HTTP rules need TCP ports")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 80}], rules: {http: [{headers: [\": x\"]}]}}]}]",
            &[("spec.ingress[0].toPorts[0].rules.http[0].headers[0]", "invalid header")],
        ),
        (
            "endpointSelector: {}\negress: [{toFQDNs: [{matchPattern: \"exa mple.com\"}]}]",
            &[("spec.egress[0].toFQDNs[0].matchPattern", "invalid DNS pattern \"exa mple.com\"")],
        ),
        (
            "endpointSelector: {}\negress: [{toFQDNs: [{matchName: \"*.example.com\"}]}]",
            &[("spec.egress[0].toFQDNs[0].matchName", "invalid DNS name")],
        ),
        (
            "endpointSelector: {}\negress: [{toFQDNs: [{matchName: a.com, matchPattern: \"*.a.com\"}]}]",
            &[("spec.egress[0].toFQDNs[0]", "set either matchName or matchPattern, not both")],
        ),
        ("endpointSelector: {}\negress: [{toFQDNs: [{}]}]", &[("spec.egress[0].toFQDNs[0]", "one of matchName or matchPattern")]),
        (
            "endpointSelector: {}\ningress: [{fromCIDRSet: [{cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.1.0.0/24, \"::/0\"]}]}]",
            &[
                ("spec.ingress[0].fromCIDRSet[0].except[1]", "except \"10.1.0.0/24\" is not inside cidr \"10.0.0.0/16\""),
                ("spec.ingress[0].fromCIDRSet[0].except[2]", "is not inside cidr"),
            ],
        ),
        ("endpointSelector: {}\ningress: [{fromCIDRSet: [{except: [10.0.0.0/8]}]}]", &[("spec.ingress[0].fromCIDRSet[0].cidr", "cidr is required")]),
        (
            "endpointSelector: {}\ningressDeny: [{toPorts: [{ports: [{port: 80}], rules: {http: [{path: /}]}}]}]",
            &[("spec.ingressDeny[0].toPorts[0].rules", "L7 rules are not allowed on deny rules")],
        ),
        (
            "endpointSelector: {}\negressDeny: [{toFQDNs: [{matchName: a.com}]}]",
            &[("spec.egressDeny[0].toFQDNs", "toFQDNs is not allowed on deny rules")],
        ),
        (
            "endpointSelector: {}\ningress: [{icmps: [{fields: [{type: 300}]}]}]",
            &[("spec.ingress[0].icmps[0].fields[0].type", "ICMP type 300 out of range 0..255")],
        ),
        (
            "endpointSelector: {}\ningress: [{icmps: [{fields: [{type: PacketTooBig}]}]}]",
            &[("spec.ingress[0].icmps[0].fields[0].type", "unknown IPv4 ICMP type name \"PacketTooBig\"")],
        ),
        ("endpointSelector: {}\nnodeSelector: {}", &[("spec.nodeSelector", "endpointSelector and nodeSelector are mutually exclusive")]),
        ("ingress: [{}]", &[("spec.endpointSelector", "one of endpointSelector or nodeSelector is required")]),
        ("nodeSelector: {matchLabels: {role: edge}}\ningress: [{fromEntities: [world]}]", &[]),
        (
            "endpointSelector: {matchExpressions: [{key: app, operator: In}]}",
            &[("spec.endpointSelector.matchExpressions[0].values", "operator In needs at least one value")],
        ),
        (
            "endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: {\"reserved:host\": \"\"}}]}]",
            &[("spec.ingress[0].fromEndpoints[0].matchLabels.reserved:host", "not supported by Weft")],
        ),
        (
            "endpointSelector: {}\ningress: [{fromRequires: [{matchLabels: {a: b}}], fromNodes: [{}], fromGroups: [{aws: {}}]}]",
            &[
                ("spec.ingress[0].fromRequires", "fromRequires is not supported by Weft"),
                ("spec.ingress[0].fromNodes", "fromNodes is not supported by Weft"),
                ("spec.ingress[0].fromGroups", "fromGroups is not supported by Weft"),
            ],
        ),
        (
            "endpointSelector: {}\negress: [{toServices: [{k8sService: {serviceName: a}}], toGroups: [{}], toRequires: [{}], toNodes: [{}]}]",
            &[
                ("spec.egress[0].toServices", "toServices is not supported by Weft"),
                ("spec.egress[0].toGroups", "toGroups is not supported by Weft"),
                ("spec.egress[0].toRequires", "toRequires is not supported by Weft"),
                ("spec.egress[0].toNodes", "toNodes is not supported by Weft"),
            ],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 9092}], rules: {kafka: [{topic: a}]}}]}]",
            &[("spec.ingress[0].toPorts[0].rules.kafka", "kafka is not supported by Weft")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 80}], rules: {http: [{headerMatches: [{name: a}]}]}}]}]",
            &[("spec.ingress[0].toPorts[0].rules.http[0].headerMatches", "headerMatches is not supported by Weft")],
        ),
        (
            "endpointSelector: {}\negress: [{toCIDRSet: [{cidrGroupRef: corp}]}]",
            &[("spec.egress[0].toCIDRSet[0].cidrGroupRef", "cidrGroupRef is not supported by Weft")],
        ),
        (
            "endpointSelector: {}\ningress: [{fromEndpoints: [{}], fromCIDR: [10.0.0.0/8]}]",
            &[("spec.ingress[0]", "combining fromEndpoints and fromCIDR in one rule is not supported")],
        ),
        (
            "endpointSelector: {}\negressDeny: [{toEntities: [world], toCIDRSet: [{cidr: 10.0.0.0/8}]}]",
            &[("spec.egressDeny[0]", "combining toCIDRSet and toEntities in one rule is not supported")],
        ),
        (
            "endpointSelector: {}\negress: [{toEndpoints: [{}], toFQDNs: [{matchName: a.com}]}]",
            &[("spec.egress[0]", "combining toEndpoints and toFQDNs")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 80}]}], icmps: [{fields: [{type: 8}]}]}]",
            &[("spec.ingress[0].icmps", "icmps and toPorts cannot be in the same rule")],
        ),
        (
            "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: 53}], rules: {dns: [{matchPattern: \"*\"}]}}]}]",
            &[("spec.ingress[0].toPorts[0].rules.dns", "DNS rules are only allowed on egress")],
        ),
        // Every error is collected, in document order.
        (
            "endpointSelector: {}\ningress: [{fromCIDR: [1.2.3.4/40]}, {fromEntities: [nope]}]\negress: [{toPorts: [{ports: [{port: 99999}]}]}]",
            &[
                ("spec.ingress[0].fromCIDR[0]", "invalid CIDR"),
                ("spec.ingress[1].fromEntities[0]", "unknown entity"),
                ("spec.egress[0].toPorts[0].ports[0].port", "out of range"),
            ],
        ),
    ];
    for (yaml, want) in cases {
        let got = spec(yaml).validate_at("spec");
        assert_eq!(got.len(), want.len(), "spec:\n{yaml}\ngot: {got:#?}");
        for (err, (field, message)) in got.iter().zip(want.iter()) {
            assert_eq!(&err.field, field, "spec:\n{yaml}");
            assert!(
                err.message.contains(message),
                "spec:\n{yaml}\n{:?} does not contain {message:?}",
                err.message
            );
        }
        assert_eq!(spec(yaml).validate().is_ok(), want.is_empty());
    }
}

#[test]
fn specs_from_table() {
    let good = spec("endpointSelector: {}");
    let bad = spec("endpointSelector: {}\ningress: [{fromCIDR: [x]}]");
    assert_eq!(specs_from(Some(good.clone()), None), Ok(vec![good.clone()]));
    assert_eq!(
        specs_from(None, Some(vec![good.clone(), good.clone()])).map(|v| v.len()),
        Ok(2)
    );
    let field = |r: Result<Vec<PolicySpec>, Vec<FieldError>>| r.unwrap_err()[0].field.clone();
    assert_eq!(field(specs_from(None, None)), "spec");
    assert_eq!(field(specs_from(Some(good.clone()), Some(vec![]))), "spec");
    assert_eq!(field(specs_from(None, Some(vec![]))), "specs");
    assert_eq!(
        field(specs_from(Some(bad.clone()), None)),
        "spec.ingress[0].fromCIDR[0]"
    );
    assert_eq!(
        field(specs_from(None, Some(vec![good, bad]))),
        "specs[1].ingress[0].fromCIDR[0]"
    );
}

// ---- semantics ----

fn web() -> Subject {
    Subject::endpoint(labels(&[("app", "web")]))
}

fn pod(app: &str) -> Peer {
    Peer::endpoint(labels(&[("app", app)]))
}

use FlowProtocol::{Icmp, IcmpV6, Tcp, Udp};
use Verdict::{Allowed, DefaultAllowed, Denied};

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

#[test]
fn json_input_accepts_port_numbers_and_names() {
    let json = r#"{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":80,"protocol":"TCP"},{"port":"http"},{"port":"8080","endPort":8090}]}]}]}"#;
    let s: PolicySpec = serde_json::from_str(json).expect("parse");
    let ports: Vec<Result<PortValue, String>> = s.ingress[0].to_ports[0]
        .ports
        .iter()
        .map(|p| p.port.as_ref().map_or(Ok(PortValue::Any), Port::value))
        .collect();
    assert_eq!(
        ports,
        [
            Ok(PortValue::Number(80)),
            Ok(PortValue::Named("http".into())),
            Ok(PortValue::Number(8080))
        ]
    );
    assert!(serde_json::from_str::<PolicySpec>(
        r#"{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":80.5}]}]}]}"#
    )
    .is_err());
    assert_eq!(Port::new("0").value(), Ok(PortValue::Any));
    assert_eq!(Port::new("65535").value(), Ok(PortValue::Number(65535)));
    assert!(Port::new("65536").value().is_err());
    assert!(Port::new("99999999999999999999").value().is_err());
    assert!(Port::new("").value().is_err());
    assert!(Port::new("a--b").value().is_err());
    assert!(Port::new("sixteen-chars-xx").value().is_err());
}

#[test]
fn openapi_schema_lists_supported_fields_only() {
    use utoipa::PartialSchema;
    let ingress = serde_json::to_string(&IngressRule::schema()).expect("schema json");
    for field in [
        "fromEndpoints",
        "fromCIDR",
        "fromCIDRSet",
        "fromEntities",
        "toPorts",
        "icmps",
    ] {
        assert!(
            ingress.contains(&format!("\"{field}\"")),
            "{field} missing from {ingress}"
        );
    }
    for field in ["fromRequires", "fromNodes", "fromGroups", "authentication"] {
        assert!(
            !ingress.contains(field),
            "{field} should not be in {ingress}"
        );
    }
    let port = serde_json::to_string(&PortProtocol::schema()).expect("schema json");
    assert!(port.contains("\"endPort\""), "{port}");
    let entity = serde_json::to_string(&Entity::schema()).expect("schema json");
    assert!(
        entity.contains("\"remote-node\"") && entity.contains("\"kube-apiserver\""),
        "{entity}"
    );
}

#[test]
fn fqdn_pattern_table() {
    let cases: &[(&str, &str, bool)] = &[
        ("*", "anything.example.com", true),
        ("*.example.com", "a.example.com", true),
        ("*.example.com", "A.Example.COM.", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", "a.b.example.com", false),
        ("api-*.example.com", "api-eu.example.com", true),
        ("api-*.example.com", "api-.example.com", true),
        ("api-*.example.com", "web-eu.example.com", false),
        ("*.*.example.com", "a.b.example.com", true),
        (
            "a*b*c*d*e*f*g*h*i*j*k*l*m*n*o*p",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaq",
            false,
        ),
    ];
    for (pattern, name, want) in cases {
        let sel = FqdnSelector {
            match_pattern: Some(pattern.to_string()),
            match_name: None,
        };
        assert_eq!(eval::fqdn_matches(&sel, name), *want, "{pattern} vs {name}");
    }
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

/// The README's policy field table, walked against the parser, the validator and the
/// `NotEnforced` conditions, so it cannot drift: every field of every spec type has a row,
/// `refused` rows are refused at their path, `accepted, not enforced` rows validate and
/// carry a condition, `enforced` rows validate without one.
#[test]
fn readme_policy_table_matches_the_validator() {
    use serde_json::{json, Value};
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = readme
        .split("<!-- policy-fields:start -->")
        .nth(1)
        .and_then(|t| t.split("<!-- policy-fields:end -->").next())
        .expect("policy table markers in README.md");
    let mut rows: Vec<(String, String)> = Vec::new();
    for line in table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| field"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (keys, status) = (cells[1], cells[2]);
        let entity = keys.starts_with("entity ");
        for key in keys.split('`').skip(1).step_by(2) {
            let key = if entity {
                format!("entity {key}")
            } else {
                key.to_string()
            };
            rows.push((key, status.to_string()));
        }
    }

    // Completeness: serde lists a type's fields when it meets an unknown one.
    fn fields_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let err = serde_json::from_str::<T>(r#"{"zzz-unknown": 1}"#)
            .err()
            .expect("unknown field refused")
            .to_string();
        let list = err.split(", expected ").nth(1).unwrap_or(&err);
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect()
    }
    let types: Vec<(&str, Vec<String>)> = vec![
        ("", fields_of::<PolicySpec>()),
        ("ingress[].", fields_of::<IngressRule>()),
        ("egress[].", fields_of::<EgressRule>()),
        ("CIDRSet.", fields_of::<CidrRule>()),
        ("FQDN.", fields_of::<FqdnSelector>()),
        ("toPorts[].", fields_of::<PortRule>()),
        ("ports[].", fields_of::<PortProtocol>()),
        ("rules.", fields_of::<L7Rules>()),
        ("http[].", fields_of::<HttpRule>()),
        ("icmps[].", fields_of::<IcmpRule>()),
        ("fields[].", fields_of::<IcmpField>()),
        ("enableDefaultDeny.", fields_of::<DefaultDeny>()),
    ];
    let mut expected: Vec<String> = types
        .iter()
        .flat_map(|(prefix, fields)| fields.iter().map(move |f| format!("{prefix}{f}")))
        .collect();
    // The four rule lists share one row.
    expected.retain(|k| {
        !matches!(
            k.as_str(),
            "ingress" | "ingressDeny" | "egress" | "egressDeny"
        )
    });
    expected.extend(["ingress", "ingressDeny", "egress", "egressDeny"].map(String::from));
    expected.extend(Entity::ALL.iter().map(|e| format!("entity {e}")));
    let mut listed: Vec<String> = rows.iter().map(|(k, _)| k.clone()).collect();
    listed.sort();
    expected.sort();
    assert_eq!(
        listed, expected,
        "README policy table rows vs the spec types' fields"
    );

    // A spec using the field, and the path of the field in it.
    let under = |prefix: &str, f: &str, v: Value| -> (Value, String) {
        let tcp80 = json!([{"port": "80", "protocol": "TCP"}]);
        match prefix {
            "" => {
                let mut spec = json!({"endpointSelector": {}});
                if f == "nodeSelector" {
                    spec = json!({});
                }
                spec[f] = v;
                (spec, format!("spec.{f}"))
            }
            "ingress[]." => (
                json!({"endpointSelector": {}, "ingress": [{f: v}]}),
                format!("spec.ingress[0].{f}"),
            ),
            "egress[]." => (
                json!({"endpointSelector": {}, "egress": [{f: v}]}),
                format!("spec.egress[0].{f}"),
            ),
            "CIDRSet." => {
                let mut set = json!({"cidr": "10.0.0.0/8"});
                set[f] = v;
                (
                    json!({"endpointSelector": {}, "egress": [{"toCIDRSet": [set]}]}),
                    format!("spec.egress[0].toCIDRSet[0].{f}"),
                )
            }
            "FQDN." => (
                json!({"endpointSelector": {}, "egress": [{"toFQDNs": [{f: v}]}]}),
                format!("spec.egress[0].toFQDNs[0].{f}"),
            ),
            "toPorts[]." => (
                json!({"endpointSelector": {}, "ingress": [{"toPorts": [{f: v}]}]}),
                format!("spec.ingress[0].toPorts[0].{f}"),
            ),
            "ports[]." => {
                let mut pp = json!({"port": "80"});
                pp[f] = v;
                (
                    json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [pp]}]}]}),
                    format!("spec.ingress[0].toPorts[0].ports[0].{f}"),
                )
            }
            "rules." => (
                json!({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": tcp80, "rules": {f: v}}]}]}),
                format!("spec.egress[0].toPorts[0].rules.{f}"),
            ),
            "http[]." => (
                json!({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": tcp80, "rules": {"http": [{f: v}]}}]}]}),
                format!("spec.egress[0].toPorts[0].rules.http[0].{f}"),
            ),
            "icmps[]." => (
                json!({"endpointSelector": {}, "ingress": [{"icmps": [{f: v}]}]}),
                format!("spec.ingress[0].icmps[0].{f}"),
            ),
            "fields[]." => {
                let mut field = json!({"type": 8});
                field[f] = v;
                (
                    json!({"endpointSelector": {}, "ingress": [{"icmps": [{"fields": [field]}]}]}),
                    format!("spec.ingress[0].icmps[0].fields[0].{f}"),
                )
            }
            "enableDefaultDeny." => (
                json!({"endpointSelector": {}, "enableDefaultDeny": {f: v}}),
                format!("spec.enableDefaultDeny.{f}"),
            ),
            other => panic!("no prefix {other}"),
        }
    };
    let value = |f: &str| -> Value {
        match f {
            "endpointSelector" | "nodeSelector" | "rules" | "authentication" => json!({}),
            "ingress" | "ingressDeny" | "egress" | "egressDeny" => json!([{}]),
            "description" | "cidrGroupRef" | "l7proto" | "host" => json!("x"),
            "labels" => json!(["a"]),
            "enableDefaultDeny" => json!({"ingress": true}),
            "fromEndpoints" | "toEndpoints" => json!([{}]),
            "fromCIDR" | "toCIDR" => json!(["10.0.0.0/8"]),
            "fromCIDRSet" | "toCIDRSet" => json!([{"cidr": "10.0.0.0/8"}]),
            "fromEntities" | "toEntities" => json!(["world"]),
            "toPorts" | "ports" => json!([{"ports": [{"port": "80"}]}]),
            "icmps" => json!([{"fields": [{"type": 8}]}]),
            "fields" => json!([{"type": 8}]),
            "toFQDNs" => json!([{"matchName": "a.io"}]),
            "cidr" => json!("10.0.0.0/8"),
            "except" => json!(["10.1.0.0/16"]),
            "matchName" => json!("a.io"),
            "matchPattern" => json!("*.a.io"),
            "http" => json!([{"method": "GET"}]),
            "dns" => json!([{"matchPattern": "*"}]),
            "port" => json!("80"),
            "endPort" => json!(90),
            "protocol" => json!("TCP"),
            "method" => json!("GET"),
            "path" => json!("/"),
            "headers" => json!(["X-A"]),
            "family" => json!("IPv4"),
            "type" => json!(8),
            "ingress." | "egress." => json!(true),
            _ => json!([{}]),
        }
    };
    for (key, status) in &rows {
        let (spec, path) = if let Some(e) = key.strip_prefix("entity ") {
            (
                json!({"endpointSelector": {}, "ingress": [{"fromEntities": [e]}]}),
                "spec.ingress[0].fromEntities[0]".to_string(),
            )
        } else {
            let (prefix, f) = match key.rfind(['.']) {
                Some(i) => (&key[..=i], &key[i + 1..]),
                None => ("", key.as_str()),
            };
            let v = match (prefix, f) {
                ("ports[].", "port") => json!("80"),
                ("toPorts[].", "ports") => json!([{"port": "80"}]),
                ("enableDefaultDeny.", _) => json!(true),
                ("icmps[].", "fields") => json!([{"type": 8}]),
                _ => value(f),
            };
            under(prefix, f, v)
        };
        let parsed: PolicySpec = match serde_json::from_value(spec.clone()) {
            Ok(p) => p,
            Err(e) => panic!("{key}: sample {spec} does not parse: {e}"),
        };
        let errors = parsed.validate().err().unwrap_or_default();
        let conditions = parsed.not_enforced_at("spec");
        let covered = conditions.iter().any(|c| path.starts_with(&c.field));
        match status.as_str() {
            "refused" => assert!(
                errors.iter().any(|e| e.field == path),
                "{key}: README says refused, but {spec} gives {errors:?}"
            ),
            "accepted, not enforced" => assert!(
                errors.is_empty() && covered,
                "{key}: README says accepted, not enforced; {spec}: errors {errors:?}, conditions {conditions:?}"
            ),
            "enforced" | "enforced with difference" => assert!(
                errors.is_empty() && !covered,
                "{key}: README says {status}; {spec}: errors {errors:?}, conditions {conditions:?}"
            ),
            other => panic!("{key}: unknown status {other:?}"),
        }
    }
}
