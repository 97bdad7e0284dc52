//! Reference semantics of Weft policies: what a set of [`PolicySpec`]s decides for one flow.
//! The control plane's compiler and the datapath tests are checked against this, so it favours
//! plain, obviously-correct code over speed.
//!
//! The rules, per direction and independently for ingress and egress:
//! 1. A policy applies to a subject when its `endpointSelector` (workload endpoints) or
//!    `nodeSelector` (node host endpoints) matches the subject's labels.
//! 2. A matching deny rule (`ingressDeny` / `egressDeny`) of an applying policy denies the
//!    flow, whatever the allow rules say.
//! 3. Otherwise a matching allow rule of any applying policy allows it: allows add up.
//! 4. Otherwise the flow is denied if some applying policy enforces default deny in this
//!    direction (it has allow or deny rules for it, unless `enableDefaultDeny` says otherwise)
//!    and allowed by default if none does.
//!
//! A rule matches when the peer matches (any of its L3 peer fields; a rule with only
//! `toPorts`/`icmps` matches any peer; an empty rule `{}` matches nothing; a peer field given
//! as `[]` selects no peer, as in Cilium, so it is never a wildcard) and the L4 part
//! matches (no `toPorts` and no `icmps` means every port and protocol).
//!
//! Peers: endpoint selectors match only peers with labels (Weft workload endpoints). CIDR and
//! FQDN rules match only peers outside the cluster, as in Cilium, where traffic between
//! managed endpoints is always matched by identity and never by IP. Entities: `all` matches
//! every peer, `world` every peer outside the cluster, `cluster` every peer inside it, the
//! others the peers that carry that entity.
//!
//! L7 rules are not evaluated here: a flow matched only by rules that carry L7 rules is
//! `Allowed` with `l7: true`, meaning the proxy decides per request.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::labels::Labels;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

/// What kind of endpoint a policy is applied to; chooses between endpointSelector and
/// nodeSelector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    Endpoint,
    Node,
}

/// The endpoint whose policy is evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: SubjectKind,
    pub labels: Labels,
}

impl Subject {
    pub fn endpoint(labels: Labels) -> Self {
        Subject {
            kind: SubjectKind::Endpoint,
            labels,
        }
    }
    pub fn node(labels: Labels) -> Self {
        Subject {
            kind: SubjectKind::Node,
            labels,
        }
    }
}

/// The other side of the flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Labels of a Weft workload endpoint; `None` for anything else.
    pub labels: Option<Labels>,
    pub ip: Option<IpAddr>,
    /// Reserved entities the peer belongs to (`host`, `remote-node`, `world`...). A labelled
    /// peer is in the cluster without listing `cluster`.
    pub entities: Vec<Entity>,
    /// Names the peer's IP was resolved from (for `toFQDNs`).
    pub dns_names: Vec<String>,
}

impl Peer {
    /// A Weft workload endpoint in the cluster.
    pub fn endpoint(labels: Labels) -> Self {
        Peer {
            labels: Some(labels),
            ..Default::default()
        }
    }
    /// An address outside the cluster.
    pub fn world(ip: IpAddr) -> Self {
        Peer {
            ip: Some(ip),
            entities: vec![Entity::World],
            ..Default::default()
        }
    }
    /// A reserved peer such as the host or a remote node.
    pub fn entity(entity: Entity) -> Self {
        Peer {
            entities: vec![entity],
            ..Default::default()
        }
    }
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }
    pub fn with_dns_name(mut self, name: impl Into<String>) -> Self {
        self.dns_names.push(name.into());
        self
    }

    pub fn is_in_cluster(&self) -> bool {
        self.labels.is_some() || self.entities.iter().any(Entity::is_in_cluster)
    }

    pub fn matches_entity(&self, entity: Entity) -> bool {
        match entity {
            Entity::All => true,
            Entity::Cluster => self.is_in_cluster(),
            Entity::World => !self.is_in_cluster(),
            Entity::WorldIpv4 => !self.is_in_cluster() && self.ip.is_some_and(|ip| ip.is_ipv4()),
            Entity::WorldIpv6 => !self.is_in_cluster() && self.ip.is_some_and(|ip| ip.is_ipv6()),
            other => self.entities.contains(&other),
        }
    }
}

