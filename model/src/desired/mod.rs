//! The desired-state compiler: "compile centrally, program locally".
//!
//! [`compile`] turns one tenant's declared state ([`TenantView`]) into what one node's agent
//! programs ([`NodeDesiredState`]): its endpoints with identities and enforcement flags, the
//! ipcache (prefix → identity), per-endpoint rules resolved to peer identities, and services.
//! [`diff`] and [`apply`] turn consecutive outputs into the deltas streamed to the agent.
//!
//! The rules reproduce [`crate::policy::evaluate`] exactly for every peer the ipcache can
//! name (the tests check it flow by flow). How the peers map onto identities:
//! - endpoint selectors: the identities of the tenant's endpoints in the node's cluster whose
//!   labels match (endpoints of other clusters have no ipcache entry here: from this node
//!   they are outside peers);
//! - entities: their reserved identity; `cluster` = every endpoint identity of the cluster and
//!   every reserved in-cluster identity; `world` = `world` and every CIDR identity;
//!   `world-ipv4`/`-ipv6` = the CIDR identities of that family (the compiler then adds
//!   `0.0.0.0/0` / `::/0` to the CIDRs so every outside address of the family has one);
//!   `all` = any peer;
//! - CIDRs: a CIDR rule allows the identities of every CIDR prefix in the ipcache that lies
//!   inside it and inside none of its `except`s. The datapath resolves an address to its
//!   longest prefix, so this is exactly "inside the CIDR and outside the excepts". In-cluster
//!   addresses have /32 (/128) entries and so never take a CIDR identity: CIDR rules match
//!   only outside peers, as in the evaluator.
//!
//! Not enforced (see [`crate::policy::not_enforced`]): allow rules whose port rule carries
//! HTTP or DNS rules, `toFQDNs` peers (every outside identity stands in for them) and the
//! `unmanaged` / `kube-apiserver` entities (world, and host and remote-node for the API
//! server) compile to [`Action::Unsupported`]: nothing is allowed, and the datapath reports
//! such drops as `UNSUPPORTED_RULE`. Deny rules decide at L4, and deny the stand-in peers.
//! An unsupported entry wholly covered by a plain allow is dropped, since the evaluator allows
//! those flows without L7. `health`, `init` and `ingress` select no peer: nothing carries them.
//!
//! The node's host is an endpoint too ([`HOST_ENDPOINT_ID`], identity `host`): `nodeSelector`
//! policies that select the node's labels give its rules.
//!
//! Named ports resolve per destination endpoint, as in Cilium: on ingress against the ports
//! the subject endpoint declares ([`EndpointView::named_ports`]), on egress against those the
//! peer identity's endpoints declare (every endpoint's for an any-peer rule). A name the
//! destination does not declare, or declares for another protocol, matches nothing there:
//! an allow allows nothing and a deny never widens to other ports.
//!
//! Listed in [`NodeDesiredState::unsupported`] as well as compiled fail-closed: `toFQDNs`
//! (on deny rules, which validation refuses, every outside peer is denied).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity;
use crate::labels::Labels;
use crate::policy::{
    items, parse_cidr, CidrRule, Direction, EgressRule, Entity, FqdnSelector, IcmpFamily, IcmpRule,
    IngressRule, NamedPort, PolicySpec, PortRule, PortValue, Protocol, SubjectKind,
};
use crate::selector::LabelSelector;
use crate::service::{Algorithm, BackendState, Frontend, L4Protocol, ServiceSpec};
use crate::workload::{DesiredProbe, DesiredWorkload};

/// Endpoint id of the node's host endpoint in [`NodeDesiredState`] (its policy comes from
/// `nodeSelector` policies). Endpoint ids in a [`TenantView`] must not use it.
pub const HOST_ENDPOINT_ID: &str = "host";

/// Origin of the allow-any rule that keeps a direction default-allow when the endpoint has
/// deny rules there but no default deny (see `keep_denies_without_default_deny`).
pub const DEFAULT_ALLOW_ORIGIN: &str = "default allow (deny rules without default deny)";

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

// ---------------------------------------------------------------------------------------
// Input

/// One tenant's declared state, as read from Postgres. Order does not matter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantView {
    pub nodes: Vec<NodeView>,
    pub endpoints: Vec<EndpointView>,
    pub policies: Vec<PolicyView>,
    pub services: Vec<ServiceView>,
    /// Test workloads, each with the node that runs it.
    #[serde(default)]
    pub workloads: Vec<WorkloadView>,
    /// Probes without a result yet, each with the node that runs it.
    #[serde(default)]
    pub probes: Vec<ProbeView>,
    /// Per-cluster settings. A cluster missing here has every setting off (the API stores
    /// a row per cluster, with Cilium's defaults).
    #[serde(default)]
    pub clusters: Vec<ClusterView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub id: String,
    /// The node's own host may reach the node's endpoints whatever their ingress policy
    /// (Cilium's allow-localhost, on by default there: kubelet probes). Deny rules still win.
    pub allow_host_to_local_pods: bool,
}

/// Origin of the allow rule that [`ClusterView::allow_host_to_local_pods`] adds.
pub const HOST_TO_LOCAL_PODS_ORIGIN: &str = "cluster setting allow_host_to_local_pods";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadView {
    pub node_id: String,
    pub workload: DesiredWorkload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeView {
    pub node_id: String,
    pub probe: DesiredProbe,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub cluster_id: String,
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub id: String,
    pub cluster_id: String,
    pub node_id: String,
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    /// Allocated by the control plane from the label set (≥ [`identity::FIRST_ALLOCATED`]).
    pub identity: u32,
    /// Ports the endpoint declares by name; named-port rules resolve against them.
    #[serde(default)]
    pub named_ports: Vec<NamedPort>,
}

/// `PolicySpec` is not `Eq` (it keeps raw JSON of refused fields), hence only `PartialEq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyView {
    pub id: String,
    pub name: String,
    pub specs: Vec<PolicySpec>,
    /// Cluster ids the policy applies in; `None`: every cluster.
    pub clusters: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub id: String,
    pub cluster_id: String,
    pub name: String,
    pub spec: ServiceSpec,
}

