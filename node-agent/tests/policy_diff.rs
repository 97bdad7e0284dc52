//! The kernel checked against the model: random tenants (labels, endpoints on two nodes,
//! CIDRs with `except`, port ranges, allow and deny rules, entities, `enableDefaultDeny`) and
//! random packets. Each tenant is compiled for node `n1` by the real compiler
//! (`weft_model::desired::compile`), programmed by the agent's real apply path
//! (`Programmed::apply` on a loaded `Datapath`), and each packet is run through the loaded tc
//! program with BPF_PROG_TEST_RUN; its verdict must be the one `weft_model::policy::evaluate`
//! gives.
//!
//! Tenants are applied one after the other on the same maps (so the agent's incremental
//! updates are exercised too). A mismatch is confirmed from a clean state, shrunk (policy
//! JSON elements and endpoints are removed while the mismatch stays), and printed as a JSON
//! reproducer with its seed; paste it into `tests/policy_diff/fixed.json` to keep it.
//!
//! - `WEFT_DIFF_SEED`: base seed (default: from the clock, printed);
//! - `WEFT_DIFF_CASES`: packets to run (default 10,000);
//! - `WEFT_FUZZ_MINUTES`: run for that long instead (`cargo xtask fuzz policy --minutes N`).

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use common::*;
use node_agent::agent::wire::{Programmed, SyncMessage, Update};
use node_agent::datapath::Datapath;
use node_agent::netns::PinDir;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use weft_datapath_common as c;
use weft_model::desired::{self, EndpointView, NodeDesiredState, NodeView, PolicyView, TenantView};
use weft_model::labels::Labels;
use weft_model::policy::{
    evaluate, Entity, FlowProtocol, Peer, PolicySpec, Subject, Traffic, Verdict,
};

const CLUSTER: &str = "c1";
const NODES: [(&str, Ipv4Addr); 2] = [
    ("n1", Ipv4Addr::new(172, 16, 0, 1)),
    ("n2", Ipv4Addr::new(172, 16, 0, 2)),
];
/// The nodes' IPv6 addresses (same order).
const NODES6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
];
/// Cases of one CI run (the floor).
const CI_CASES: u64 = 10_000;
/// Hard stop of a CI run: twice the 2-minute bound.
const CI_LIMIT: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------------------
// Cases

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ep {
    id: String,
    node: String,
    labels: Labels,
    ip: Ipv4Addr,
    /// Dual stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<Ipv6Addr>,
}