/// Protocol of a concrete flow (never "any").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowProtocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    IcmpV6,
}

/// One flow as seen from the subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    pub direction: Direction,
    pub peer: Peer,
    pub protocol: FlowProtocol,
    /// Destination port; the ICMP type for ICMP flows.
    pub port: u16,
    /// Named ports of the destination (the subject on ingress, the peer on egress).
    pub named_ports: BTreeMap<String, u16>,
}

impl Traffic {
    pub fn ingress(peer: Peer, protocol: FlowProtocol, port: u16) -> Self {
        Traffic {
            direction: Direction::Ingress,
            peer,
            protocol,
            port,
            named_ports: BTreeMap::new(),
        }
    }
    pub fn egress(peer: Peer, protocol: FlowProtocol, port: u16) -> Self {
        Traffic {
            direction: Direction::Egress,
            peer,
            protocol,
            port,
            named_ports: BTreeMap::new(),
        }
    }
    pub fn with_named_port(mut self, name: impl Into<String>, port: u16) -> Self {
        self.named_ports.insert(name.into(), port);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// An allow rule matched.
    Allowed,
    /// A deny rule matched, or default deny is in force and nothing allowed the flow.
    Denied,
    /// No applying policy enforces this direction.
    DefaultAllowed,
}

/// A rule: index of the policy in the evaluated slice and of the rule in its list
/// (`ingress`/`egress` for allows, `ingressDeny`/`egressDeny` for denies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub policy: usize,
    pub rule: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    NotEnforced,
    /// Every matching allow rule; `l7` when all of them carry L7 rules for this port.
    AllowedBy {
        rules: Vec<RuleRef>,
        l7: bool,
    },
    DeniedBy(RuleRef),
    DefaultDeny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
}

/// Decides one flow for `subject` under `policies` (see the module documentation).
pub fn evaluate(policies: &[PolicySpec], subject: &Subject, traffic: &Traffic) -> Decision {
    let applying: Vec<(usize, &PolicySpec)> = policies
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.subject_selector()
                .is_some_and(|(kind, sel)| kind == subject.kind && sel.matches(&subject.labels))
        })
        .collect();

    for &(pi, policy) in &applying {
        let denied = match traffic.direction {
            Direction::Ingress => policy
                .ingress_deny
                .iter()
                .position(|r| ingress_rule_matches(r, traffic).is_some()),
            Direction::Egress => policy
                .egress_deny
                .iter()
                .position(|r| egress_rule_matches(r, traffic).is_some()),
        };
        if let Some(rule) = denied {
            return Decision {
                verdict: Verdict::Denied,
                reason: Reason::DeniedBy(RuleRef { policy: pi, rule }),
            };
        }
    }

    let mut allowed = Vec::new();
    let mut all_l7 = true;
    for &(pi, policy) in &applying {
        let hits: Vec<(usize, bool)> = match traffic.direction {
            Direction::Ingress => policy
                .ingress
                .iter()
                .enumerate()
                .filter_map(|(i, r)| ingress_rule_matches(r, traffic).map(|l7| (i, l7)))
                .collect(),
            Direction::Egress => policy
                .egress
                .iter()
                .enumerate()
                .filter_map(|(i, r)| egress_rule_matches(r, traffic).map(|l7| (i, l7)))
                .collect(),
        };
        for (rule, l7) in hits {
            all_l7 &= l7;
            allowed.push(RuleRef { policy: pi, rule });
        }
    }
    if !allowed.is_empty() {
        return Decision {
            verdict: Verdict::Allowed,
            reason: Reason::AllowedBy {
                rules: allowed,
                l7: all_l7,
            },
        };
    }

    if applying
        .iter()
        .any(|(_, p)| enforces_default_deny(p, traffic.direction))
    {
        Decision {
            verdict: Verdict::Denied,
            reason: Reason::DefaultDeny,
        }
    } else {
        Decision {
            verdict: Verdict::DefaultAllowed,
            reason: Reason::NotEnforced,
        }
    }
}