// ---------------------------------------------------------------------------------------
// Output

/// What one node's agent must program. Every list is sorted and free of duplicates, so the
/// same input always gives byte-identical output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDesiredState {
    /// The node's endpoints, by id; the host endpoint ([`HOST_ENDPOINT_ID`]) included.
    pub endpoints: Vec<DesiredEndpoint>,
    /// By prefix; one identity per prefix.
    pub ipcache: Vec<IpcacheEntry>,
    /// Rules per endpoint id; endpoints without rules are absent.
    pub policy: BTreeMap<String, Vec<PolicyRule>>,
    /// The services of the node's cluster, by id.
    pub services: Vec<DesiredService>,
    /// Parts of policies applying on this node that could not be compiled, as
    /// `policy-name specs[i].egress[j]...: why`.
    pub unsupported: Vec<String>,
    /// Test workloads the agent runs, by name (states stored before they existed lack them).
    #[serde(default)]
    pub workloads: Vec<DesiredWorkload>,
    /// Probes the agent runs once, by id.
    #[serde(default)]
    pub probes: Vec<DesiredProbe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredEndpoint {
    pub id: String,
    pub ips: Vec<IpAddr>,
    pub identity: u32,
    pub enforce_ingress: bool,
    pub enforce_egress: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcacheEntry {
    pub prefix: IpNet,
    pub identity: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// What a rule Weft does not enforce (L7 rules, `toFQDNs`, entities nothing carries)
    /// would have allowed: not allowed, and dropped with `UNSUPPORTED_RULE` rather than
    /// `POLICY_DENIED` when no other rule allows it (fail closed, visibly).
    Unsupported,
}

/// One datapath policy entry of an endpoint (maps 1:1 onto the agent's `PolicyEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    pub direction: Direction,
    /// `None`: any peer.
    pub peer_identity: Option<u32>,
    /// IP protocol number; `None`: any protocol.
    pub proto: Option<u8>,
    /// Inclusive port range (the ICMP type for ICMP); `None`: any port.
    pub ports: Option<(u16, u16)>,
    pub action: Action,
    /// Allowed only subject to L7 rules (the proxy decides per request).
    pub l7: bool,
    /// Policy name and rule path, for debugging (`web specs[0].ingress[1]`); several, joined
    /// by ", ", when rules compile to the same entry.
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredService {
    pub id: String,
    pub name: String,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<DesiredBackend>,
    pub algorithm: Algorithm,
    /// Client-IP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

/// A backend. All of the service's backends are kept so that established connections
/// survive; only `active` ones take new connections (state active and weight > 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredBackend {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub active: bool,
}

/// Why a node's state cannot be compiled: inconsistent input that no choice would make right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("node {0:?} is not in the tenant view")]
    UnknownNode(String),
    #[error(
        "endpoint {endpoint:?} has identity {identity}, outside the allocated range {}..{}",
        identity::FIRST_ALLOCATED,
        identity::CIDR_BASE
    )]
    IdentityOutOfRange { endpoint: String, identity: u32 },
    #[error(
        "endpoints {first:?} and {second:?} share identity {identity} but have different labels"
    )]
    IdentityLabelsMismatch {
        identity: u32,
        first: String,
        second: String,
    },
    #[error("address {prefix} is claimed by {first} and {second} with different identities")]
    AddressConflict {
        prefix: IpNet,
        first: String,
        second: String,
    },
    #[error("endpoint id {0:?} is reserved for the host endpoint")]
    ReservedEndpointId(String),
    #[error("duplicate {kind} id {id:?}")]
    DuplicateId { kind: &'static str, id: String },
    #[error(
        "endpoint {endpoint:?} is on node {node:?} but in cluster {cluster:?}, not the node's"
    )]
    EndpointClusterMismatch {
        endpoint: String,
        node: String,
        cluster: String,
    },
}

// ---------------------------------------------------------------------------------------
// Compiler