/// A tenant in a compact, printable form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tenant {
    endpoints: Vec<Ep>,
    /// One CiliumNetworkPolicy spec per policy.
    policies: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PeerRef {
    /// A workload endpoint (either node).
    Endpoint(String),
    /// A node's address (`n1`: the local host, `n2`: a remote node).
    Node(String),
    /// An address outside the cluster.
    Outside(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Probe {
    /// Endpoint on n1 whose policy decides.
    subject: String,
    /// "ingress" or "egress".
    direction: String,
    peer: PeerRef,
    /// 6, 17, 132 or 1.
    proto: u8,
    /// Destination port; the ICMP type.
    port: u16,
    /// Over IPv6 (subject and peer addresses of that family).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    v6: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reproducer {
    name: String,
    tenant: Tenant,
    probe: Probe,
}

impl Tenant {
    fn view(&self) -> Option<TenantView> {
        let mut ids: BTreeMap<&Labels, u32> = BTreeMap::new();
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| {
                let n = ids.len() as u32;
                let identity = *ids.entry(&e.labels).or_insert(300 + n);
                EndpointView {
                    id: e.id.clone(),
                    cluster_id: CLUSTER.into(),
                    node_id: e.node.clone(),
                    name: e.id.clone(),
                    labels: e.labels.clone(),
                    ips: std::iter::once(IpAddr::V4(e.ip))
                        .chain(e.ip6.map(IpAddr::V6))
                        .collect(),
                    identity,
                    // Named ports are covered by policy_fields.rs; the generator writes numbers.
                    named_ports: Vec::new(),
                }
            })
            .collect();
        let mut policies = Vec::new();
        for (i, spec) in self.policies.iter().enumerate() {
            let spec: PolicySpec = serde_json::from_value(spec.clone()).ok()?;
            spec.validate().ok()?;
            policies.push(PolicyView {
                id: format!("p{i}"),
                name: format!("p{i}"),
                specs: vec![spec],
                clusters: None,
            });
        }
        Some(TenantView {
            nodes: NODES
                .iter()
                .zip(NODES6)
                .map(|((id, ip), ip6)| NodeView {
                    id: id.to_string(),
                    cluster_id: CLUSTER.into(),
                    name: id.to_string(),
                    addresses: vec![IpAddr::V4(*ip), IpAddr::V6(ip6)],
                    labels: Labels::new(),
                })
                .collect(),
            endpoints,
            policies,
            ..Default::default()
        })
    }

    fn ep(&self, id: &str) -> Option<&Ep> {
        self.endpoints.iter().find(|e| e.id == id)
    }
}

// ---------------------------------------------------------------------------------------
// Generator

const LABEL_KEYS: [&str; 2] = ["app", "tier"];
const LABEL_VALUES: [&str; 3] = ["a", "b", "c"];
/// Outside prefixes the rules pick from (nested, overlapping, and one that covers the pods).
const CIDRS: [&str; 12] = [
    "2001:db8::/32",
    "2001:db8:5::/48",
    "fd00::/8",
    "::/0",
    "192.168.0.0/16",
    "192.168.5.0/24",
    "192.168.5.128/25",
    "192.168.5.7/32",
    "203.0.113.0/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "198.51.100.0/22",
];
const ENTITIES: [&str; 8] = [
    "world-ipv6",
    "world",
    "cluster",
    "host",
    "remote-node",
    "all",
    "world-ipv4",
    "world",
];
const PORTS: [u16; 8] = [22, 53, 80, 443, 1000, 8080, 8443, 65535];

fn labels(rng: &mut StdRng) -> Labels {
    let mut l = Labels::new();
    for k in LABEL_KEYS {
        if rng.gen_bool(0.8) {
            l.insert(k.to_string(), LABEL_VALUES[rng.gen_range(0..3)].to_string());
        }
    }
    l
}

fn selector(rng: &mut StdRng) -> Value {
    if rng.gen_bool(0.15) {
        return json!({});
    }
    if rng.gen_bool(0.2) {
        let vals: Vec<&str> = LABEL_VALUES
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.5))
            .collect();
        let op = if rng.gen_bool(0.5) { "In" } else { "NotIn" };
        return json!({"matchExpressions": [{"key": LABEL_KEYS[rng.gen_range(0..2)], "operator": op, "values": if vals.is_empty() { vec!["a"] } else { vals }}]});
    }
    let l = labels(rng);
    let l: BTreeMap<_, _> = l.into_iter().take(rng.gen_range(1..=2)).collect();
    json!({ "matchLabels": l })
}

fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.gen_range(0..xs.len())]
}

fn port_rule(rng: &mut StdRng) -> Value {
    let n = rng.gen_range(0..=2);
    let ports: Vec<Value> = (0..n)
        .map(|_| {
            let mut p = serde_json::Map::new();
            let port = if rng.gen_bool(0.1) {
                0
            } else if rng.gen_bool(0.7) {
                pick(rng, &PORTS)
            } else {
                rng.gen_range(1..=65535)
            };
            p.insert("port".into(), json!(port.to_string()));
            if rng.gen_bool(0.3) && port != 0 {
                let end = if rng.gen_bool(0.15) {
                    port.saturating_sub(1) // an unusable range: the single port
                } else {
                    port.saturating_add(rng.gen_range(1..2000))
                };
                p.insert("endPort".into(), json!(end));
            }
            let proto = pick(rng, &["TCP", "UDP", "SCTP", "ANY", "TCP"]);
            if proto != "ANY" || rng.gen_bool(0.5) {
                p.insert("protocol".into(), json!(proto));
            }
            Value::Object(p)
        })
        .collect();
    json!({ "ports": ports })
}

fn icmp_rule(rng: &mut StdRng) -> Value {
    let ty = pick(rng, &[0u8, 8, 3, 11]);
    json!({"fields": [{"type": ty}]})
}