/// Whether the policy puts its subjects in default-deny mode for `direction`.
pub fn enforces_default_deny(policy: &PolicySpec, direction: Direction) -> bool {
    let explicit = policy.enable_default_deny.and_then(|d| match direction {
        Direction::Ingress => d.ingress,
        Direction::Egress => d.egress,
    });
    let has_rules = match direction {
        Direction::Ingress => !policy.ingress.is_empty() || !policy.ingress_deny.is_empty(),
        Direction::Egress => !policy.egress.is_empty() || !policy.egress_deny.is_empty(),
    };
    explicit.unwrap_or(has_rules)
}

/// `Some(l7)` when the rule matches the flow; `l7` tells whether the matching port rules
/// all carry L7 rules.
fn ingress_rule_matches(rule: &IngressRule, t: &Traffic) -> Option<bool> {
    let peer = Peers {
        present: rule.has_peer_fields(),
        endpoints: items(&rule.from_endpoints),
        cidrs: items(&rule.from_cidr),
        cidr_sets: items(&rule.from_cidr_set),
        entities: items(&rule.from_entities),
        fqdns: &[],
    };
    rule_matches(&peer, &rule.to_ports, &rule.icmps, t)
}

fn egress_rule_matches(rule: &EgressRule, t: &Traffic) -> Option<bool> {
    let peer = Peers {
        present: rule.has_peer_fields(),
        endpoints: items(&rule.to_endpoints),
        cidrs: items(&rule.to_cidr),
        cidr_sets: items(&rule.to_cidr_set),
        entities: items(&rule.to_entities),
        fqdns: items(&rule.to_fqdns),
    };
    rule_matches(&peer, &rule.to_ports, &rule.icmps, t)
}

/// The L3 part of a rule, the same for both directions.
struct Peers<'a> {
    /// Some peer field is present, possibly as `[]` (which selects no peer).
    present: bool,
    endpoints: &'a [LabelSelector],
    cidrs: &'a [String],
    cidr_sets: &'a [CidrRule],
    entities: &'a [String],
    fqdns: &'a [FqdnSelector],
}

impl Peers<'_> {
    fn matches(&self, peer: &Peer) -> bool {
        let by_labels = self
            .endpoints
            .iter()
            .any(|s| peer.labels.as_ref().is_some_and(|l| s.matches(l)));
        let by_entity = self
            .entities
            .iter()
            .filter_map(|e| e.parse::<Entity>().ok())
            .any(|e| peer.matches_entity(e));
        // CIDR and FQDN rules never select in-cluster peers (see module docs).
        let outside_ip = if peer.is_in_cluster() { None } else { peer.ip };
        let by_cidr = outside_ip.is_some_and(|ip| {
            self.cidrs
                .iter()
                .any(|c| parse_cidr(c).is_ok_and(|net| net.contains(&ip)))
                || self.cidr_sets.iter().any(|set| {
                    parse_cidr(&set.cidr).is_ok_and(|net| net.contains(&ip))
                        && !set
                            .except
                            .iter()
                            .any(|ex| parse_cidr(ex).is_ok_and(|net| net.contains(&ip)))
                })
        });
        let by_fqdn = !peer.is_in_cluster()
            && self
                .fqdns
                .iter()
                .any(|f| peer.dns_names.iter().any(|name| fqdn_matches(f, name)));
        by_labels || by_entity || by_cidr || by_fqdn
    }
}