/// Compiles the desired state of node `node_id` (see the module documentation).
pub fn compile(view: &TenantView, node_id: &str) -> Result<NodeDesiredState, CompileError> {
    let node = view
        .nodes
        .iter()
        .find(|n| n.id == node_id)
        .ok_or_else(|| CompileError::UnknownNode(node_id.to_string()))?;
    let cluster = node.cluster_id.as_str();
    check_unique("endpoint", view.endpoints.iter().map(|e| &e.id))?;
    check_unique("service", view.services.iter().map(|s| &s.id))?;

    let cluster_endpoints: Vec<&EndpointView> = view
        .endpoints
        .iter()
        .filter(|e| e.cluster_id == cluster)
        .collect();
    if let Some(e) = view
        .endpoints
        .iter()
        .find(|e| e.node_id == node.id && e.cluster_id != cluster)
    {
        return Err(CompileError::EndpointClusterMismatch {
            endpoint: e.id.clone(),
            node: node.id.clone(),
            cluster: e.cluster_id.clone(),
        });
    }
    let labels_by_identity = identity_labels(&cluster_endpoints)?;

    // In-scope specs, in a canonical order so the output does not depend on input order.
    let mut policies: Vec<&PolicyView> = view
        .policies
        .iter()
        .filter(|p| {
            p.clusters
                .as_ref()
                .is_none_or(|cs| cs.iter().any(|c| c == cluster))
        })
        .collect();
    policies.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    let specs: Vec<(String, &PolicySpec)> = policies
        .iter()
        .flat_map(|p| {
            p.specs
                .iter()
                .enumerate()
                .map(move |(i, s)| (format!("{} specs[{i}]", p.name), s))
        })
        .collect();

    // ipcache: in-cluster addresses first; they win over CIDRs of the same prefix.
    let mut in_cluster: BTreeMap<IpNet, (u32, String)> = BTreeMap::new();
    let mut claim = |ip: IpAddr, id: u32, owner: String| -> Result<(), CompileError> {
        let prefix = IpNet::from(ip);
        match in_cluster.get(&prefix) {
            Some((other, _)) if *other == id => Ok(()),
            Some((_, first)) => Err(CompileError::AddressConflict {
                prefix,
                first: first.clone(),
                second: owner,
            }),
            None => {
                in_cluster.insert(prefix, (id, owner));
                Ok(())
            }
        }
    };
    for e in &cluster_endpoints {
        for ip in &e.ips {
            claim(*ip, e.identity, format!("endpoint {:?}", e.id))?;
        }
    }
    for n in view.nodes.iter().filter(|n| n.cluster_id == cluster) {
        let id = if n.id == node.id {
            identity::HOST
        } else {
            identity::REMOTE_NODE
        };
        for ip in &n.addresses {
            claim(*ip, id, format!("node {:?}", n.id))?;
        }
    }

    let mut cidrs = BTreeSet::new();
    for (_, spec) in &specs {
        collect_cidrs(spec, &mut cidrs);
    }
    cidrs.retain(|c| !in_cluster.contains_key(c));
    let cidr_ids = identity::cidr_identities(cidrs);

    let mut ipcache: Vec<IpcacheEntry> = in_cluster
        .iter()
        .map(|(p, (id, _))| (*p, *id))
        .chain(cidr_ids.iter().map(|(p, id)| (*p, *id)))
        .map(|(prefix, identity)| IpcacheEntry { prefix, identity })
        .collect();
    ipcache.sort_by_key(|e| e.prefix);

    let mut named_by_identity: BTreeMap<u32, BTreeSet<NamedPort>> = BTreeMap::new();
    for e in &cluster_endpoints {
        named_by_identity
            .entry(e.identity)
            .or_default()
            .extend(e.named_ports.iter().cloned());
    }
    let universe = Universe {
        labels_by_identity: &labels_by_identity,
        cidr_ids: &cidr_ids,
        named_by_identity: &named_by_identity,
    };
    // Subjects: the host endpoint and the node's workload endpoints.
    let no_ports: &[NamedPort] = &[];
    let mut subjects: Vec<(DesiredEndpoint, SubjectKind, &Labels, &[NamedPort])> = vec![(
        DesiredEndpoint {
            id: HOST_ENDPOINT_ID.to_string(),
            ips: sorted(node.addresses.iter().copied()),
            identity: identity::HOST,
            enforce_ingress: false,
            enforce_egress: false,
        },
        SubjectKind::Node,
        &node.labels,
        no_ports,
    )];
    for e in cluster_endpoints.iter().filter(|e| e.node_id == node.id) {
        if e.id == HOST_ENDPOINT_ID {
            return Err(CompileError::ReservedEndpointId(e.id.clone()));
        }
        subjects.push((
            DesiredEndpoint {
                id: e.id.clone(),
                ips: sorted(e.ips.iter().copied()),
                identity: e.identity,
                enforce_ingress: false,
                enforce_egress: false,
            },
            SubjectKind::Endpoint,
            &e.labels,
            &e.named_ports,
        ));
    }

    let allow_host = view
        .clusters
        .iter()
        .any(|c| c.id == cluster && c.allow_host_to_local_pods);
    let mut out = NodeDesiredState::default();
    let mut unsupported = BTreeSet::new();
    // Rules do not depend on the subject: each applying spec is compiled once, on first use.
    let mut compiled: Vec<Option<CompiledSpec>> = specs.iter().map(|_| None).collect();
    for (mut ep, kind, labels, own_ports) in subjects {
        let mut rules = Vec::new();
        for ((origin, spec), slot) in specs.iter().zip(&mut compiled) {
            let applies = spec
                .subject_selector()
                .is_some_and(|(k, sel)| k == kind && sel.matches(labels));
            if !applies {
                continue;
            }
            let c = slot.get_or_insert_with(|| compile_spec(spec, origin, &universe));
            ep.enforce_ingress |= crate::policy::enforces_default_deny(spec, Direction::Ingress);
            ep.enforce_egress |= crate::policy::enforces_default_deny(spec, Direction::Egress);
            rules.extend(c.rules.iter().cloned());
            rules.extend(c.named.iter().flat_map(|n| n.resolve(own_ports, &universe)));
            unsupported.extend(c.unsupported.iter().cloned());
        }
        if kind == SubjectKind::Endpoint && ep.enforce_ingress && allow_host {
            rules.push(PolicyRule {
                direction: Direction::Ingress,
                peer_identity: Some(identity::HOST),
                proto: None,
                ports: None,
                action: Action::Allow,
                l7: false,
                origin: HOST_TO_LOCAL_PODS_ORIGIN.to_string(),
            });
        }
        keep_denies_without_default_deny(&mut ep, &mut rules);
        let rules = normalize(rules);
        if !rules.is_empty() {
            out.policy.insert(ep.id.clone(), rules);
        }
        out.endpoints.push(ep);
    }
    out.endpoints.sort_by(|a, b| a.id.cmp(&b.id));
    out.ipcache = ipcache;
    out.services = view
        .services
        .iter()
        .filter(|s| s.cluster_id == cluster)
        .map(compile_service)
        .collect();
    out.services.sort_by(|a, b| a.id.cmp(&b.id));
    out.unsupported = unsupported.into_iter().collect();
    out.workloads = view
        .workloads
        .iter()
        .filter(|w| w.node_id == node.id)
        .map(|w| w.workload.clone())
        .collect();
    out.workloads.sort_by(|a, b| a.name.cmp(&b.name));
    out.workloads.dedup_by(|a, b| a.name == b.name);
    out.probes = view
        .probes
        .iter()
        .filter(|p| p.node_id == node.id)
        .map(|p| p.probe.clone())
        .collect();
    out.probes.sort_by(|a, b| a.id.cmp(&b.id));
    out.probes.dedup_by(|a, b| a.id == b.id);
    Ok(out)
}