fn rule(rng: &mut StdRng, ingress: bool) -> Value {
    let (ep, cidr, set, ent) = if ingress {
        ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities")
    } else {
        ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities")
    };
    let mut r = serde_json::Map::new();
    match rng.gen_range(0..6) {
        0 | 1 => {
            let n = rng.gen_range(1..=2);
            r.insert(ep.into(), (0..n).map(|_| selector(rng)).collect());
        }
        2 => {
            r.insert(cidr.into(), json!([pick(rng, &CIDRS)]));
        }
        3 => {
            let base = pick(rng, &CIDRS);
            let except: Vec<&str> = CIDRS
                .iter()
                .copied()
                .filter(|c| *c != base && rng.gen_bool(0.3))
                .filter(|c| {
                    let (b, e): (ipnet::IpNet, ipnet::IpNet) =
                        (base.parse().unwrap(), c.parse().unwrap());
                    b.contains(&e)
                })
                .collect();
            let mut s = json!({ "cidr": base });
            if !except.is_empty() {
                s["except"] = json!(except);
            }
            r.insert(set.into(), json!([s]));
        }
        4 => {
            r.insert(ent.into(), json!([pick(rng, &ENTITIES)]));
        }
        _ => {} // L4 only: any peer
    }
    if rng.gen_bool(0.1) && r.len() == 1 {
        // A second peer field (peers add up).
        r.insert(ent.into(), json!([pick(rng, &ENTITIES)]));
    }
    let l4 = rng.gen_range(0..10);
    if l4 < 5 || r.is_empty() {
        let n = rng.gen_range(1..=2);
        r.insert("toPorts".into(), (0..n).map(|_| port_rule(rng)).collect());
    }
    if l4 == 9 {
        r.insert("icmps".into(), json!([icmp_rule(rng)]));
    }
    Value::Object(r)
}

fn spec(rng: &mut StdRng) -> Value {
    let mut s = serde_json::Map::new();
    s.insert("endpointSelector".into(), selector(rng));
    for (key, ingress, p) in [
        ("ingress", true, 0.6),
        ("ingressDeny", true, 0.3),
        ("egress", false, 0.6),
        ("egressDeny", false, 0.3),
    ] {
        if rng.gen_bool(p) {
            let n = rng.gen_range(1..=3);
            s.insert(key.into(), (0..n).map(|_| rule(rng, ingress)).collect());
        }
    }
    if rng.gen_bool(0.25) {
        let mut d = serde_json::Map::new();
        for k in ["ingress", "egress"] {
            if rng.gen_bool(0.6) {
                d.insert(k.into(), json!(rng.gen_bool(0.5)));
            }
        }
        s.insert("enableDefaultDeny".into(), Value::Object(d));
    }
    Value::Object(s)
}

fn tenant(rng: &mut StdRng) -> Tenant {
    let mut endpoints = Vec::new();
    for (n, (node, _)) in NODES.iter().enumerate() {
        let count = if n == 0 {
            rng.gen_range(1..=4)
        } else {
            rng.gen_range(0..=3)
        };
        for i in 0..count {
            endpoints.push(Ep {
                id: format!("{node}-e{i}"),
                node: node.to_string(),
                labels: labels(rng),
                ip: Ipv4Addr::new(10, 0, n as u8 + 1, i as u8 + 1),
                ip6: rng
                    .gen_bool(0.5)
                    .then(|| Ipv6Addr::new(0xfd00, n as u16 + 1, 0, 0, 0, 0, 0, i as u16 + 1)),
            });
        }
    }
    let policies = (0..rng.gen_range(0..=3)).map(|_| spec(rng)).collect();
    Tenant {
        endpoints,
        policies,
    }
}

