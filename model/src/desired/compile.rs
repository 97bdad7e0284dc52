//! The per-node compiler: scope, ipcache, subjects and their rules in canonical form.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::IpNet;

use super::peers::{collect_cidrs, compile_spec, CompiledSpec, Universe};
use super::view::*;
use crate::identity;
use crate::labels::Labels;
use crate::policy::{Direction, FqdnSelector, NamedPort, PolicySpec, SubjectKind};
use crate::routing::{ClusterNode, RoutingMode};
use crate::service::{BackendState, L4Protocol};

/// Compiles the desired state of node `node_id` (see the module documentation).
pub fn compile(view: &TenantView, node_id: &str) -> Result<NodeDesiredState, CompileError> {
    let node = find_node(view, node_id)?;
    ClusterPlan::new(view, &node.cluster_id).compile(view, node)
}

/// The node `node_id` of the view.
pub fn find_node<'v>(view: &'v TenantView, node_id: &str) -> Result<&'v NodeView, CompileError> {
    view.nodes
        .iter()
        .find(|n| n.id == node_id)
        .ok_or_else(|| CompileError::UnknownNode(node_id.to_string()))
}

/// An in-cluster address's claim: the identity it resolves to and who holds it.
struct Claim {
    identity: u32,
    owner: String,
    /// The node whose address it is, for node addresses.
    node: Option<String>,
}

/// What a subject's rules depend on besides the plan: its kind, labels and named ports.
type SubjectKey = (SubjectKind, Labels, Vec<NamedPort>);

/// Subjects' rules by the hash of their key, each bucket the keys that hash alike: looked
/// up by reference, so a node's compile clones no labels to find its endpoints' rules.
type Subjects = HashMap<u64, Vec<(SubjectKey, Arc<SubjectRules>)>>;

/// A subject's compiled policy: its rules, the directions it enforces, and the parts of
/// policies selecting it that could not be compiled.
struct SubjectRules {
    rules: Rules,
    enforced: Enforced,
    unsupported: Vec<String>,
}

/// The directions a subject enforces policy in.
#[derive(Default, Clone, Copy)]
struct Enforced {
    ingress: bool,
    egress: bool,
}

/// What every node of one cluster shares when compiling from one view: the ipcache (with
/// every node's addresses as `remote-node`), the peers' identities, the in-scope specs and
/// each spec's compiled rules and each subject's rule list (both built on first use, by
/// whichever node needs them first), the services. Built once per view and cluster,
/// [`ClusterPlan::compile`] then costs a node lookups of its endpoints' rule lists and a
/// copy of the ipcache, not a pass over the tenant.
pub struct ClusterPlan {
    cluster: String,
    /// A conflict that fails every node's compile: found before the endpoint-cluster
    /// check (duplicate ids), and after it (identities, addresses).
    early: Option<CompileError>,
    late: Option<CompileError>,
    /// Per node of the cluster: an endpoint of it that belongs to another cluster, and
    /// that cluster.
    mismatched: HashMap<Arc<str>, (String, Arc<str>)>,
    /// Two nodes claiming one address: fails those two nodes' compiles.
    node_conflicts: Vec<(IpNet, String, String, [String; 2])>,
    /// The cluster's endpoints, by node: indices into the view's endpoints (a copy of
    /// them was most of a plan's memory, held once per view by every replica).
    local: HashMap<Arc<str>, Vec<usize>>,
    labels_by_identity: BTreeMap<u32, (Labels, String)>,
    named_by_identity: BTreeMap<u32, BTreeSet<NamedPort>>,
    cidr_ids: BTreeMap<IpNet, u32>,
    specs: Vec<(String, PolicySpec)>,
    compiled: Vec<OnceLock<CompiledSpec>>,
    /// Each subject's rules, by what they depend on: computed by the first node with such a
    /// subject, shared with the others (see [`Rules`]).
    subjects: Mutex<Subjects>,
    hasher: RandomState,
    /// Sorted by prefix; node addresses as `remote-node`.
    ipcache: Vec<IpcacheEntry>,
    services: Vec<DesiredService>,
    allow_host: bool,
    routing: RoutingMode,
    /// Every node of the cluster, sorted by name.
    nodes: Vec<ClusterNode>,
}