/// Deny rules in a direction the endpoint does not enforce (`enableDefaultDeny: false`)
/// must still deny. The datapath skips every lookup in a direction that is not enforced, so
/// such an endpoint is turned into an enforced one with an explicit allow-any rule: the
/// same verdicts (default allow, denies win), expressed in a form the datapath evaluates.
fn keep_denies_without_default_deny(ep: &mut DesiredEndpoint, rules: &mut Vec<PolicyRule>) {
    for direction in [Direction::Ingress, Direction::Egress] {
        let enforced = match direction {
            Direction::Ingress => &mut ep.enforce_ingress,
            Direction::Egress => &mut ep.enforce_egress,
        };
        let has_deny = rules
            .iter()
            .any(|r| r.direction == direction && r.action == Action::Deny);
        if *enforced || !has_deny {
            continue;
        }
        *enforced = true;
        rules.push(PolicyRule {
            direction,
            peer_identity: None,
            proto: None,
            ports: None,
            action: Action::Allow,
            l7: false,
            origin: DEFAULT_ALLOW_ORIGIN.to_string(),
        });
    }
}

fn check_unique<'a>(
    kind: &'static str,
    ids: impl Iterator<Item = &'a String>,
) -> Result<(), CompileError> {
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(CompileError::DuplicateId {
                kind,
                id: id.clone(),
            });
        }
    }
    Ok(())
}

/// The labels of each endpoint identity of the cluster. Selectors are resolved per
/// identity, so two label sets behind one identity would make the result ambiguous.
fn identity_labels<'a>(
    endpoints: &[&'a EndpointView],
) -> Result<BTreeMap<u32, (&'a Labels, &'a str)>, CompileError> {
    let mut out: BTreeMap<u32, (&Labels, &str)> = BTreeMap::new();
    for e in endpoints {
        if !identity::is_allocated(e.identity) {
            return Err(CompileError::IdentityOutOfRange {
                endpoint: e.id.clone(),
                identity: e.identity,
            });
        }
        match out.get(&e.identity) {
            Some((labels, first)) if *labels != &e.labels => {
                return Err(CompileError::IdentityLabelsMismatch {
                    identity: e.identity,
                    first: first.to_string(),
                    second: e.id.clone(),
                })
            }
            Some(_) => {}
            None => {
                out.insert(e.identity, (&e.labels, &e.id));
            }
        }
    }
    Ok(out)
}

fn sorted(ips: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let set: BTreeSet<IpAddr> = ips.collect();
    set.into_iter().collect()
}

type RuleKey = (
    bool,
    Action,
    Option<u32>,
    Option<u8>,
    Option<(u16, u16)>,
    bool,
);

/// Everything of a rule but its origin; sorts ingress first, then allows before denies.
fn rule_key(r: &PolicyRule) -> RuleKey {
    (
        r.direction == Direction::Egress,
        r.action,
        r.peer_identity,
        r.proto,
        r.ports,
        r.l7,
    )
}

/// Whether `wide` matches every flow `narrow` matches.
fn covers(wide: &PolicyRule, narrow: &PolicyRule) -> bool {
    wide.direction == narrow.direction
        && (wide.peer_identity.is_none() || wide.peer_identity == narrow.peer_identity)
        && (wide.proto.is_none() || wide.proto == narrow.proto)
        && match (wide.ports, narrow.ports) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((lo, hi)), Some((nlo, nhi))) => lo <= nlo && nhi <= hi,
        }
}

/// One endpoint's rules in canonical form: sorted, one rule per key (origins of rules that
/// compile to the same entry are joined), and no L7 or unsupported entry that a plain allow
/// covers (the evaluator allows such flows without L7, and the datapath would otherwise pick
/// the more specific entry).
fn normalize(mut rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    let covered: Vec<bool> = rules
        .iter()
        .map(|r| {
            (r.l7 || r.action == Action::Unsupported)
                && rules
                    .iter()
                    .any(|p| p.action == Action::Allow && !p.l7 && covers(p, r))
        })
        .collect();
    let mut covered = covered.into_iter();
    rules.retain(|_| !covered.next().unwrap_or(false));
    rules.sort_by(|a, b| {
        rule_key(a)
            .cmp(&rule_key(b))
            .then_with(|| a.origin.cmp(&b.origin))
    });
    let mut out: Vec<PolicyRule> = Vec::with_capacity(rules.len());
    for r in rules {
        match out.last_mut() {
            Some(last) if rule_key(last) == rule_key(&r) => {
                if !last.origin.split(", ").any(|o| o == r.origin) {
                    last.origin.push_str(", ");
                    last.origin.push_str(&r.origin);
                }
            }
            _ => out.push(r),
        }
    }
    out
}

