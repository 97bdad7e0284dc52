//! Parsing and matching of flow filters, and the time forms.

use super::*;

#[test]
fn a_time_ending_in_a_wide_character_is_refused_not_a_panic() {
    assert!(parse_time("5é", now()).is_err());
    assert!(parse_time("é", now()).is_err());
    assert!(parse_time("", now()).is_err());
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn flow() -> FlowRecord {
    FlowRecord {
        time: now() - Duration::minutes(1),
        verdict: Verdict::Dropped,
        drop_reason: Some(DropReason::PolicyDenied),
        source: Peer {
            endpoint: Some("web-1".into()),
            identity: 300,
            labels: [("app".to_string(), "web".to_string())].into(),
            ip: "10.0.1.5".parse().unwrap(),
            port: 40000,
        },
        destination: Peer {
            endpoint: Some("db-1".into()),
            identity: 301,
            labels: [("app".to_string(), "db".to_string())].into(),
            ip: "10.0.2.7".parse().unwrap(),
            port: 5432,
        },
        protocol: Protocol::Tcp,
        node: "node-1".into(),
        cluster: "prod".into(),
        service: None,
        direction: "egress".into(),
        observation_point: "endpoint-egress".into(),
        tcp_flags: TcpFlags(0x02),
        bytes: 60,
        packets: 1,
        count: 1,
        kind: FlowType::L3L4,
        l7: None,
    }
}

fn l7_flow(method: &str, url: &str, code: u16) -> FlowRecord {
    FlowRecord {
        kind: FlowType::L7,
        l7: Some(L7Info {
            http: Some(HttpInfo {
                method: method.into(),
                url: url.into(),
                protocol: "HTTP/1.1".into(),
                code,
                latency_ms: 1.5,
                headers: Vec::new(),
            }),
            dns: None,
        }),
        observation_point: "l7-proxy".into(),
        ..flow()
    }
}

#[test]
fn dns_records_are_l7_and_filtered_by_query() {
    let dns = FlowRecord {
        kind: FlowType::L7,
        l7: Some(L7Info {
            http: None,
            dns: Some(DnsInfo {
                query: "api.allowed.test.".into(),
                qtypes: vec!["A".into()],
                rcode: 0,
                ips: vec!["192.0.2.1".into()],
                ttl: 60,
            }),
        }),
        protocol: Protocol::Udp,
        observation_point: "l7-proxy".into(),
        ..flow()
    };
    let http = l7_flow("GET", "http://weft.test/", 200);
    type Case<'a> = (&'a [(&'a str, &'a str)], [bool; 3]);
    let cases: &[Case] = &[
        // (filter, [dns, http, an L3/L4 flow])
        (&[("type", "L7")], [true, true, false]),
        (&[("dns_query", "allowed\\.test\\.$")], [true, false, false]),
        (&[("dns_query", "^other")], [false, false, false]),
        (&[("not_dns_query", "allowed")], [false, true, true]),
        // HTTP criteria never match a DNS record.
        (&[("http_status", "2+")], [false, true, false]),
    ];
    for (q, want) in cases {
        let f = filter(q);
        let got = [f.matches(&dns), f.matches(&http), f.matches(&flow())];
        assert_eq!(&got, want, "{q:?}");
    }
    let v = serde_json::to_value(&dns).unwrap();
    assert_eq!(v["l7"]["dns"]["query"], "api.allowed.test.");
    assert!(v["l7"].get("http").is_none(), "{v}");
}