/// An address of the family outside the cluster, often inside (or at the edge of) a rule CIDR.
fn outside_ip(rng: &mut StdRng, t: &Tenant, v6: bool) -> IpAddr {
    let nets: Vec<ipnet::IpNet> = CIDRS
        .iter()
        .map(|c| c.parse::<ipnet::IpNet>().unwrap())
        .filter(|n| matches!(n, ipnet::IpNet::V6(_)) == v6)
        .collect();
    loop {
        let ip = if rng.gen_bool(0.8) {
            let net = nets[rng.gen_range(0..nets.len())];
            let (base, bits) = match net {
                ipnet::IpNet::V4(n) => (u128::from(u32::from(n.network())), 32 - n.prefix_len()),
                ipnet::IpNet::V6(n) => (u128::from(n.network()), 128 - n.prefix_len()),
            };
            let size = if bits >= 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            };
            let off = match rng.gen_range(0..4) {
                0 => 0,
                1 => size,
                2 => size.wrapping_add(1), // just past the end
                _ => rng.gen::<u128>() & size,
            };
            let a = base.wrapping_add(off);
            if v6 {
                IpAddr::V6(Ipv6Addr::from(a))
            } else {
                IpAddr::V4(Ipv4Addr::from(a as u32))
            }
        } else if v6 {
            IpAddr::V6(Ipv6Addr::from(rng.gen::<u128>()))
        } else {
            IpAddr::V4(Ipv4Addr::from(rng.gen::<u32>()))
        };
        let in_cluster = t
            .endpoints
            .iter()
            .any(|e| IpAddr::V4(e.ip) == ip || e.ip6.map(IpAddr::V6) == Some(ip))
            || NODES.iter().any(|n| IpAddr::V4(n.1) == ip)
            || NODES6.iter().any(|n| IpAddr::V6(*n) == ip);
        // BPF_PROG_TEST_RUN sends nothing anywhere, but keep out of addresses that mean
        // other things to a kernel (loopback, multicast, unspecified, link-local).
        let special = match ip {
            IpAddr::V4(a) => a.is_loopback() || a.is_multicast() || a.is_unspecified(),
            IpAddr::V6(a) => {
                a.is_loopback()
                    || a.is_multicast()
                    || a.is_unspecified()
                    || a.segments()[0] & 0xffc0 == 0xfe80
            }
        };
        if !in_cluster && !special {
            return ip;
        }
    }
}

fn probe(rng: &mut StdRng, t: &Tenant) -> Option<Probe> {
    let local: Vec<&Ep> = t.endpoints.iter().filter(|e| e.node == "n1").collect();
    let subject = local.get(rng.gen_range(0..local.len().max(1)))?;
    let v6 = subject.ip6.is_some() && rng.gen_bool(0.4);
    let peer = match rng.gen_range(0..10) {
        0..=3 => {
            let others: Vec<&Ep> = t
                .endpoints
                .iter()
                .filter(|e| e.id != subject.id && (!v6 || e.ip6.is_some()))
                .collect();
            if others.is_empty() {
                PeerRef::Outside(outside_ip(rng, t, v6))
            } else {
                PeerRef::Endpoint(others[rng.gen_range(0..others.len())].id.clone())
            }
        }
        4 => PeerRef::Node(pick(rng, &["n1", "n2"]).to_string()),
        _ => PeerRef::Outside(outside_ip(rng, t, v6)),
    };
    // Ports from the rules, their neighbours, and anything.
    let rule_ports: Vec<u16> = t
        .policies
        .iter()
        .flat_map(|p| {
            let s = p.to_string();
            s.match_indices("\"port\":\"")
                .filter_map(|(i, m)| {
                    let rest = &s[i + m.len()..];
                    rest[..rest.find('"')?].parse().ok()
                })
                .chain(s.match_indices("\"endPort\":").filter_map(|(i, m)| {
                    let rest = &s[i + m.len()..];
                    let end = rest.find([',', '}']).unwrap_or(rest.len());
                    rest[..end].parse().ok()
                }))
                .collect::<Vec<u16>>()
        })
        .collect();
    let proto = match pick(rng, &[6u8, 6, 17, 132, 1]) {
        1 if v6 => 58,
        p => p,
    };
    let port = if proto == 1 {
        pick(rng, &[0u16, 8, 3, 11, 5])
    } else if proto == 58 {
        pick(rng, &[128u16, 129, 1, 3, 2])
    } else if !rule_ports.is_empty() && rng.gen_bool(0.7) {
        let p = pick(rng, &rule_ports);
        match rng.gen_range(0..4) {
            0 => p.saturating_sub(1),
            1 => p.saturating_add(1),
            _ => p,
        }
    } else {
        rng.gen_range(1..=65535)
    };
    Some(Probe {
        subject: subject.id.clone(),
        direction: if rng.gen_bool(0.5) {
            "ingress"
        } else {
            "egress"
        }
        .into(),
        peer,
        proto,
        port,
        v6,
    })
}

// ---------------------------------------------------------------------------------------
// Oracle and kernel

