//! Property tests: model → wire → model is the identity for every desired-state type, on
//! random values from a seeded generator (the failing seed is in the message), also through
//! the protobuf byte encoding for whole messages.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr};

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use weft_model::desired::{Action, HttpMatch, PolicyRule};
use weft_model::policy::eval::Direction;
use weft_model::policy::FqdnSelector;

const CASES: u64 = 300;

mod parts;
mod skew;

fn id(rng: &mut StdRng, kind: &str) -> String {
    // Short alphabet so duplicates happen and key handling is exercised.
    format!("{kind}-{}", rng.gen_range(0..40))
}

fn text(rng: &mut StdRng) -> String {
    let parts = [
        "",
        "web",
        " specs[0].ingress[1]",
        ", ",
        "é",
        "名",
        "\u{0}",
        "/",
    ];
    (0..rng.gen_range(0..4))
        .map(|_| parts[rng.gen_range(0..parts.len())])
        .collect()
}

fn opt<T>(rng: &mut StdRng, f: impl FnOnce(&mut StdRng) -> T) -> Option<T> {
    rng.gen_bool(0.5).then(|| f(rng))
}

fn list<T>(rng: &mut StdRng, max: usize, mut f: impl FnMut(&mut StdRng) -> T) -> Vec<T> {
    (0..rng.gen_range(0..=max)).map(|_| f(rng)).collect()
}

fn v4(rng: &mut StdRng) -> Ipv4Addr {
    Ipv4Addr::from(rng.gen::<u32>())
}

fn ip(rng: &mut StdRng) -> IpAddr {
    if rng.gen_bool(0.7) {
        IpAddr::V4(v4(rng))
    } else {
        IpAddr::V6(Ipv6Addr::from(rng.gen::<u128>()))
    }
}

fn net(rng: &mut StdRng) -> IpNet {
    let a = ip(rng);
    let max = if a.is_ipv4() { 32 } else { 128 };
    IpNet::new(a, rng.gen_range(0..=max)).expect("prefix length within the family")
}

fn endpoint(rng: &mut StdRng) -> DesiredEndpoint {
    DesiredEndpoint {
        id: id(rng, "ep"),
        ips: list(rng, 3, ip),
        identity: rng.gen(),
        enforce_ingress: rng.gen(),
        enforce_egress: rng.gen(),
    }
}

fn ipcache(rng: &mut StdRng) -> IpcacheEntry {
    IpcacheEntry {
        prefix: net(rng),
        identity: rng.gen(),
    }
}