/// Every CIDR (and except) the spec names, plus the catch-all prefix of a family whose
/// `world-ipv4`/`world-ipv6` entity it uses.
fn collect_cidrs(spec: &PolicySpec, out: &mut BTreeSet<IpNet>) {
    let peers = spec
        .ingress
        .iter()
        .chain(&spec.ingress_deny)
        .map(Peers::ingress)
        .chain(
            spec.egress
                .iter()
                .chain(&spec.egress_deny)
                .map(Peers::egress),
        );
    for p in peers {
        let sets = p.cidr_sets.iter().flat_map(|s| {
            std::iter::once(&s.cidr)
                .chain(&s.except)
                .filter(|c| !c.is_empty())
        });
        out.extend(
            p.cidrs
                .iter()
                .chain(sets)
                .filter_map(|c| parse_cidr(c).ok()),
        );
        for e in p.entities.iter().filter_map(|e| e.parse::<Entity>().ok()) {
            match e {
                Entity::WorldIpv4 => out.insert(IpNet::V4(Default::default())),
                Entity::WorldIpv6 => out.insert(IpNet::V6(Default::default())),
                _ => false,
            };
        }
    }
}

/// The L3 part of a rule, whatever its direction.
struct Peers<'a> {
    present: bool,
    endpoints: &'a [LabelSelector],
    cidrs: &'a [String],
    cidr_sets: &'a [CidrRule],
    entities: &'a [String],
    fqdns: &'a [FqdnSelector],
    to_ports: &'a [PortRule],
    icmps: &'a [IcmpRule],
    /// Field names of `cidrs`, `cidr_sets` and `entities`, for messages.
    names: [&'static str; 3],
}

impl<'a> Peers<'a> {
    fn ingress(r: &'a IngressRule) -> Self {
        Peers {
            present: r.has_peer_fields(),
            endpoints: items(&r.from_endpoints),
            cidrs: items(&r.from_cidr),
            cidr_sets: items(&r.from_cidr_set),
            entities: items(&r.from_entities),
            fqdns: &[],
            to_ports: &r.to_ports,
            icmps: &r.icmps,
            names: ["fromCIDR", "fromCIDRSet", "fromEntities"],
        }
    }
    fn egress(r: &'a EgressRule) -> Self {
        Peers {
            present: r.has_peer_fields(),
            endpoints: items(&r.to_endpoints),
            cidrs: items(&r.to_cidr),
            cidr_sets: items(&r.to_cidr_set),
            entities: items(&r.to_entities),
            fqdns: items(&r.to_fqdns),
            to_ports: &r.to_ports,
            icmps: &r.icmps,
            names: ["toCIDR", "toCIDRSet", "toEntities"],
        }
    }
    /// Some peer field is present; one given as `[]` selects no peer (never a wildcard).
    fn has_peers(&self) -> bool {
        self.present
    }
}

/// What peer fields resolve against.
struct Universe<'a> {
    labels_by_identity: &'a BTreeMap<u32, (&'a Labels, &'a str)>,
    cidr_ids: &'a BTreeMap<IpNet, u32>,
    /// Named ports declared by the endpoints of each identity (of the node's cluster).
    named_by_identity: &'a BTreeMap<u32, BTreeSet<NamedPort>>,
}

impl Universe<'_> {
    fn cluster(&self) -> impl Iterator<Item = u32> + '_ {
        identity::RESERVED_IN_CLUSTER
            .into_iter()
            .chain(self.labels_by_identity.keys().copied())
    }
    fn world(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(identity::WORLD).chain(self.cidr_ids.values().copied())
    }
    /// Identities of the ipcache prefixes inside `net` and outside every `except`.
    fn cidr(&self, net: IpNet, except: &[IpNet]) -> impl Iterator<Item = u32> + '_ {
        let except = except.to_vec();
        self.cidr_ids
            .iter()
            .filter(move |(p, _)| net.contains(*p) && !except.iter().any(|e| e.contains(*p)))
            .map(|(_, id)| *id)
    }
}

/// Resolved peers of a rule.
enum PeerSet {
    Any,
    Ids(BTreeSet<u32>),
}

struct CompiledSpec {
    rules: Vec<PolicyRule>,
    /// Rules on named ports: resolved per subject (ingress) or per peer (egress).
    named: Vec<NamedRule>,
    unsupported: Vec<String>,
}

/// A rule entry on a named port, before resolution. As Cilium: the name resolves against
/// the destination endpoint's declared ports (the subject on ingress, the peer on egress);
/// where the destination does not declare it, the entry matches nothing there (an allow
/// allows nothing, a deny never widens to other ports).
struct NamedRule {
    direction: Direction,
    peers: Vec<(Option<u32>, bool)>,
    name: String,
    protos: &'static [u8],
    action: Action,
    l7: bool,
    origin: String,
}

impl NamedRule {
    fn resolve(&self, own: &[NamedPort], u: &Universe<'_>) -> Vec<PolicyRule> {
        let matching = |ports: &mut dyn Iterator<Item = &NamedPort>| -> BTreeSet<(u8, u16)> {
            ports
                .filter(|p| p.name == self.name)
                .filter_map(|p| {
                    let proto = protocols(p.protocol).first().copied()?;
                    self.protos.contains(&proto).then_some((proto, p.port))
                })
                .collect()
        };
        let mut out = Vec::new();
        for &(peer, peer_unsupported) in &self.peers {
            let ports = match self.direction {
                Direction::Ingress => matching(&mut own.iter()),
                // Egress: the ports the peer declares; any peer: every endpoint's.
                Direction::Egress => match peer {
                    Some(id) => matching(&mut u.named_by_identity.get(&id).into_iter().flatten()),
                    None => matching(&mut u.named_by_identity.values().flatten()),
                },
            };
            for (proto, port) in ports {
                let action = match self.action {
                    Action::Allow if self.l7 || peer_unsupported => Action::Unsupported,
                    other => other,
                };
                out.push(PolicyRule {
                    direction: self.direction,
                    peer_identity: peer,
                    proto: Some(proto),
                    ports: Some((port, port)),
                    action,
                    l7: false,
                    origin: self.origin.clone(),
                });
            }
        }
        out
    }
}