/// The model's verdict: whether the packet passes.
fn model_passes(t: &Tenant, view: &TenantView, p: &Probe) -> bool {
    let subject = t.ep(&p.subject).expect("subject");
    let ip = peer_ip(t, p);
    let peer = match &p.peer {
        PeerRef::Endpoint(id) => {
            let e = t.ep(id).expect("peer");
            Peer::endpoint(e.labels.clone()).with_ip(ip)
        }
        PeerRef::Node(n) => {
            let entity = if n == "n1" {
                Entity::Host
            } else {
                Entity::RemoteNode
            };
            Peer::entity(entity).with_ip(ip)
        }
        PeerRef::Outside(ip) => Peer::world(*ip),
    };
    let proto = match p.proto {
        6 => FlowProtocol::Tcp,
        17 => FlowProtocol::Udp,
        132 => FlowProtocol::Sctp,
        58 => FlowProtocol::IcmpV6,
        _ => FlowProtocol::Icmp,
    };
    let traffic = if p.direction == "ingress" {
        Traffic::ingress(peer, proto, p.port)
    } else {
        Traffic::egress(peer, proto, p.port)
    };
    let specs: Vec<PolicySpec> = view.policies.iter().flat_map(|p| p.specs.clone()).collect();
    let d = evaluate(&specs, &Subject::endpoint(subject.labels.clone()), &traffic);
    d.verdict != Verdict::Denied
}

/// The peer's address in the probe's family (`None`: it has none).
fn try_peer_ip(t: &Tenant, p: &Probe) -> Option<IpAddr> {
    Some(match &p.peer {
        PeerRef::Endpoint(id) => {
            let e = t.ep(id)?;
            if p.v6 {
                IpAddr::V6(e.ip6?)
            } else {
                IpAddr::V4(e.ip)
            }
        }
        PeerRef::Node(n) => {
            let i = NODES.iter().position(|x| x.0 == n)?;
            if p.v6 {
                IpAddr::V6(NODES6[i])
            } else {
                IpAddr::V4(NODES[i].1)
            }
        }
        PeerRef::Outside(ip) => *ip,
    })
}

fn peer_ip(t: &Tenant, p: &Probe) -> IpAddr {
    try_peer_ip(t, p).expect("peer address")
}

fn subject_ip(t: &Tenant, p: &Probe) -> Option<IpAddr> {
    let e = t.ep(&p.subject)?;
    if p.v6 {
        e.ip6.map(IpAddr::V6)
    } else {
        Some(IpAddr::V4(e.ip))
    }
}

/// An Ethernet + IPv4 frame of the probe (ICMP echo id / source ports are arbitrary).
fn frame(t: &Tenant, p: &Probe, sport: u16) -> (Vec<u8>, &'static str) {
    let me = subject_ip(t, p).expect("subject address");
    let other = peer_ip(t, p);
    let (src, dst, prog) = if p.direction == "ingress" {
        (other, me, c::progs::TO_ENDPOINT)
    } else {
        (me, other, c::progs::FROM_ENDPOINT)
    };
    let pkt = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => packet(p.proto, s, d, sport, p.port, TCP_SYN),
        (IpAddr::V6(s), IpAddr::V6(d)) => packet6(p.proto, s, d, sport, p.port, TCP_SYN),
        _ => panic!("mixed families in {p:?}"),
    };
    (pkt, prog)
}

struct Kernel {
    dp: Datapath,
    programmed: Programmed,
    revision: u64,
    sport: u16,
}

impl Kernel {
    fn program(&mut self, state: NodeDesiredState) {
        self.revision += 1;
        let errors = self.programmed.apply(
            &mut self.dp,
            SyncMessage {
                revision: self.revision,
                update: Update::Snapshot(state),
            },
        );
        assert!(errors.is_empty(), "programming failed: {errors:?}");
    }

    /// Removes everything and checks the maps are empty again.
    fn reset(&mut self) {
        self.program(NodeDesiredState::default());
        self.flush_ct();
        let m = &self.dp.maps;
        assert_eq!(
            m.policy.keys().count(),
            0,
            "policy entries left after reset"
        );
        assert_eq!(m.policy_allow.keys().count(), 0, "range allows left");
        assert_eq!(m.policy_deny.keys().count(), 0, "range denies left");
        assert_eq!(m.endpoints.keys().count(), 0, "endpoints left");
        assert_eq!(m.ipcache.keys().count(), 0, "ipcache entries left");
    }