impl ClusterPlan {
    pub fn new(view: &TenantView, cluster: &str) -> ClusterPlan {
        let early = check_unique("endpoint", view.endpoints.iter().map(|e| &e.id))
            .and_then(|()| check_unique("service", view.services.iter().map(|s| &s.id)))
            .err();
        let cluster_nodes: HashMap<&str, ()> = view
            .nodes
            .iter()
            .filter(|n| n.cluster_id == cluster)
            .map(|n| (n.id.as_str(), ()))
            .collect();
        let mut mismatched = HashMap::new();
        let mut local: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, e) in view.endpoints.iter().enumerate() {
            if *e.cluster_id == *cluster {
                local.entry(e.node_id.clone()).or_default().push(i);
            } else if cluster_nodes.contains_key(&*e.node_id) {
                mismatched
                    .entry(e.node_id.clone())
                    .or_insert_with(|| (e.id.clone(), e.cluster_id.clone()));
            }
        }
        let cluster_endpoints: Vec<&EndpointView> = view
            .endpoints
            .iter()
            .filter(|e| *e.cluster_id == *cluster)
            .collect();
        let mut late = None;
        let labels_by_identity = identity_labels(&cluster_endpoints).unwrap_or_else(|e| {
            late.get_or_insert(e);
            BTreeMap::new()
        });

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
        let specs: Vec<(String, PolicySpec)> = policies
            .iter()
            .flat_map(|p| {
                p.specs
                    .iter()
                    .enumerate()
                    .map(move |(i, s)| (format!("{} specs[{i}]", p.name), s.clone()))
            })
            .collect();

        // ipcache: in-cluster addresses first; they win over CIDRs of the same prefix.
        let mut claims: BTreeMap<IpNet, Claim> = BTreeMap::new();
        let mut node_conflicts = Vec::new();
        let mut claim = |ip: IpAddr, new: Claim| {
            let prefix = IpNet::from(ip);
            match claims.get(&prefix) {
                None => {
                    claims.insert(prefix, new);
                }
                Some(old) if old.identity == new.identity && old.node == new.node => {}
                // Two nodes: the host on each of them, a remote node on the others.
                Some(Claim {
                    node: Some(first),
                    owner,
                    ..
                }) if new.node.is_some() => {
                    if Some(first) != new.node.as_ref() {
                        let second = new.node.clone().unwrap_or_default();
                        node_conflicts.push((
                            prefix,
                            owner.clone(),
                            new.owner,
                            [first.clone(), second],
                        ));
                    }
                }
                Some(old) if old.identity == new.identity => {}
                Some(old) => {
                    late.get_or_insert(CompileError::AddressConflict {
                        prefix,
                        first: old.owner.clone(),
                        second: new.owner,
                    });
                }
            }
        };
        for e in &cluster_endpoints {
            for ip in &e.ips {
                claim(
                    *ip,
                    Claim {
                        identity: e.identity,
                        owner: format!("endpoint {:?}", e.id),
                        node: None,
                    },
                );
            }
        }
        for n in view.nodes.iter().filter(|n| n.cluster_id == cluster) {
            for ip in &n.addresses {
                claim(
                    *ip,
                    Claim {
                        identity: identity::REMOTE_NODE,
                        owner: format!("node {:?}", n.id),
                        node: Some(n.id.clone()),
                    },
                );
            }
        }

