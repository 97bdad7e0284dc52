//! The compiler's tests, by concern: `peers` (peers, ports, actions), `compile` (ipcache,
//! endpoints, services, errors, workloads, settings), `fqdn` (DNS rules and `toFQDNs`), `realistic` (a realistic tenant checked
//! flow by flow against the reference evaluator, determinism), `delta` and `random`
//! (random policies against the evaluator). Shared fixtures here.

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
        labels: labels(l).into(),
        pod_cidrs: vec![],
    }
}

fn ep(id: &str, cluster: &str, node: &str, l: &str, addrs: &[&str], identity: u32) -> EndpointView {
    EndpointView {
        named_ports: vec![],
        id: id.into(),
        cluster_id: cluster.into(),
        node_id: node.into(),
        name: id.into(),
        labels: labels(l).into(),
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

mod compile;
mod delta;
mod fqdn;
mod peers;
mod random;
mod realistic;