    fn flush_ct(&mut self) {
        let keys: Vec<c::CtKey> = self.dp.maps.ct.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.dp.maps.ct.remove(&k);
        }
    }

    /// Runs one probe: true when the program passes the packet.
    fn passes(&mut self, t: &Tenant, p: &Probe) -> bool {
        // Source ports never repeat (within 20000..60000), and conntrack is flushed after
        // every packet: no verdict comes from an earlier packet's connection.
        self.sport = if self.sport >= 60000 {
            20000
        } else {
            self.sport + 1
        };
        let (pkt, prog) = frame(t, p, self.sport);
        let r = self.dp.test_run(prog, &pkt, 1).expect("test run").retval;
        self.flush_ct();
        assert!(
            r == TC_ACT_OK || r == TC_ACT_SHOT,
            "unexpected tc verdict {r}"
        );
        r == TC_ACT_OK
    }

    /// From a clean state: (model, kernel) verdicts of `p`, `None` when the tenant does not
    /// compile or the probe no longer makes sense.
    fn check_fresh(&mut self, t: &Tenant, p: &Probe) -> Option<(bool, bool)> {
        let subject = t.ep(&p.subject)?;
        if subject.node != "n1" {
            return None;
        }
        subject_ip(t, p)?;
        let peer = try_peer_ip(t, p)?;
        if peer.is_ipv6() != p.v6 {
            return None;
        }
        let view = t.view()?;
        let state = desired::compile(&view, "n1").ok()?;
        self.reset();
        self.program(state);
        let got = self.passes(t, p);
        Some((model_passes(t, &view, p), got))
    }
}

// ---------------------------------------------------------------------------------------
// Shrinking

/// Every JSON value with one array element or one object member (not the selector) removed.
fn json_shrinks(v: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    match v {
        Value::Array(items) => {
            for i in 0..items.len() {
                let mut c = items.clone();
                c.remove(i);
                out.push(Value::Array(c));
            }
            for (i, item) in items.iter().enumerate() {
                for s in json_shrinks(item) {
                    let mut c = items.clone();
                    c[i] = s;
                    out.push(Value::Array(c));
                }
            }
        }
        Value::Object(map) => {
            for k in map.keys() {
                if k != "endpointSelector" {
                    let mut c = map.clone();
                    c.remove(k);
                    out.push(Value::Object(c));
                }
            }
            for (k, item) in map {
                for s in json_shrinks(item) {
                    let mut c = map.clone();
                    c.insert(k.clone(), s);
                    out.push(Value::Object(c));
                }
            }
        }
        _ => {}
    }
    out
}

fn tenant_shrinks(t: &Tenant) -> Vec<Tenant> {
    let mut out = Vec::new();
    for i in 0..t.policies.len() {
        let mut c = t.clone();
        c.policies.remove(i);
        out.push(c);
    }
    for i in 0..t.endpoints.len() {
        let mut c = t.clone();
        c.endpoints.remove(i);
        out.push(c);
    }
    for (i, p) in t.policies.iter().enumerate() {
        for s in json_shrinks(p) {
            let mut c = t.clone();
            c.policies[i] = s;
            out.push(c);
        }
    }
    for (i, e) in t.endpoints.iter().enumerate() {
        for k in e.labels.keys() {
            let mut c = t.clone();
            c.endpoints[i].labels.remove(k);
            out.push(c);
        }
    }
    out
}

/// The smallest tenant (greedy) on which `p` still mismatches.
fn shrink(k: &mut Kernel, mut t: Tenant, p: &Probe) -> Tenant {
    'outer: loop {
        for c in tenant_shrinks(&t) {
            if matches!(k.check_fresh(&c, p), Some((m, g)) if m != g) {
                t = c;
                continue 'outer;
            }
        }
        return t;
    }
}

// ---------------------------------------------------------------------------------------
// The tests

fn new_kernel(pins: &PinDir) -> Kernel {
    Kernel {
        dp: load(pins),
        programmed: Programmed::default(),
        revision: 0,
        sport: 20000,
    }
}

fn describe(t: &Tenant, p: &Probe, model: bool, kernel: bool) -> String {
    let _ = t;
    format!(
        "{} {} {:?} proto {} port {}: model {} kernel {}",
        p.subject,
        p.direction,
        p.peer,
        p.proto,
        p.port,
        if model { "PASS" } else { "DROP" },
        if kernel { "PASS" } else { "DROP" },
    )
}

