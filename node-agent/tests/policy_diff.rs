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
#[path = "policy_diff/generate.rs"]
mod generate;
use generate::{probe, tenant};

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
                    node_id: e.node.as_str().into(),
                    name: e.id.clone(),
                    labels: e.labels.clone().into(),
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
                    labels: Default::default(),
                    pod_cidrs: vec![],
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
    let pins = PinDir::create("difffixed").unwrap();
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