/// Compiles a spec's rules, resolved against the node's cluster.
fn compile_spec(spec: &PolicySpec, origin: &str, u: &Universe<'_>) -> CompiledSpec {
    let mut c = CompiledSpec {
        rules: Vec::new(),
        named: Vec::new(),
        unsupported: Vec::new(),
    };
    let sections: [(&str, Direction, Action, Vec<Peers<'_>>); 4] = [
        (
            "ingress",
            Direction::Ingress,
            Action::Allow,
            spec.ingress.iter().map(Peers::ingress).collect(),
        ),
        (
            "ingressDeny",
            Direction::Ingress,
            Action::Deny,
            spec.ingress_deny.iter().map(Peers::ingress).collect(),
        ),
        (
            "egress",
            Direction::Egress,
            Action::Allow,
            spec.egress.iter().map(Peers::egress).collect(),
        ),
        (
            "egressDeny",
            Direction::Egress,
            Action::Deny,
            spec.egress_deny.iter().map(Peers::egress).collect(),
        ),
    ];
    for (section, direction, action, rules) in sections {
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("{origin}.{section}[{i}]");
            let (peers, not_enforced) = resolve_peers(rule, action, &path, u, &mut c.unsupported);
            let (l4, named) = resolve_l4(rule, &path, &mut c.unsupported);
            let peer_list: Vec<(Option<u32>, bool)> = match peers {
                PeerSet::Any => vec![(None, false)],
                PeerSet::Ids(ids) => ids.into_iter().map(|id| (Some(id), false)).collect(),
            };
            let not_enforced = not_enforced.into_iter().map(|id| (Some(id), true));
            let peer_list: Vec<(Option<u32>, bool)> =
                peer_list.into_iter().chain(not_enforced).collect();
            for (name, protos, l7) in named {
                c.named.push(NamedRule {
                    direction,
                    peers: peer_list.clone(),
                    name,
                    protos,
                    action,
                    l7: l7 && action == Action::Allow,
                    origin: path.clone(),
                });
            }
            for (peer, peer_unsupported) in peer_list {
                for &(proto, ports, l7) in &l4 {
                    // Deny rules decide at L4 whatever L7 rules they carry; allows that need
                    // the L7 proxy or an unenforced peer fail closed.
                    let action = match action {
                        Action::Allow if l7 || peer_unsupported => Action::Unsupported,
                        other => other,
                    };
                    c.rules.push(PolicyRule {
                        direction,
                        peer_identity: peer,
                        proto,
                        ports,
                        action,
                        l7: false,
                        origin: path.clone(),
                    });
                }
            }
        }
    }
    c
}

fn resolve_peers(
    rule: &Peers<'_>,
    action: Action,
    path: &str,
    u: &Universe<'_>,
    unsupported: &mut Vec<String>,
) -> (PeerSet, BTreeSet<u32>) {
    let has_l4 = !rule.to_ports.is_empty() || !rule.icmps.is_empty();
    // Peers an allow rule names but Weft cannot enforce: they get `Action::Unsupported`.
    let mut not_enforced = BTreeSet::new();
    if !rule.has_peers() {
        // Only ports: any peer. Nothing at all (`{}`): matches nothing. Peer fields given
        // as `[]` fall through below and resolve to no identity.
        let peers = if has_l4 {
            PeerSet::Any
        } else {
            PeerSet::Ids(BTreeSet::new())
        };
        return (peers, not_enforced);
    }
    let [cidr_field, set_field, entity_field] = rule.names;
    let mut ids = BTreeSet::new();
    for sel in rule.endpoints {
        ids.extend(
            u.labels_by_identity
                .iter()
                .filter(|(_, (labels, _))| sel.matches(labels))
                .map(|(id, _)| *id),
        );
    }
    for (j, name) in rule.entities.iter().enumerate() {
        let Ok(entity) = name.parse::<Entity>() else {
            unsupported.push(format!(
                "{path}.{entity_field}[{j}]: unknown entity {name:?}, matches nothing"
            ));
            continue;
        };
        // Entities nothing in Weft carries: see `policy::not_enforced`.
        let stand_in: Vec<u32> = match entity {
            Entity::Unmanaged => u.world().collect(),
            Entity::KubeApiserver => u
                .world()
                .chain([identity::HOST, identity::REMOTE_NODE])
                .collect(),
            _ => Vec::new(),
        };
        if !stand_in.is_empty() {
            match action {
                Action::Deny => ids.extend(stand_in),
                _ => not_enforced.extend(stand_in),
            }
            continue;
        }
        match entity {
            Entity::All => return (PeerSet::Any, BTreeSet::new()),
            Entity::Cluster => ids.extend(u.cluster()),
            Entity::World => ids.extend(u.world()),
            Entity::WorldIpv4 => {
                ids.extend(u.cidr(IpNet::V4(Default::default()), &[]));
            }
            Entity::WorldIpv6 => {
                ids.extend(u.cidr(IpNet::V6(Default::default()), &[]));
            }
            other => ids.extend(identity::reserved(other)),
        }
    }
    for (j, cidr) in rule.cidrs.iter().enumerate() {
        match parse_cidr(cidr) {
            Ok(net) => ids.extend(u.cidr(net, &[])),
            Err(why) => {
                unsupported.push(format!("{path}.{cidr_field}[{j}]: {why}, matches nothing"))
            }
        }
    }
    for (j, set) in rule.cidr_sets.iter().enumerate() {
        let at = format!("{path}.{set_field}[{j}]");
        let net = match parse_cidr(&set.cidr) {
            Ok(net) => net,
            Err(why) => {
                unsupported.push(format!("{at}.cidr: {why}, matches nothing"));
                continue;
            }
        };
        let mut except = Vec::new();
        let mut bad_except = false;
        for (k, e) in set.except.iter().enumerate() {
            match parse_cidr(e) {
                Ok(e) => except.push(e),
                Err(why) => {
                    bad_except = true;
                    // Ignoring it (as the evaluator) would widen an allow rule.
                    let effect = match action {
                        Action::Allow | Action::Unsupported => "the set allows nothing",
                        Action::Deny => "ignored",
                    };
                    unsupported.push(format!("{at}.except[{k}]: {why}, {effect}"));
                }
            }
        }
        if !(bad_except && action == Action::Allow) {
            ids.extend(u.cidr(net, &except));
        }
    }
    for (j, _) in rule.fqdns.iter().enumerate() {
        let at = format!("{path}.toFQDNs[{j}]");
        match action {
            Action::Allow | Action::Unsupported => {
                unsupported.push(format!(
                    "{at}: toFQDNs is not enforced; outside peers on its ports are dropped as UNSUPPORTED_RULE"
                ));
                not_enforced.extend(u.world());
            }
            Action::Deny => {
                unsupported.push(format!(
                    "{at}: toFQDNs is not compiled yet; denies every outside peer"
                ));
                ids.extend(u.world());
            }
        }
    }
    (PeerSet::Ids(ids), not_enforced)
}