        let mut cidrs = BTreeSet::new();
        for (_, spec) in &specs {
            collect_cidrs(spec, &mut cidrs);
        }
        cidrs.retain(|c| !claims.contains_key(c));
        let cidr_ids = identity::cidr_identities(cidrs);
        let mut ipcache: Vec<IpcacheEntry> = claims
            .iter()
            .map(|(p, c)| (*p, c.identity))
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
        let mut services: Vec<DesiredService> = view
            .services
            .iter()
            .filter(|s| s.cluster_id == cluster)
            .map(compile_service)
            .collect();
        services.sort_by(|a, b| a.id.cmp(&b.id));
        let mut nodes: Vec<ClusterNode> = view
            .nodes
            .iter()
            .filter(|n| n.cluster_id == cluster)
            .map(|n| ClusterNode {
                name: n.name.clone(),
                addresses: sorted(n.addresses.iter().copied()),
                pod_cidrs: sorted(n.pod_cidrs.iter().copied()),
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let settings = view.clusters.iter().find(|c| c.id == cluster);
        ClusterPlan {
            cluster: cluster.to_string(),
            early,
            late,
            mismatched,
            node_conflicts,
            local,
            labels_by_identity: labels_by_identity
                .into_iter()
                .map(|(id, (labels, owner))| (id, (labels.clone(), owner.to_string())))
                .collect(),
            named_by_identity,
            cidr_ids,
            compiled: specs.iter().map(|_| OnceLock::new()).collect(),
            subjects: Mutex::default(),
            hasher: RandomState::new(),
            specs,
            ipcache,
            services,
            allow_host: settings.is_some_and(|c| c.allow_host_to_local_pods),
            routing: settings.map(|c| c.routing).unwrap_or_default(),
            nodes,
        }
    }

    /// The ipcache every node of the cluster shares, sorted by prefix: each node's gets its
    /// own addresses as `host` ([`node_ipcache`]).
    pub fn shared_ipcache(&self) -> &[IpcacheEntry] {
        &self.ipcache
    }

    /// The cluster's nodes, by name: the same list for every node of it.
    pub fn shared_nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// Compiles the desired state of `node`, a node of this plan's cluster in `view` (the
    /// view the plan was made from: its workloads and probes are read from it).
    pub fn compile(
        &self,
        view: &TenantView,
        node: &NodeView,
    ) -> Result<NodeDesiredState, CompileError> {
        let mut out = self.compile_local(view, node)?;
        out.ipcache = node_ipcache(&self.ipcache, &node.addresses);
        out.nodes = self.nodes.clone();
        Ok(out)
    }

    /// [`ClusterPlan::compile`] without the ipcache and the nodes (left empty): what is the
    /// node's own. Its ipcache is `node_ipcache(self.shared_ipcache(), state.host_ips())`,
    /// its nodes `self.shared_nodes()`.
    pub fn compile_local(
        &self,
        view: &TenantView,
        node: &NodeView,
    ) -> Result<NodeDesiredState, CompileError> {
        if node.cluster_id != self.cluster {
            return Err(CompileError::UnknownNode(node.id.clone()));
        }
        if let Some(e) = &self.early {
            return Err(e.clone());
        }
        if let Some((endpoint, cluster)) = self.mismatched.get(node.id.as_str()) {
            return Err(CompileError::EndpointClusterMismatch {
                endpoint: endpoint.clone(),
                node: node.id.clone(),
                cluster: cluster.to_string(),
            });
        }
        if let Some(e) = &self.late {
            return Err(e.clone());
        }
        if let Some((prefix, first, second, _)) = self
            .node_conflicts
            .iter()
            .find(|(.., nodes)| nodes.contains(&node.id))
        {
            return Err(CompileError::AddressConflict {
                prefix: *prefix,
                first: first.clone(),
                second: second.clone(),
            });
        }
        let universe = Universe {
            labels_by_identity: &self.labels_by_identity,
            cidr_ids: &self.cidr_ids,
            named_by_identity: &self.named_by_identity,
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
        let endpoints = self.local.get(node.id.as_str()).into_iter().flatten();
        // The view the plan was made from holds every index; another would be a caller's bug,
        // caught here rather than compiling someone else's endpoints.
        for e in endpoints.map(|&i| view.endpoints.get(i).filter(|e| *e.node_id == *node.id)) {
            let e = e.ok_or_else(|| CompileError::UnknownNode(node.id.clone()))?;
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

        let mut out = NodeDesiredState {
            routing: self.routing,
            ..NodeDesiredState::default()
        };
        // Kept by the node's stream until the next change: no room to spare.
        out.endpoints.reserve_exact(subjects.len());
        let mut unsupported = BTreeSet::new();
        for (mut ep, kind, labels, own_ports) in subjects {
            let subject = self.subject(kind, labels, own_ports, &universe);
            ep.enforce_ingress = subject.enforced.ingress;
            ep.enforce_egress = subject.enforced.egress;
            unsupported.extend(subject.unsupported.iter().cloned());
            if !subject.rules.is_empty() {
                out.policy.insert(ep.id.clone(), subject.rules.clone());
            }
            out.endpoints.push(ep);
        }
        out.endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        out.services = self.services.clone();
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

    /// The rules of a subject of this cluster: they depend only on the subject's kind,
    /// labels and named ports (and on the plan), so subjects alike on any node share them.
    fn subject(
        &self,
        kind: SubjectKind,
        labels: &Labels,
        own_ports: &[NamedPort],
        universe: &Universe<'_>,
    ) -> Arc<SubjectRules> {
        let hash = self.hasher.hash_one((kind, labels, own_ports));
        let find = |subjects: &Subjects| {
            let bucket = subjects.get(&hash)?;
            let same =
                |((k, l, p), _): &&(SubjectKey, _)| *k == kind && l == labels && p == own_ports;
            bucket.iter().find(same).map(|(_, rules)| rules.clone())
        };
        if let Some(known) = find(&self.lock_subjects()) {
            return known;
        }
        let computed = Arc::new(self.compile_subject(kind, labels, own_ports, universe));
        let mut subjects = self.lock_subjects();
        // Another node may have computed it meanwhile: every node keeps the first one.
        if let Some(known) = find(&subjects) {
            return known;
        }
        let key = (kind, labels.clone(), own_ports.to_vec());
        subjects
            .entry(hash)
            .or_default()
            .push((key, computed.clone()));
        computed
    }

    fn lock_subjects(&self) -> std::sync::MutexGuard<'_, Subjects> {
        self.subjects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compile_subject(
        &self,
        kind: SubjectKind,
        labels: &Labels,
        own_ports: &[NamedPort],
        universe: &Universe<'_>,
    ) -> SubjectRules {
        let mut enforced = Enforced::default();
        let mut unsupported = Vec::new();
        let mut rules = Vec::new();
        for ((origin, spec), slot) in self.specs.iter().zip(&self.compiled) {
            let applies = spec
                .subject_selector()
                .is_some_and(|(k, sel)| k == kind && sel.matches(labels));
            if !applies {
                continue;
            }
            // Rules do not depend on the subject: each spec is compiled once per plan.
            let c = slot.get_or_init(|| compile_spec(spec, origin, universe));
            enforced.ingress |= crate::policy::enforces_default_deny(spec, Direction::Ingress);
            enforced.egress |= crate::policy::enforces_default_deny(spec, Direction::Egress);
            rules.extend(c.rules.iter().cloned());
            rules.extend(c.named.iter().flat_map(|n| n.resolve(own_ports, universe)));
            unsupported.extend(c.unsupported.iter().cloned());
        }
        if kind == SubjectKind::Endpoint && enforced.ingress && self.allow_host {
            rules.push(allow_all(
                Direction::Ingress,
                Some(identity::HOST),
                HOST_TO_LOCAL_PODS_ORIGIN,
            ));
        }
        keep_denies_without_default_deny(&mut enforced, &mut rules);
        SubjectRules {
            rules: normalize(rules).into(),
            enforced,
            unsupported,
        }
    }
}

/// Deny rules in a direction the endpoint does not enforce (`enableDefaultDeny: false`)
/// must still deny. The datapath skips every lookup in a direction that is not enforced, so
/// such an endpoint is turned into an enforced one with an explicit allow-any rule: the
/// same verdicts (default allow, denies win), expressed in a form the datapath evaluates.
fn keep_denies_without_default_deny(enforced: &mut Enforced, rules: &mut Vec<PolicyRule>) {
    for direction in [Direction::Ingress, Direction::Egress] {
        let enforced = match direction {
            Direction::Ingress => &mut enforced.ingress,
            Direction::Egress => &mut enforced.egress,
        };
        let has_deny = rules
            .iter()
            .any(|r| r.direction == direction && r.action == Action::Deny);
        if *enforced || !has_deny {
            continue;
        }
        *enforced = true;
        rules.push(allow_all(direction, None, DEFAULT_ALLOW_ORIGIN));
    }
}

/// A rule allowing every protocol and port in `direction` with `peer` (`None`: any peer).
fn allow_all(direction: Direction, peer: Option<u32>, origin: &str) -> PolicyRule {
    PolicyRule {
        direction,
        peer_identity: peer,
        proto: None,
        ports: None,
        action: Action::Allow,
        l7: false,
        http: Vec::new(),
        dns: Vec::new(),
        fqdn: None,
        origin: origin.to_string(),
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
            Some((labels, first)) if *labels != &*e.labels => {
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

fn sorted<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    let set: BTreeSet<T> = items.collect();
    set.into_iter().collect()
}

type RuleKey<'a> = (
    bool,
    Action,
    Option<u32>,
    Option<&'a FqdnSelector>,
    Option<u8>,
    Option<(u16, u16)>,
    bool,
);

/// Everything of a rule but its origin (and its L7 rules, merged per entry); sorts ingress
/// first, then allows before denies.
fn rule_key(r: &PolicyRule) -> RuleKey<'_> {
    (
        r.direction == Direction::Egress,
        r.action,
        r.peer_identity,
        r.fqdn.as_ref(),
        r.proto,
        r.ports,
        r.l7,
    )
}

/// Whether `wide` matches every flow `narrow` matches.
fn covers(wide: &PolicyRule, narrow: &PolicyRule) -> bool {
    wide.direction == narrow.direction
        && (wide.peer_identity.is_none()
            || (wide.peer_identity == narrow.peer_identity && wide.fqdn == narrow.fqdn))
        && (wide.proto.is_none() || wide.proto == narrow.proto)
        && match (wide.ports, narrow.ports) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((lo, hi)), Some((nlo, nhi))) => lo <= nlo && nhi <= hi,
        }
}

/// Splits L7 entries on port ranges where another allow's range of the same direction starts
/// or ends inside them, so that each piece lies wholly inside or wholly outside every allow:
/// the datapath picks one entry per port (longest prefix), and the pieces let `normalize`
/// drop what a plain allow covers and give each piece exactly the HTTP rules that apply.
fn split_l7_ranges(rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    let bounds: Vec<(Direction, u16, u16)> = rules
        .iter()
        .filter(|p| p.action == Action::Allow)
        .filter_map(|p| p.ports.map(|(lo, hi)| (p.direction, lo, hi)))
        .collect();
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        let (true, Some((lo, hi))) = (r.l7, r.ports) else {
            out.push(r);
            continue;
        };
        let mut starts = BTreeSet::from([lo]);
        for &(d, plo, phi) in &bounds {
            if d != r.direction {
                continue;
            }
            if plo > lo && plo <= hi {
                starts.insert(plo);
            }
            if phi >= lo && phi < hi {
                starts.insert(phi + 1);
            }
        }
        let starts: Vec<u16> = starts.into_iter().collect();
        for (k, &start) in starts.iter().enumerate() {
            let end = starts.get(k + 1).map_or(hi, |next| next - 1);
            out.push(PolicyRule {
                ports: Some((start, end)),
                ..r.clone()
            });
        }
    }
    out
}

/// One endpoint's rules in canonical form: sorted, one rule per key (origins of rules that
/// compile to the same entry are joined), and no L7 or unsupported entry that a plain allow
/// covers (the evaluator allows such flows without L7, and the datapath would otherwise pick
/// the more specific entry).
fn normalize(rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    let mut rules = split_l7_ranges(rules);
    // An unsupported entry under an L7 allow goes too: its flows are allowed (subject to
    // the HTTP rules), and two entries of one datapath key must not compete. A DNS entry
    // under a plain allow stays, allowing every name: the DNS proxy must still see the
    // answers, or `toFQDNs` would learn nothing (as in Cilium, where an L4 allow on a
    // redirected port adds a wildcard L7 rule).
    let covered: Vec<bool> = rules
        .iter()
        .map(|r| {
            (r.l7 || r.action == Action::Unsupported)
                && rules.iter().any(|p| {
                    p.action == Action::Allow
                        && (!p.l7 || r.action == Action::Unsupported)
                        && covers(p, r)
                })
        })
        .collect();
    let mut covered = covered.into_iter();
    rules.retain_mut(|r| {
        if !covered.next().unwrap_or(false) {
            return true;
        }
        if r.l7 && !r.dns.is_empty() {
            r.dns = vec![FqdnSelector {
                match_name: None,
                match_pattern: Some("*".into()),
            }];
            return true;
        }
        false
    });
    // L7 rules are alternatives: a request on a narrower L7 entry (the one the datapath
    // picks) is allowed by the rules of every L7 entry that covers it too.
    let wider: Vec<(Vec<HttpMatch>, Vec<FqdnSelector>)> = rules
        .iter()
        .map(|r| {
            if !r.l7 {
                return Default::default();
            }
            let covering = || {
                rules
                    .iter()
                    .filter(|p| p.l7 && p.action == Action::Allow && covers(p, r))
            };
            (
                covering().flat_map(|p| p.http.iter().cloned()).collect(),
                covering().flat_map(|p| p.dns.iter().cloned()).collect(),
            )
        })
        .collect();
    for (r, (http, dns)) in rules.iter_mut().zip(wider) {
        // One proxy per entry: a DNS entry takes DNS rules only, an HTTP entry HTTP ones.
        if r.dns.is_empty() {
            r.http.extend(http);
        } else {
            r.dns.extend(dns);
        }
        r.http.sort();
        r.http.dedup();
        r.dns.sort();
        r.dns.dedup();
    }
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