#[test]
fn the_fqdn_cache_keeps_answered_names_until_their_ttl() {
    let at = |secs: i64, query: &str, rcode: u16, ips: &[&str], ttl: u32| FlowRecord {
        time: now() + chrono::Duration::seconds(secs),
        kind: FlowType::L7,
        l7: Some(L7Info {
            http: None,
            dns: Some(DnsInfo {
                query: query.into(),
                qtypes: vec!["A".into()],
                rcode,
                ips: ips.iter().map(|s| s.to_string()).collect(),
                ttl,
            }),
        }),
        ..flow()
    };
    let records = [
        at(0, "a.test.", 0, &["192.0.2.1"], 60),
        at(30, "a.test.", 0, &["192.0.2.1", "192.0.2.2"], 10),
        at(0, "gone.test.", 0, &["192.0.2.9"], 5),
        at(0, "refused.test.", 5, &[], 0),
        flow(),
    ];
    let c = fqdn_cache(&records, now() + chrono::Duration::seconds(20));
    let got: Vec<(&str, Vec<(&str, i64)>)> = c
        .items
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.ips
                    .iter()
                    .map(|i| (i.ip.as_str(), (i.expires_at - now()).num_seconds()))
                    .collect(),
            )
        })
        .collect();
    // The latest expiry per address; expired names and refused queries are left out.
    assert_eq!(
        got,
        vec![("a.test", vec![("192.0.2.1", 60), ("192.0.2.2", 40)])]
    );
    assert_eq!(
        c.items[0].last_lookup,
        now() + chrono::Duration::seconds(30)
    );
}

#[test]
fn l7_filters_match_requests_as_hubble_does() {
    let denied = l7_flow("POST", "http://weft.test/admin/users?x=1", 403);
    let ok = l7_flow("get", "http://weft.test/public/a", 200);
    type Case<'a> = (&'a [(&'a str, &'a str)], [bool; 3]);
    let cases: &[Case] = &[
        // (filter, [denied, ok, an L3/L4 flow])
        (&[("type", "l7")], [true, true, false]),
        (&[("type", "L3_L4")], [false, false, true]),
        (&[("http_method", "GET")], [false, true, false]),
        (
            &[("http_method", "post"), ("http_method", "GET")],
            [true, true, false],
        ),
        (&[("http_path", "^/admin/")], [true, false, false]),
        // The path alone: no host, no query.
        (&[("http_path", "weft\\.test")], [false, false, false]),
        (&[("http_path", "x=1")], [false, false, false]),
        // Not a regular expression: matched literally.
        (&[("http_path", "/admin/(")], [false, false, false]),
        (&[("http_path", "/admin/users(")], [false, false, false]),
        (&[("http_status", "403")], [true, false, false]),
        (&[("http_status", "4+")], [true, false, false]),
        (
            &[("http_status", "2+"), ("http_status", "403")],
            [true, true, false],
        ),
        (&[("not_http_status", "4+")], [false, true, true]),
        (
            &[("type", "l7"), ("not_http_method", "GET")],
            [true, false, false],
        ),
    ];
    for (q, want) in cases {
        let f = filter(q);
        let got = [f.matches(&denied), f.matches(&ok), f.matches(&flow())];
        assert_eq!(&got, want, "{q:?}");
    }
    for (name, bad) in [
        ("http_status", "4xx"),
        ("http_status", "600"),
        ("http_status", "40"),
        ("http_status", "45+"),
        ("http_method", "GE T"),
        ("type", "l4"),
    ] {
        let e = FlowFilter::parse([(name, bad)], now()).expect_err(bad);
        assert_eq!(e.param, name);
    }
    // The JSON shape: `type` and, for L7 records, `l7.http`.
    let v = serde_json::to_value(&denied).unwrap();
    assert_eq!(v["type"], "L7");
    assert_eq!(v["l7"]["http"]["code"], 403);
    let v = serde_json::to_value(flow()).unwrap();
    assert_eq!(v["type"], "L3_L4");
    assert!(v.get("l7").is_none());
}

fn filter(q: &[(&str, &str)]) -> FlowFilter {
    FlowFilter::parse(q.iter().copied(), now()).unwrap()
}