fn rule_matches(
    peers: &Peers<'_>,
    to_ports: &[PortRule],
    icmps: &[IcmpRule],
    t: &Traffic,
) -> Option<bool> {
    let has_l4 = !to_ports.is_empty() || !icmps.is_empty();
    let peer_ok = if !peers.present {
        has_l4
    } else {
        peers.matches(&t.peer)
    };
    if !peer_ok {
        return None;
    }
    if !has_l4 {
        return Some(false);
    }
    let mut found: Option<bool> = None;
    for pr in to_ports {
        if pr.ports.is_empty() || pr.ports.iter().any(|pp| port_matches(pp, t)) {
            let l7 = pr
                .rules
                .as_ref()
                .is_some_and(|r| !r.http.is_empty() || !r.dns.is_empty());
            found = Some(found.map_or(l7, |prev| prev && l7));
        }
    }
    let icmp_hit = icmps
        .iter()
        .flat_map(|r| &r.fields)
        .filter_map(|f| f.resolve().ok())
        .any(|(family, ty)| {
            let proto = match family {
                IcmpFamily::IPv4 => FlowProtocol::Icmp,
                IcmpFamily::IPv6 => FlowProtocol::IcmpV6,
            };
            t.protocol == proto && t.port == u16::from(ty)
        });
    if icmp_hit {
        found = Some(false);
    }
    found
}

fn port_matches(pp: &PortProtocol, t: &Traffic) -> bool {
    let proto_ok = match pp.protocol {
        Protocol::Any => matches!(
            t.protocol,
            FlowProtocol::Tcp | FlowProtocol::Udp | FlowProtocol::Sctp
        ),
        Protocol::Tcp => t.protocol == FlowProtocol::Tcp,
        Protocol::Udp => t.protocol == FlowProtocol::Udp,
        Protocol::Sctp => t.protocol == FlowProtocol::Sctp,
        Protocol::Icmp => t.protocol == FlowProtocol::Icmp,
        Protocol::IcmpV6 => t.protocol == FlowProtocol::IcmpV6,
    };
    if !proto_ok {
        return false;
    }
    let value = match &pp.port {
        None => PortValue::Any,
        Some(port) => match port.value() {
            Ok(v) => v,
            Err(_) => return false,
        },
    };
    match value {
        PortValue::Any => true,
        PortValue::Number(start) => {
            let end = pp
                .end_port
                .and_then(|e| u16::try_from(e).ok())
                .filter(|e| *e >= start)
                .unwrap_or(start);
            (start..=end).contains(&t.port)
        }
        PortValue::Named(name) => t.named_ports.get(&name) == Some(&t.port),
    }
}

/// Names compare case-insensitively, ignoring a final dot. In patterns `*` matches any run of
/// name characters within one label; a lone `*` matches every name.
pub(crate) fn fqdn_matches(sel: &FqdnSelector, name: &str) -> bool {
    let norm = |s: &str| s.trim_end_matches('.').to_ascii_lowercase();
    let name = norm(name);
    if let Some(exact) = &sel.match_name {
        return norm(exact) == name;
    }
    match &sel.match_pattern {
        Some(p) if p == "*" => true,
        Some(p) => glob(norm(p).as_bytes(), name.as_bytes()),
        None => false,
    }
}

/// Wildcard match where `*` covers any run without '.'; dynamic programming keeps it
/// O(pattern × name) whatever the number of stars.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    // matched[j]: the pattern read so far matches name[..j].
    let mut matched = vec![false; name.len() + 1];
    matched[0] = true;
    for &pc in pattern {
        let mut next = vec![false; name.len() + 1];
        for j in 0..=name.len() {
            next[j] = if pc == b'*' {
                matched[j] || (j > 0 && next[j - 1] && name[j - 1] != b'.')
            } else {
                j > 0 && matched[j - 1] && name[j - 1] == pc
            };
        }
        matched = next;
    }
    matched[name.len()]
}
