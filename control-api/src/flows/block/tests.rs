use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use weft_model::flow::{
    DnsInfo, DropReason, FlowFilter, FlowRecord, FlowType, HttpHeader, HttpInfo, L7Info, Peer,
    Protocol, TcpFlags, Verdict,
};
use weft_model::labels::Labels;

use super::*;
use crate::flows::NewFlow;
use crate::flows::NewPeer;

fn flow(i: usize) -> NewFlow {
    let web: Arc<Labels> = Arc::new([("app".into(), "web".into())].into());
    let client: Arc<Labels> = Arc::new([("app".into(), "client".into())].into());
    let dropped = i.is_multiple_of(3);
    NewFlow {
        time: DateTime::from_timestamp_micros(1_764_158_400_000_000 + i as i64 * 1000).unwrap(),
        src: NewPeer {
            ip: format!("10.0.0.{}", i % 4 + 1).parse().unwrap(),
            port: 40000 + i as u16,
            endpoint_id: Some(Uuid::from_u128(i as u128 % 4)),
            endpoint_name: Some(format!("client-{}", i % 4)),
            identity: 300,
            labels: client,
        },
        dst: NewPeer {
            ip: if i == 5 {
                "2001:db8::1".parse().unwrap()
            } else {
                "10.0.1.1".parse().unwrap()
            },
            port: 8080,
            endpoint_id: None,
            endpoint_name: (i != 5).then(|| "web".to_string()),
            identity: if i == 5 { 2 } else { 301 },
            labels: if i == 5 { Arc::default() } else { web },
        },
        service_id: (i == 4).then(|| Uuid::from_u128(99)),
        service_name: (i == 4).then(|| "web-svc".to_string()),
        protocol: 6,
        verdict: if dropped {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        },
        drop_reason: dropped.then_some(DropReason::PolicyDenied),
        direction: "egress".into(),
        observation_point: "endpoint-egress".into(),
        tcp_flags: 2,
        bytes: 60 + i as i64,
        packets: 1,
        count: 1 + (i % 2) as i64,
        // Every third flow (from the second) is a request the L7 proxy judged, every third
        // from the third a query the DNS proxy judged.
        l7: match i % 3 {
            1 => Some(L7Info {
                http: Some(HttpInfo {
                    method: if i.is_multiple_of(2) { "GET" } else { "POST" }.into(),
                    url: format!("http://web/items/{i}?q=1"),
                    protocol: "HTTP/1.1".into(),
                    code: if i % 4 == 1 { 403 } else { 200 },
                    latency_ms: 1.25 + i as f64,
                    // Some requests with headers the rules named (one with ": " in its
                    // value), others without.
                    headers: (0..(i / 3) % 3)
                        .map(|k| HttpHeader {
                            key: format!("x-h{k}"),
                            value: format!("v: {i}"),
                        })
                        .collect(),
                }),
                dns: None,
            }),
            2 => Some(L7Info {
                http: None,
                dns: Some(DnsInfo {
                    query: format!("host-{i}.example.test."),
                    qtypes: vec!["A".into()],
                    rcode: if i == 5 { 5 } else { 0 },
                    ips: (0..i % 4).map(|k| format!("192.0.2.{k}")).collect(),
                    ttl: 30 * i as u32,
                }),
            }),
            _ => None,
        },
    }
}

fn expected(f: &NewFlow) -> FlowRecord {
    let peer = |p: &NewPeer| Peer {
        endpoint: p.endpoint_name.clone(),
        identity: p.identity,
        labels: (*p.labels).clone(),
        ip: p.ip,
        port: p.port,
    };
    FlowRecord {
        time: f.time,
        verdict: f.verdict,
        drop_reason: f.drop_reason,
        source: peer(&f.src),
        destination: peer(&f.dst),
        protocol: Protocol::from_number(u32::from(f.protocol)),
        node: "node-1".into(),
        cluster: "prod".into(),
        service: f.service_name.clone(),
        direction: f.direction.clone(),
        observation_point: f.observation_point.clone(),
        tcp_flags: TcpFlags(f.tcp_flags),
        bytes: f.bytes as u64,
        packets: f.packets as u64,
        count: f.count as u64,
        kind: if f.l7.is_some() {
            FlowType::L7
        } else {
            FlowType::L3L4
        },
        l7: f.l7.clone(),
    }
}