#[test]
fn filters_match_like_hubble_observe() {
    let f = flow();
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[], true),
        (&[("from_label", "app=web")], true),
        (&[("from_label", "app=db")], false),
        (&[("to_label", "app in (db,cache)")], true),
        (&[("from_identity", "300")], true),
        (&[("to_identity", "300")], false),
        (&[("from_endpoint", "web-1")], true),
        (&[("to_ip", "10.0.2.0/24")], true),
        (&[("to_ip", "10.0.2.8")], false),
        (&[("port", "5432")], true),
        (&[("port", "40000")], true),
        (&[("from_port", "5432")], false),
        (&[("protocol", "tcp")], true),
        (&[("protocol", "udp"), ("protocol", "TCP")], true),
        (&[("verdict", "FORWARDED")], false),
        (&[("not_verdict", "FORWARDED")], true),
        (&[("not_verdict", "dropped")], false),
        (&[("drop_reason", "POLICY_DENIED")], true),
        (&[("drop_reason", "CT_FULL")], false),
        (&[("node", "node-1"), ("cluster", "prod")], true),
        (&[("node", "node-1"), ("cluster", "staging")], false),
        (&[("service", "api")], false),
        (&[("not_service", "api")], true),
        (&[("tcp_flags", "SYN")], true),
        (&[("tcp_flags", "SYN,ACK")], false),
        (&[("tcp_flags", "SYN,ACK"), ("tcp_flags", "SYN")], true),
        (&[("since", "5m")], true),
        (&[("since", "30s")], false),
        (&[("until", "30s")], true),
        (&[("since", "2026-11-26T11:59:30Z")], false),
    ];
    for (q, want) in cases {
        assert_eq!(filter(q).matches(&f), *want, "{q:?}");
    }
}

#[test]
fn bad_parameters_are_named() {
    let cases: &[(&str, &str)] = &[
        ("verdict", "MAYBE"),
        ("from_ip", "10.0.0.300"),
        ("port", "70000"),
        ("protocol", "sctp"),
        ("tcp_flags", "SYN,XMAS"),
        ("since", "yesterday"),
        ("last", "0"),
        ("from_label", "app in (a"),
        ("not_since", "5m"),
        ("colour", "red"),
        ("not_colour", "red"),
        ("from_endpoint", ""),
        ("drop_reason", "policy denied"),
        // Stored text cannot hold NUL (found by schemathesis: a 500 from PostgreSQL).
        ("to_endpoint", "#\0x"),
        ("not_node", "n\0"),
    ];
    for (name, value) in cases {
        let e = FlowFilter::parse([(*name, *value)], now()).unwrap_err();
        assert_eq!(e.param, *name, "{e}");
    }
    let e = FlowFilter::parse([("since", "1m"), ("until", "2m")], now()).unwrap_err();
    assert_eq!(e.param, "until");
}

#[test]
fn agent_names_map_to_stable_names() {
    assert_eq!(
        DropReason::from_agent("policy denied"),
        Some(DropReason::PolicyDenied)
    );
    assert_eq!(DropReason::from_agent("CT full"), Some(DropReason::CtFull));
    assert_eq!(
        DropReason::from_agent("internal error"),
        Some(DropReason::Internal)
    );
    assert_eq!(DropReason::from_agent("3"), Some(DropReason::NoBackend));
    assert_eq!(
        DropReason::from_agent("DENY_RULE"),
        Some(DropReason::DenyRule)
    );
    assert_eq!(DropReason::from_agent("what"), Some(DropReason::Unknown));
    assert_eq!(DropReason::from_agent(""), None);
    assert_eq!(Verdict::from_agent("forwarded"), Verdict::Forwarded);
    assert_eq!(Verdict::from_agent("nonsense"), Verdict::Error);
    assert_eq!(Protocol::from_number(58), Protocol::Icmp);
}

#[test]
fn records_serialize_as_documented() {
    let v = serde_json::to_value(flow()).unwrap();
    assert_eq!(v["tcp_flags"], serde_json::json!(["SYN"]));
    assert_eq!(v["protocol"], "TCP");
    assert_eq!(v["drop_reason"], "POLICY_DENIED");
    assert_eq!(v["source"]["endpoint"], "web-1");
    assert_eq!(v["service"], serde_json::Value::Null);
    let back: FlowRecord = serde_json::from_value(v).unwrap();
    assert_eq!(back, flow());
}
