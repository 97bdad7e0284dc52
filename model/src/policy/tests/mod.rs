//! Table tests of the policy spec: parsing, validation and semantics.

mod semantics;
use super::*;

fn spec(yaml: &str) -> PolicySpec {
    match serde_yaml::from_str(yaml) {
        Ok(spec) => spec,
        Err(err) => panic!("test spec does not parse: {err}\n{yaml}"),
    }
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

#[test]
fn to_fqdns_without_a_dns_rule_in_the_policy_is_advised_on() {
    let without = spec(
        "endpointSelector: {}\n\
         egress:\n\
         - toFQDNs: [{matchName: api.example.com}]\n\
         - toFQDNs: []\n",
    );
    let got = advice(std::slice::from_ref(&without));
    assert_eq!(
        got.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
        ["spec.egress[0].toFQDNs"]
    );
    assert!(got[0].1.contains("rules.dns"), "{}", got[0].1);
    let with = spec(
        r"
endpointSelector: {}
egress:
- toFQDNs: [{matchName: api.example.com}]
- toEndpoints: [{}]
  toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {dns: [{matchPattern: '*'}]}}]
",
    );
    assert!(advice(std::slice::from_ref(&with)).is_empty());
    // Several specs: paths name the spec.
    let both = advice(&[with, without]);
    assert_eq!(both.len(), 1);
    assert_eq!(both[0].0, "specs[1].egress[0].toFQDNs");
}