/// Every reproducer that ever failed: they must all agree now.
#[test]
fn fixed_reproducers_agree_with_the_model() {
    if !bpf_available("fixed_reproducers_agree_with_the_model") {
        return;
    }
    let cases: Vec<Reproducer> =
        serde_json::from_str(include_str!("policy_diff/fixed.json")).expect("fixed.json");
    let pins = PinDir::create("diff-fixed").unwrap();
    let mut k = new_kernel(&pins);
    let mut bad = Vec::new();
    for r in &cases {
        let (model, kernel) = k
            .check_fresh(&r.tenant, &r.probe)
            .unwrap_or_else(|| panic!("{}: the reproducer no longer compiles", r.name));
        if model != kernel {
            bad.push(format!(
                "{}: {}",
                r.name,
                describe(&r.tenant, &r.probe, model, kernel)
            ));
        }
    }
    println!("{} fixed reproducers run", cases.len());
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
}

/// Random tenants and packets, kernel against model.
#[test]
fn kernel_agrees_with_the_model_on_random_tenants() {
    if !bpf_available("kernel_agrees_with_the_model_on_random_tenants") {
        return;
    }
    let seed: u64 = std::env::var("WEFT_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 & 0xffff_ffff)
        });
    let fuzz_for = std::env::var("WEFT_FUZZ_MINUTES")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|m| Duration::from_secs_f64(m * 60.0));
    let want_cases: u64 = std::env::var("WEFT_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_CASES);
    println!("policy differential test: base seed {seed} (WEFT_DIFF_SEED={seed} to replay)");
    let pins = PinDir::create("diff").unwrap();
    let mut k = new_kernel(&pins);
    let start = Instant::now();
    let (mut cases, mut tenants, mut mismatches) = (0u64, 0u64, Vec::<String>::new());
    let mut t_seed = seed;
    loop {
        let done = match fuzz_for {
            Some(d) => start.elapsed() >= d,
            None => cases >= want_cases,
        };
        if done || mismatches.len() >= 5 {
            break;
        }
        if fuzz_for.is_none() && start.elapsed() > CI_LIMIT {
            panic!("only {cases} cases ran in {CI_LIMIT:?}");
        }
        let mut rng = StdRng::seed_from_u64(t_seed);
        let t = tenant(&mut rng);
        let Some(view) = t.view() else {
            t_seed += 1;
            continue;
        };
        let state = desired::compile(&view, "n1").expect("generated tenant compiles");
        k.program(state);
        tenants += 1;
        for _ in 0..40 {
            let Some(p) = probe(&mut rng, &t) else {
                break;
            };
            cases += 1;
            let model = model_passes(&t, &view, &p);
            let kernel = k.passes(&t, &p);
            if model == kernel {
                continue;
            }
            // Confirm from a clean state, shrink, print.
            let msg = match k.check_fresh(&t, &p) {
                Some((m, g)) if m != g => {
                    let small = shrink(&mut k, t.clone(), &p);
                    let (m, g) = k.check_fresh(&small, &p).expect("shrunk case compiles");
                    let repro = Reproducer {
                        name: format!("seed {t_seed}"),
                        tenant: small.clone(),
                        probe: p.clone(),
                    };
                    format!(
                        "MISMATCH (tenant seed {t_seed}): {}\nreproducer: {}",
                        describe(&small, &p, m, g),
                        serde_json::to_string(&repro).unwrap()
                    )
                }
                _ => format!(
                    "MISMATCH only after the previous tenant (seed {}), tenant seed {t_seed}: {}\ntenant: {}",
                    t_seed - 1,
                    describe(&t, &p, model, kernel),
                    serde_json::to_string(&t).unwrap()
                ),
            };
            println!("{msg}");
            mismatches.push(msg);
            // The shrinking reprogrammed the maps: go on with the next tenant.
            break;
        }
        t_seed += 1;
    }
    println!(
        "policy differential test: {cases} cases, {tenants} tenants, {} mismatches, {:.1}s",
        mismatches.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        mismatches.is_empty(),
        "kernel and model disagree:\n{}",
        mismatches.join("\n")
    );
}