#[test]
fn a_block_unpacks_to_exactly_the_flows_packed() {
    let flows: Vec<NewFlow> = (0..10).map(flow).collect();
    let b = encode(&flows).unwrap();
    assert_eq!(
        (b.flows, b.min_time, b.max_time),
        (10, flows[0].time, flows[9].time)
    );
    let back = decode(
        7,
        "node-1",
        "prod",
        &b.data,
        &FlowFilter::default(),
        |_, _| true,
    )
    .unwrap();
    assert_eq!(back.len(), 10);
    for (i, (d, f)) in back.iter().zip(&flows).enumerate() {
        assert_eq!(d.record, expected(f), "flow {i}");
        assert_eq!(d.id, record_id(7, i));
        assert_eq!(d.service_id, f.service_id);
    }
    // Ids order by block, then position.
    assert!(record_id(7, MAX_FLOWS - 1) < record_id(8, 0));
    assert!(encode(&[]).is_none());
}

#[test]
fn decoding_keeps_only_what_the_filter_accepts_and_rejects_corrupt_blocks() {
    let flows: Vec<NewFlow> = (0..9).map(flow).collect();
    let b = encode(&flows).unwrap();
    let filter = FlowFilter::parse([("verdict", "DROPPED")], Utc::now()).expect("filter parses");
    let back = decode(1, "n", "c", &b.data, &filter, |_, _| true).unwrap();
    assert_eq!(
        back.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![record_id(1, 0), record_id(1, 3), record_id(1, 6)]
    );
    let err = decode(1, "n", "c", &b.data[..b.data.len() / 2], &filter, |_, _| {
        true
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("flow block 1:"), "{err}");
}

#[test]
fn filters_on_packed_columns_mean_what_they_mean_on_records() {
    let flows: Vec<NewFlow> = (0..12).map(flow).collect();
    let b = encode(&flows).unwrap();
    let all = decode(
        3,
        "node-1",
        "prod",
        &b.data,
        &FlowFilter::default(),
        |_, _| true,
    )
    .unwrap();
    for q in [
        "verdict=DROPPED",
        "not_verdict=DROPPED&protocol=tcp",
        "from_endpoint=client-1&from_endpoint=client-2",
        "to_endpoint=web&not_from_endpoint=client-0",
        "from_label=app%3Dclient&to_label=app%3Dweb",
        "to_label=app",
        "from_ip=10.0.0.0/30&to_ip=10.0.1.0/24",
        "to_ip=2001:db8::/32",
        "port=8080&from_port=40003",
        "to_identity=2",
        "drop_reason=POLICY_DENIED",
        "service=web-svc",
        "node=node-1&cluster=prod",
        "node=node-2",
        "tcp_flags=SYN",
        "tcp_flags=ACK",
        "type=L7",
        "not_type=l7",
        "http_method=post",
        "http_status=4%2B&type=l7",
        "not_http_status=403",
        "http_path=%5E/items/1",
        "dns_query=host-5",
        "not_dns_query=example&type=L7",
    ] {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).unwrap();
        let f = FlowFilter::parse(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            Utc::now(),
        )
        .unwrap();
        let want: Vec<i64> = all
            .iter()
            .filter(|d| f.matches(&d.record))
            .map(|d| d.id)
            .collect();
        let got: Vec<i64> = decode(3, "node-1", "prod", &b.data, &f, |_, _| true)
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(got, want, "{q}");
    }
    // `admit` sees each flow's time and id before it is built.
    let some = decode(
        3,
        "node-1",
        "prod",
        &b.data,
        &FlowFilter::default(),
        |_, id| id % 2 == 0,
    )
    .unwrap();
    assert_eq!(some.len(), 6);
}