type L4 = (Option<u8>, Option<(u16, u16)>, bool);

/// The protocol/port entries of a rule (a rule without `toPorts` and `icmps` is any), and
/// its named ports (name, protocols, l7), resolved later per destination endpoint.
#[allow(clippy::type_complexity)]
fn resolve_l4(
    rule: &Peers<'_>,
    path: &str,
    unsupported: &mut Vec<String>,
) -> (Vec<L4>, Vec<(String, &'static [u8], bool)>) {
    let mut named = Vec::new();
    if rule.to_ports.is_empty() && rule.icmps.is_empty() {
        return (vec![(None, None, false)], named);
    }
    let mut out = Vec::new();
    for (k, pr) in rule.to_ports.iter().enumerate() {
        let l7 = pr
            .rules
            .as_ref()
            .is_some_and(|r| !r.http.is_empty() || !r.dns.is_empty());
        if pr.ports.is_empty() {
            out.push((None, None, l7));
            continue;
        }
        for (m, pp) in pr.ports.iter().enumerate() {
            let at = format!("{path}.toPorts[{k}].ports[{m}]");
            let protos = protocols(pp.protocol);
            let value = match &pp.port {
                None => Ok(PortValue::Any),
                Some(p) => p.value(),
            };
            let ports = match value {
                Ok(PortValue::Any) => None,
                Ok(PortValue::Number(start)) => {
                    // As the evaluator: an unusable endPort means the single port.
                    let end = pp
                        .end_port
                        .and_then(|e| u16::try_from(e).ok())
                        .filter(|e| *e >= start)
                        .unwrap_or(start);
                    Some((start, end))
                }
                Ok(PortValue::Named(name)) => {
                    named.push((name, protos, l7));
                    continue;
                }
                Err(why) => {
                    unsupported.push(format!("{at}: {why}, matches nothing"));
                    continue;
                }
            };
            out.extend(protos.iter().map(|p| (Some(*p), ports, l7)));
        }
    }
    for (k, icmp) in rule.icmps.iter().enumerate() {
        for (m, field) in icmp.fields.iter().enumerate() {
            match field.resolve() {
                Ok((family, ty)) => {
                    let proto = match family {
                        IcmpFamily::IPv4 => PROTO_ICMP,
                        IcmpFamily::IPv6 => PROTO_ICMPV6,
                    };
                    out.push((Some(proto), Some((u16::from(ty), u16::from(ty))), false));
                }
                Err(why) => unsupported.push(format!(
                    "{path}.icmps[{k}].fields[{m}]: {why}, matches nothing"
                )),
            }
        }
    }
    (out, named)
}

/// `ANY` is TCP, UDP and SCTP (not ICMP), as in the evaluator and Cilium.
fn protocols(p: Protocol) -> &'static [u8] {
    match p {
        Protocol::Any => &[PROTO_TCP, PROTO_UDP, PROTO_SCTP],
        Protocol::Tcp => &[PROTO_TCP],
        Protocol::Udp => &[PROTO_UDP],
        Protocol::Sctp => &[PROTO_SCTP],
        Protocol::Icmp => &[PROTO_ICMP],
        Protocol::IcmpV6 => &[PROTO_ICMPV6],
    }
}