fn rule(rng: &mut StdRng) -> PolicyRule {
    let action = [Action::Allow, Action::Deny, Action::Unsupported][rng.gen_range(0..3)];
    // HTTP or DNS rules come with L7 allows, and only with them (decoding refuses anything
    // else).
    let l7 = action == Action::Allow && rng.gen();
    let dns_l7 = l7 && rng.gen();
    let selector = |r: &mut StdRng| {
        if r.gen() {
            FqdnSelector {
                match_name: Some(text(r)),
                match_pattern: None,
            }
        } else {
            FqdnSelector {
                match_name: None,
                match_pattern: Some(text(r)),
            }
        }
    };
    let dns = if dns_l7 {
        let mut d = list(rng, 3, selector);
        if d.is_empty() {
            d.push(selector(rng));
        }
        d
    } else {
        Vec::new()
    };
    let fqdn = opt(rng, selector);
    let http = if l7 && !dns_l7 {
        let mut h = list(rng, 3, |r| HttpMatch {
            method: opt(r, text),
            path: opt(r, text),
            host: opt(r, text),
            headers: list(r, 2, text),
        });
        if h.is_empty() {
            h.push(HttpMatch::default());
        }
        h
    } else {
        Vec::new()
    };
    PolicyRule {
        direction: if rng.gen() {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        peer_identity: if fqdn.is_some() {
            Some(weft_model::identity::FQDN_PEER)
        } else {
            opt(rng, |r| r.gen::<u32>()).filter(|id| *id != weft_model::identity::FQDN_PEER)
        },
        proto: opt(rng, |r| r.gen()),
        ports: opt(rng, |r| (r.gen(), r.gen())),
        action,
        l7,
        http,
        dns,
        fqdn,
        origin: text(rng),
    }
}

fn service(rng: &mut StdRng) -> DesiredService {
    DesiredService {
        id: id(rng, "svc"),
        name: text(rng),
        frontends: list(rng, 3, |r| Frontend {
            vip: ip(r),
            port: r.gen(),
            protocol: if r.gen() {
                L4Protocol::Tcp
            } else {
                L4Protocol::Udp
            },
        }),
        backends: list(rng, 4, |r| DesiredBackend {
            address: ip(r),
            port: r.gen(),
            weight: r.gen(),
            active: r.gen(),
        }),
        algorithm: if rng.gen() {
            Algorithm::Random
        } else {
            Algorithm::Maglev
        },
        // 0 means "none" on the wire.
        affinity_timeout: opt(rng, |r| r.gen_range(1..=u32::MAX)),
    }
}

fn workload(rng: &mut StdRng) -> DesiredWorkload {
    DesiredWorkload {
        name: id(rng, "wl"),
        kind: if rng.gen() {
            WorkloadKind::Pod
        } else {
            WorkloadKind::World
        },
        ip: v4(rng),
        ip6: opt(rng, |r| Ipv6Addr::from(r.gen::<u128>())),
        labels: list(rng, 3, |r| (id(r, "k"), text(r)))
            .into_iter()
            .collect(),
        echo_ports: list(rng, 3, |r| r.gen()),
    }
}

fn probe(rng: &mut StdRng) -> DesiredProbe {
    DesiredProbe {
        id: id(rng, "probe"),
        // An empty name means "none" on the wire.
        from_workload: opt(rng, |r| id(r, "wl")),
        target: SocketAddr::new(ip(rng), rng.gen()),
        timeout_ms: rng.gen(),
        http: opt(rng, |r| HttpProbe {
            method: ["GET", "POST", "DELETE"][r.gen_range(0..3)].to_string(),
            path: format!("/{}", id(r, "p")),
        }),
        resolve: opt(rng, |r| ResolveProbe {
            name: format!("{}.example.test", id(r, "n")),
            server: ip(r),
        }),
    }
}

/// Items unique by key and sorted by it, as the model keeps its lists.
fn keyed_list<T, K: Ord>(
    rng: &mut StdRng,
    max: usize,
    f: impl FnMut(&mut StdRng) -> T,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let by: BTreeMap<K, T> = list(rng, max, f)
        .into_iter()
        .map(|t| (key(&t), t))
        .collect();
    by.into_values().collect()
}

fn policy_map(rng: &mut StdRng) -> BTreeMap<String, Rules> {
    list(rng, 4, |r| (id(r, "ep"), Rules::from(list(r, 4, rule))))
        .into_iter()
        .collect()
}

fn cluster_node(rng: &mut StdRng) -> ClusterNode {
    ClusterNode {
        name: id(rng, "node"),
        addresses: list(rng, 2, ip),
        pod_cidrs: list(rng, 2, net),
    }
}

fn mode(rng: &mut StdRng) -> RoutingMode {
    if rng.gen() {
        RoutingMode::Tunnel
    } else {
        RoutingMode::Native
    }
}

fn state(rng: &mut StdRng) -> NodeDesiredState {
    NodeDesiredState {
        endpoints: keyed_list(rng, 5, endpoint, |e| e.id.clone()),
        ipcache: keyed_list(rng, 8, ipcache, |e| e.prefix),
        policy: policy_map(rng),
        services: keyed_list(rng, 4, service, |s| s.id.clone()),
        // Not on the wire.
        unsupported: Vec::new(),
        workloads: keyed_list(rng, 3, workload, |w| w.name.clone()),
        probes: keyed_list(rng, 3, probe, |p| p.id.clone()),
        routing: mode(rng),
        nodes: keyed_list(rng, 4, cluster_node, |n| n.name.clone()),
    }
}

fn delta(rng: &mut StdRng) -> Delta {
    // A delta's upserts keep their order but are unique by key.
    let mut d = Delta {
        endpoints_upsert: keyed_list(rng, 4, endpoint, |e| e.id.clone()),
        endpoints_remove: list(rng, 3, |r| id(r, "ep")),
        ipcache_upsert: keyed_list(rng, 5, ipcache, |e| e.prefix),
        ipcache_remove: list(rng, 3, net),
        policy_upsert: policy_map(rng),
        policy_remove: list(rng, 3, |r| id(r, "ep")),
        services_upsert: keyed_list(rng, 3, service, |s| s.id.clone()),
        services_remove: list(rng, 3, |r| id(r, "svc")),
        // Not on the wire.
        unsupported: None,
        workloads_upsert: keyed_list(rng, 3, workload, |w| w.name.clone()),
        workloads_remove: list(rng, 3, |r| id(r, "wl")),
        probes_upsert: keyed_list(rng, 3, probe, |p| p.id.clone()),
        probes_remove: list(rng, 3, |r| id(r, "probe")),
        routing: rng.gen::<bool>().then(|| mode(rng)),
        nodes_upsert: keyed_list(rng, 3, cluster_node, |n| n.name.clone()),
        nodes_remove: list(rng, 3, |r| id(r, "node")),
    };
    if rng.gen() {
        d.endpoints_upsert.reverse();
        d.services_upsert.reverse();
    }
    d
}

/// Runs `check` on `CASES` values from seeds 0.., naming the seed that fails.
fn for_each_seed<T: Debug + PartialEq>(
    gen: impl Fn(&mut StdRng) -> T,
    round_trip: impl Fn(&T) -> Result<T, WireError>,
) {
    for seed in 0..CASES {
        let value = gen(&mut StdRng::seed_from_u64(seed));
        match round_trip(&value) {
            Ok(back) => assert_eq!(back, value, "seed {seed}"),
            Err(e) => panic!("seed {seed}: {e}\n{value:?}"),
        }
    }
}

#[test]
fn endpoints_round_trip() {
    for_each_seed(endpoint, |e| pb::Endpoint::from(e).try_into());
}

#[test]
fn ipcache_entries_round_trip() {
    for_each_seed(ipcache, |e| pb::IpcacheEntry::from(e).try_into());
}

#[test]
fn policy_rules_round_trip() {
    for_each_seed(rule, |r| pb::PolicyRule::from(r).try_into());
}

#[test]
fn endpoint_policies_round_trip() {
    for_each_seed(
        |r| (id(r, "ep"), Rules::from(list(r, 5, rule))),
        |(id, rules)| pb::EndpointPolicy::from((id, rules)).try_into(),
    );
}

#[test]
fn services_round_trip() {
    for_each_seed(service, |s| pb::Service::from(s).try_into());
}

#[test]
fn workloads_round_trip() {
    for_each_seed(workload, |w| pb::Workload::from(w).try_into());
}

#[test]
fn cluster_nodes_round_trip() {
    for_each_seed(cluster_node, |n| pb::ClusterNode::from(n).try_into());
}

#[test]
fn probes_round_trip() {
    for_each_seed(probe, |p| pb::Probe::from(p).try_into());
}

#[test]
fn snapshots_round_trip_through_bytes() {
    for_each_seed(state, |s| {
        let bytes = pb::Snapshot::from(s).encode_to_vec();
        pb::Snapshot::decode(bytes.as_slice())
            .expect("prost decodes what it encoded")
            .try_into()
    });
}

#[test]
fn deltas_round_trip_through_bytes() {
    for_each_seed(delta, |d| {
        let bytes = pb::Delta::from(d).encode_to_vec();
        pb::Delta::decode(bytes.as_slice())
            .expect("prost decodes what it encoded")
            .try_into()
    });
}

#[test]
fn sync_messages_round_trip_through_bytes() {
    for_each_seed(
        |r| SyncMessage {
            revision: r.gen(),
            update: if r.gen() {
                Update::Snapshot(state(r))
            } else {
                Update::Delta(delta(r))
            },
        },
        |m| {
            let bytes = pb::SyncResponse::from(m).encode_to_vec();
            pb::SyncResponse::decode(bytes.as_slice())
                .expect("prost decodes what it encoded")
                .try_into()
        },
    );
}

#[test]
fn what_the_wire_does_not_carry_decodes_empty() {
    let mut s = state(&mut StdRng::seed_from_u64(7));
    s.unsupported = vec!["p specs[0].egress[0].toFQDNs[0]: not enforced".into()];
    let back = NodeDesiredState::try_from(pb::Snapshot::from(&s)).expect("valid");
    assert!(back.unsupported.is_empty());
    s.unsupported.clear();
    assert_eq!(back, s);
    let d = Delta {
        unsupported: Some(vec!["x".into()]),
        ..Delta::default()
    };
    assert_eq!(Delta::try_from(pb::Delta::from(&d)), Ok(Delta::default()));
}

#[test]
fn a_bad_item_refuses_the_whole_message_naming_item_and_field() {
    let s = state(&mut StdRng::seed_from_u64(1));
    let good = pb::Snapshot::from(&s);
    let refuse = |edit: &dyn Fn(&mut pb::Snapshot)| {
        let mut m = good.clone();
        edit(&mut m);
        NodeDesiredState::try_from(m)
            .expect_err("refused")
            .to_string()
    };
    assert_eq!(
        refuse(&|m| m.endpoints.push(pb::Endpoint {
            id: "web".into(),
            ips: vec!["10.0.0.300".into()],
            ..Default::default()
        })),
        "endpoint/web: invalid address \"10.0.0.300\""
    );
    assert_eq!(
        refuse(&|m| m.policies.push(pb::EndpointPolicy {
            endpoint_id: "web".into(),
            rules: vec![
                pb::PolicyRule::from(&rule(&mut StdRng::seed_from_u64(2))),
                pb::PolicyRule {
                    direction: pb::Direction::Ingress as i32,
                    action: pb::Action::Allow as i32,
                    ports: Some(pb::PortRange {
                        first: 80,
                        last: 70_000
                    }),
                    ..Default::default()
                },
            ],
        })),
        "policy/web[1]: last port 70000 is out of range"
    );
    // A probe's HTTP request line is checked: the agent writes it onto the wire.
    let probe = |method: &str, path: &str, name: &str, resolver: &str| pb::Probe {
        id: "p1".into(),
        target_ip: "10.0.0.1".into(),
        target_port: 80,
        http_method: method.into(),
        http_path: path.into(),
        resolve_name: name.into(),
        resolver: resolver.into(),
        ..Default::default()
    };
    assert!(DesiredProbe::try_from(probe("GET", "/a", "a.test", "10.0.0.53")).is_ok());
    for (bad, want) in [
        (
            probe("GET", "/a\r\nHost: x", "", ""),
            "probe/p1: http path: \"/a\\r\\nHost: x\" may hold printable ASCII only, no blanks (percent-encode the rest)",
        ),
        (
            probe("GET", "", "", ""),
            "probe/p1: http: a method without a path or a path without a method",
        ),
        (
            probe("", "", "a.test", ""),
            "probe/p1: resolve: a name without a resolver or a resolver without a name",
        ),
        (
            probe("", "", "a.test", "x"),
            "probe/p1: invalid address \"x\"",
        ),
    ] {
        assert_eq!(refuse(&|m| m.probes.push(bad.clone())), want);
    }
    // An FQDN entry is FQDN_PEER with one selector of exactly one kind, or refused: read
    // otherwise, it could allow any peer.
    let fqdn_rule = |peer: Option<u32>, name: Option<&str>, pattern: Option<&str>| {
        let mut m = good.clone();
        m.policies.push(pb::EndpointPolicy {
            endpoint_id: "web".into(),
            rules: vec![pb::PolicyRule {
                direction: pb::Direction::Egress as i32,
                action: pb::Action::Allow as i32,
                peer_identity: peer,
                fqdn: Some(pb::FqdnSelector {
                    match_name: name.map(Into::into),
                    match_pattern: pattern.map(Into::into),
                }),
                ..Default::default()
            }],
        });
        NodeDesiredState::try_from(m).map_err(|e| e.to_string())
    };
    let fqdn_peer = Some(weft_model::identity::FQDN_PEER);
    assert!(fqdn_rule(fqdn_peer, Some("a.test"), None).is_ok());
    for (peer, name, pattern) in [
        (None, Some("a.test"), None),
        (Some(2), Some("a.test"), None),
        (fqdn_peer, None, None),
        (fqdn_peer, Some("a.test"), Some("*.test")),
    ] {
        let e = fqdn_rule(peer, name, pattern).expect_err("refused");
        assert!(e.starts_with("policy/web[0]: "), "{e}");
    }
    assert_eq!(
        refuse(&|m| m.services.push(pb::Service {
            id: "dns".into(),
            frontends: vec![pb::Frontend {
                vip: "10.96.0.10".into(),
                port: 53,
                proto: 1
            }],
            ..Default::default()
        })),
        "service/dns: frontend protocol 1 is out of range"
    );
    assert_eq!(
        refuse(&|m| m.probes.push(pb::Probe {
            id: String::new(),
            ..Default::default()
        })),
        "probe: empty id"
    );
    assert_eq!(
        refuse(&|m| {
            m.workloads.push(pb::Workload {
                name: "echo".into(),
                kind: 9,
                ip: "10.0.1.254".into(),
                ..Default::default()
            })
        }),
        "workload/echo: unknown kind 9"
    );
    assert_eq!(
        refuse(&|m| {
            let twice = pb::IpcacheEntry {
                prefix: "10.1.0.0/16".into(),
                identity: 1,
            };
            m.ipcache.retain(|e| e.prefix != twice.prefix);
            m.ipcache.extend([twice.clone(), twice]);
        }),
        "ipcache/10.1.0.0/16: listed twice"
    );
    assert_eq!(
        SyncMessage::try_from(pb::SyncResponse {
            revision: 5,
            kind: None,
            traceparent: String::new(),
            continues: false,
        }),
        Err(WireError::NoKind(5))
    );
    // A part is joined before it is read (`parts::Joiner`), never read as the whole.
    assert_eq!(
        SyncMessage::try_from(pb::SyncResponse {
            revision: 6,
            kind: Some(pb::sync_response::Kind::Delta(pb::Delta::default())),
            traceparent: String::new(),
            continues: true,
        }),
        Err(WireError::Part(6))
    );
}

/// The desired-state fuzz target's seed corpus (`fuzz/seeds/desired_state`): messages of each
/// kind the generators make, encoded. `WEFT_REGENERATE_FUZZ_SEEDS=1` rewrites them; always,
/// every seed must decode and convert (a seed that no longer does starts the fuzzer nowhere).
#[test]
fn fuzz_seeds_decode_and_convert() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/desired_state");
    if std::env::var_os("WEFT_REGENERATE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("seed dir");
        for seed in 0..6u64 {
            let r = &mut StdRng::seed_from_u64(seed);
            let m = SyncMessage {
                revision: r.gen(),
                update: if seed % 2 == 0 {
                    Update::Snapshot(state(r))
                } else {
                    Update::Delta(delta(r))
                },
            };
            std::fs::write(
                dir.join(format!("seed-{seed}")),
                pb::SyncResponse::from(&m).encode_to_vec(),
            )
            .expect("write seed");
        }
    }
    let seeds: Vec<_> = std::fs::read_dir(&dir)
        .expect("the seed corpus is checked in")
        .map(|e| e.expect("dir entry").path())
        .collect();
    assert!(seeds.len() >= 4, "{seeds:?}");
    for path in seeds {
        let bytes = std::fs::read(&path).expect("read seed");
        let resp = pb::SyncResponse::decode(bytes.as_slice()).expect("a seed decodes");
        SyncMessage::try_from(resp).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