#[test]
fn keys_list_what_the_flows_contain_and_skip_only_blocks_that_cannot_match() {
    let flows: Vec<NewFlow> = (0..6).map(flow).collect();
    let keys = encode(&flows).unwrap().keys;
    for k in [
        "v:DROPPED",
        "v:FORWARDED",
        "r:POLICY_DENIED",
        "p:6",
        "se:client-3",
    ] {
        assert!(keys.contains(&k.to_string()), "{k} in {keys:?}");
    }
    for k in ["de:web", "di:301", "di:2", "dp:8080", "svc:web-svc"] {
        assert!(keys.contains(&k.to_string()), "{k} in {keys:?}");
    }
    let can_match = |q: &str| {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).unwrap();
        let f = FlowFilter::parse(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            Utc::now(),
        )
        .unwrap();
        required_keys(&f.include)
            .iter()
            .all(|any| any.iter().any(|k| keys.contains(k)))
    };
    for q in [
        "verdict=DROPPED",
        "from_endpoint=client-1&to_endpoint=web",
        "port=8080",
        "to_port=8080&protocol=tcp",
        "service=web-svc",
        "to_identity=2&to_identity=9",
        "from_label=app%3Dnope",
    ] {
        assert!(can_match(q), "{q} must read the block");
    }
    for q in [
        "verdict=TRANSLATED",
        "from_endpoint=web",
        "to_port=53",
        "protocol=udp",
        "drop_reason=CT_FULL",
        "service=other",
    ] {
        assert!(!can_match(q), "{q} must skip the block");
    }
}

#[test]
fn too_many_values_of_a_kind_become_its_wildcard() {
    let flows: Vec<NewFlow> = (0..600)
        .map(|i| {
            let mut f = flow(i);
            f.dst.port = i as u16;
            f
        })
        .collect();
    let keys = encode(&flows).unwrap().keys;
    assert!(keys.contains(&"dp:*".to_string()));
    assert!(
        !keys.iter().any(|k| k.starts_with("dp:1")),
        "no single ports"
    );
    let f = FlowFilter::parse([("to_port", "5")], Utc::now()).unwrap();
    let need = required_keys(&f.include);
    assert!(need[0].iter().any(|k| keys.contains(k)));
}

#[test]
fn edges_from_a_block_equal_edges_from_its_flows_and_merge_by_summing() {
    let flows: Vec<NewFlow> = (0..10).map(flow).collect();
    let b = encode(&flows).unwrap();
    let mut from_flows = EdgeMap::default();
    for d in decode(1, "n", "c", &b.data, &FlowFilter::default(), |_, _| true).unwrap() {
        from_flows.add_decoded(&d);
    }
    let from_flows = from_flows.into_edges();
    assert_eq!(b.edges, from_flows);
    let names: Vec<(&str, &str)> = b
        .edges
        .iter()
        .map(|e| (e.s.as_str(), e.d.as_str()))
        .collect();
    let svc = format!("service:{}", Uuid::from_u128(99));
    assert_eq!(
        names,
        vec![
            ("identity:300", "identity:301"),
            ("identity:300", svc.as_str()),
            ("identity:300", "world"),
        ]
    );
    let main = &b.edges[0];
    // Flows 0..10 but 4 (service) and 5 (world); 0, 3, 6, 9 dropped; counts 1 or 2.
    assert_eq!((main.forwarded, main.dropped), (6, 6), "{main:?}");
    assert_eq!(main.src_name.as_deref(), Some("client-0"));
    assert_eq!(b.edges[1].dst_name.as_deref(), Some("web-svc"));
    let mut twice = EdgeMap::default();
    twice.merge(b.edges.clone());
    twice.merge(b.edges.clone());
    let twice = twice.into_edges();
    assert_eq!(twice[0].connections, 2 * main.connections);
    assert_eq!(twice[0].ports, main.ports);
}

/// The fuzz target `flow_block` starts from blocks this codec wrote (`fuzz/seeds/flow_block`):
/// they must stay blocks it reads. `WEFT_WRITE_FUZZ_SEEDS=1` writes them anew.
#[test]
fn the_fuzz_seeds_are_blocks_this_codec_reads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/flow_block");
    if std::env::var_os("WEFT_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("seed dir");
        for n in [1usize, 9, 40] {
            let flows: Vec<NewFlow> = (0..n).map(flow).collect();
            let b = encode(&flows).expect("a block");
            std::fs::write(dir.join(format!("block-{n}")), b.data).expect("write seed");
        }
    }
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/flow_block") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        let back = decode(1, "n", "c", &data, &FlowFilter::default(), |_, _| true);
        assert!(back.is_ok_and(|b| !b.is_empty()));
        seeds += 1;
    }
    assert!(seeds >= 3, "{seeds} seeds");
}