fn compile_service(s: &ServiceView) -> DesiredService {
    let mut frontends = s.spec.frontends.clone();
    frontends.sort_by_key(|f| (f.vip, f.port, f.protocol == L4Protocol::Udp));
    frontends.dedup();
    let mut backends: Vec<DesiredBackend> = s
        .spec
        .backends
        .iter()
        .map(|b| DesiredBackend {
            address: b.address,
            port: b.port,
            weight: b.weight,
            active: b.state == BackendState::Active && b.weight > 0,
        })
        .collect();
    backends.sort_by_key(|b| (b.address, b.port, b.weight, b.active));
    backends.dedup();
    DesiredService {
        id: s.id.clone(),
        name: s.name.clone(),
        frontends,
        backends,
        algorithm: s.spec.algorithm,
        affinity_timeout: s.spec.session_affinity.as_ref().map(|a| a.timeout_seconds),
    }
}

// ---------------------------------------------------------------------------------------
// Deltas

/// What changes between two states of one node. Keyed sections are replaced item by item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub endpoints_upsert: Vec<DesiredEndpoint>,
    pub endpoints_remove: Vec<String>,
    pub ipcache_upsert: Vec<IpcacheEntry>,
    pub ipcache_remove: Vec<IpNet>,
    /// Whole rule lists, replacing the endpoint's previous list.
    pub policy_upsert: BTreeMap<String, Vec<PolicyRule>>,
    pub policy_remove: Vec<String>,
    pub services_upsert: Vec<DesiredService>,
    pub services_remove: Vec<String>,
    /// The new list when it changed.
    pub unsupported: Option<Vec<String>>,
    #[serde(default)]
    pub workloads_upsert: Vec<DesiredWorkload>,
    #[serde(default)]
    pub workloads_remove: Vec<String>,
    #[serde(default)]
    pub probes_upsert: Vec<DesiredProbe>,
    #[serde(default)]
    pub probes_remove: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        *self == Delta::default()
    }
}

/// The delta that turns `old` into `new` (see [`apply`]).
pub fn diff(old: &NodeDesiredState, new: &NodeDesiredState) -> Delta {
    let (endpoints_upsert, endpoints_remove) =
        diff_keyed(&old.endpoints, &new.endpoints, |e| e.id.clone());
    let (ipcache_upsert, ipcache_remove) = diff_keyed(&old.ipcache, &new.ipcache, |e| e.prefix);
    let (services_upsert, services_remove) =
        diff_keyed(&old.services, &new.services, |s| s.id.clone());
    let (workloads_upsert, workloads_remove) =
        diff_keyed(&old.workloads, &new.workloads, |w| w.name.clone());
    let (probes_upsert, probes_remove) = diff_keyed(&old.probes, &new.probes, |p| p.id.clone());
    let policy_upsert = new
        .policy
        .iter()
        .filter(|(id, rules)| old.policy.get(*id) != Some(*rules))
        .map(|(id, rules)| (id.clone(), rules.clone()))
        .collect();
    let policy_remove = old
        .policy
        .keys()
        .filter(|id| !new.policy.contains_key(*id))
        .cloned()
        .collect();
    Delta {
        endpoints_upsert,
        endpoints_remove,
        ipcache_upsert,
        ipcache_remove,
        policy_upsert,
        policy_remove,
        services_upsert,
        services_remove,
        unsupported: (old.unsupported != new.unsupported).then(|| new.unsupported.clone()),
        workloads_upsert,
        workloads_remove,
        probes_upsert,
        probes_remove,
    }
}

/// `state` with `delta` applied: `apply(old, &diff(old, new)) == new`.
pub fn apply(state: &NodeDesiredState, delta: &Delta) -> NodeDesiredState {
    let mut policy = state.policy.clone();
    for id in &delta.policy_remove {
        policy.remove(id);
    }
    policy.extend(delta.policy_upsert.clone());
    NodeDesiredState {
        endpoints: apply_keyed(
            &state.endpoints,
            &delta.endpoints_upsert,
            &delta.endpoints_remove,
            |e| e.id.clone(),
        ),
        ipcache: apply_keyed(
            &state.ipcache,
            &delta.ipcache_upsert,
            &delta.ipcache_remove,
            |e| e.prefix,
        ),
        policy,
        services: apply_keyed(
            &state.services,
            &delta.services_upsert,
            &delta.services_remove,
            |s| s.id.clone(),
        ),
        unsupported: delta
            .unsupported
            .clone()
            .unwrap_or_else(|| state.unsupported.clone()),
        workloads: apply_keyed(
            &state.workloads,
            &delta.workloads_upsert,
            &delta.workloads_remove,
            |w| w.name.clone(),
        ),
        probes: apply_keyed(
            &state.probes,
            &delta.probes_upsert,
            &delta.probes_remove,
            |p| p.id.clone(),
        ),
    }
}

/// Upserts (new or changed items) and removed keys between two lists sorted by `key`.
fn diff_keyed<T: Clone + PartialEq, K: Ord + Clone>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Vec<K>) {
    let old_by: BTreeMap<K, &T> = old.iter().map(|t| (key(t), t)).collect();
    let new_keys: BTreeSet<K> = new.iter().map(&key).collect();
    let upsert = new
        .iter()
        .filter(|t| old_by.get(&key(t)) != Some(t))
        .cloned()
        .collect();
    let remove = old_by
        .keys()
        .filter(|k| !new_keys.contains(*k))
        .cloned()
        .collect();
    (upsert, remove)
}

/// The list sorted by key, with `remove` taken out and `upsert` put in.
fn apply_keyed<T: Clone, K: Ord + Clone>(
    items: &[T],
    upsert: &[T],
    remove: &[K],
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut by: BTreeMap<K, T> = items.iter().map(|t| (key(t), t.clone())).collect();
    for k in remove {
        by.remove(k);
    }
    by.extend(upsert.iter().map(|t| (key(t), t.clone())));
    by.into_values().collect()
}

#[cfg(test)]
mod tests;
