//! One rule's peers and ports, resolved against the node's cluster: peer selectors,
//! entities and CIDRs into identities, ports (named ones per destination) into entries.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::view::*;
use crate::identity;
use crate::labels::Labels;
use crate::policy::{
    items, parse_cidr, CidrRule, Direction, EgressRule, Entity, FqdnSelector, IcmpFamily, IcmpRule,
    IngressRule, NamedPort, PolicySpec, PortRule, PortValue, Protocol,
};
use crate::selector::LabelSelector;

/// Every CIDR (and except) the spec names, plus the catch-all prefix of a family whose
/// `world-ipv4`/`world-ipv6` entity it uses.
pub(super) fn collect_cidrs(spec: &PolicySpec, out: &mut BTreeSet<IpNet>) {
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
pub(super) struct Peers<'a> {
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
    pub(super) fn ingress(r: &'a IngressRule) -> Self {
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
    pub(super) fn egress(r: &'a EgressRule) -> Self {
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
pub(super) struct Universe<'a> {
    pub(super) labels_by_identity: &'a BTreeMap<u32, (Labels, String)>,
    pub(super) cidr_ids: &'a BTreeMap<IpNet, u32>,
    /// Named ports declared by the endpoints of each identity (of the node's cluster).
    pub(super) named_by_identity: &'a BTreeMap<u32, BTreeSet<NamedPort>>,
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

/// One peer of a rule's entries.
#[derive(Clone)]
struct Peer {
    /// `None`: any peer.
    identity: Option<u32>,
    /// Weft cannot enforce the rule for this peer: its entries allow nothing.
    unsupported: bool,
    /// A `toFQDNs` selector (`identity` is then [`identity::FQDN_PEER`]).
    fqdn: Option<FqdnSelector>,
}

impl Peer {
    fn of(identity: Option<u32>, unsupported: bool) -> Self {
        Peer {
            identity,
            unsupported,
            fqdn: None,
        }
    }
}

pub(super) struct CompiledSpec {
    pub(super) rules: Vec<PolicyRule>,
    /// Rules on named ports: resolved per subject (ingress) or per peer (egress).
    pub(super) named: Vec<NamedRule>,
    pub(super) unsupported: Vec<String>,
}

/// A rule entry on a named port, before resolution. As Cilium: the name resolves against
/// the destination endpoint's declared ports (the subject on ingress, the peer on egress);
/// where the destination does not declare it, the entry matches nothing there (an allow
/// allows nothing, a deny never widens to other ports).
pub(super) struct NamedRule {
    direction: Direction,
    peers: Vec<Peer>,
    name: String,
    protos: &'static [u8],
    action: Action,
    l7: L7,
    origin: String,
}

impl NamedRule {
    pub(super) fn resolve(&self, own: &[NamedPort], u: &Universe<'_>) -> Vec<PolicyRule> {
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
        for peer in &self.peers {
            let ports = match self.direction {
                Direction::Ingress => matching(&mut own.iter()),
                // Egress: the ports the peer declares (an outside peer declares none); any
                // peer: every endpoint's.
                Direction::Egress => match peer.identity {
                    Some(id) => matching(&mut u.named_by_identity.get(&id).into_iter().flatten()),
                    None => matching(&mut u.named_by_identity.values().flatten()),
                },
            };
            for (proto, port) in ports {
                out.push(entry(
                    self.direction,
                    self.action,
                    peer,
                    Some(proto),
                    Some((port, port)),
                    &self.l7,
                    &self.origin,
                ));
            }
        }
        out
    }
}

/// Compiles a spec's rules, resolved against the node's cluster.
pub(super) fn compile_spec(spec: &PolicySpec, origin: &str, u: &Universe<'_>) -> CompiledSpec {
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
            let mut peer_list: Vec<Peer> = match peers {
                PeerSet::Any => vec![Peer::of(None, false)],
                PeerSet::Ids(ids) => ids
                    .into_iter()
                    .map(|id| Peer::of(Some(id), false))
                    .collect(),
            };
            peer_list.extend(not_enforced.into_iter().map(|id| Peer::of(Some(id), true)));
            if action == Action::Allow {
                // Deny rules cannot name FQDNs (validation): see `resolve_peers`.
                let mut fqdns: Vec<FqdnSelector> =
                    rule.fqdns.iter().map(FqdnSelector::normalized).collect();
                fqdns.sort();
                fqdns.dedup();
                peer_list.extend(fqdns.into_iter().map(|f| Peer {
                    identity: Some(identity::FQDN_PEER),
                    unsupported: false,
                    fqdn: Some(f),
                }));
            }
            for (name, protos, l7) in named {
                c.named.push(NamedRule {
                    direction,
                    peers: peer_list.clone(),
                    name,
                    protos,
                    action,
                    l7: if action == Action::Allow {
                        l7
                    } else {
                        L7::None
                    },
                    origin: path.clone(),
                });
            }
            for peer in &peer_list {
                for (proto, ports, l7) in &l4 {
                    c.rules
                        .push(entry(direction, action, peer, *proto, *ports, l7, &path));
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
    // Allow rules' `toFQDNs` become peers of their own (see `compile_spec`). Validation
    // refuses them on deny rules; should one get here, it denies every outside peer rather
    // than nothing.
    if action == Action::Deny {
        for (j, _) in rule.fqdns.iter().enumerate() {
            unsupported.push(format!(
                "{path}.toFQDNs[{j}]: toFQDNs on a deny rule denies every outside peer"
            ));
            ids.extend(u.world());
        }
    }
    (PeerSet::Ids(ids), not_enforced)
}

type L4 = (Option<u8>, Option<(u16, u16)>, L7);

/// What a port rule's L7 rules ask of the traffic its allows admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum L7 {
    /// No L7 rules: allowed at L4.
    None,
    /// HTTP rules: the agent's proxy checks every request (TCP only).
    Http(Vec<HttpMatch>),
    /// DNS rules: the agent's DNS proxy checks every query (UDP and TCP).
    Dns(Vec<FqdnSelector>),
}

fn l7_of(pr: &PortRule) -> L7 {
    match &pr.rules {
        Some(r) if !r.dns.is_empty() => {
            let mut dns: Vec<FqdnSelector> = r.dns.iter().map(FqdnSelector::normalized).collect();
            dns.sort();
            dns.dedup();
            L7::Dns(dns)
        }
        Some(r) if !r.http.is_empty() => L7::Http(r.http.iter().map(HttpMatch::from).collect()),
        _ => L7::None,
    }
}

/// The entry one protocol of a rule gets. Deny rules decide at L4 whatever L7 rules they
/// carry; allows with HTTP rules go through the proxy (TCP only: no other protocol speaks
/// HTTP, so those allow nothing), allows with DNS rules through the DNS proxy (UDP and TCP);
/// allows that name an unenforced peer fail closed.
fn entry(
    direction: Direction,
    action: Action,
    peer: &Peer,
    proto: Option<u8>,
    ports: Option<(u16, u16)>,
    l7: &L7,
    origin: &str,
) -> PolicyRule {
    let (mut http, mut dns) = (Vec::new(), Vec::new());
    let (action, l7) = match (action, l7) {
        (Action::Allow, _) if peer.unsupported => (Action::Unsupported, false),
        (Action::Allow, L7::None) => (Action::Allow, false),
        (Action::Allow, L7::Http(h)) if proto == Some(PROTO_TCP) => {
            http = h.clone();
            (Action::Allow, true)
        }
        (Action::Allow, L7::Dns(d)) if matches!(proto, Some(PROTO_UDP | PROTO_TCP)) => {
            dns = d.clone();
            (Action::Allow, true)
        }
        (Action::Allow, _) => (Action::Unsupported, false),
        (other, _) => (other, false),
    };
    PolicyRule {
        direction,
        peer_identity: peer.identity,
        proto,
        ports,
        action,
        l7,
        http,
        dns,
        fqdn: peer.fqdn.clone(),
        origin: origin.to_string(),
    }
}

/// The protocol/port entries of a rule (a rule without `toPorts` and `icmps` is any), and
/// its named ports (name, protocols, l7), resolved later per destination endpoint.
#[allow(clippy::type_complexity)]
fn resolve_l4(
    rule: &Peers<'_>,
    path: &str,
    unsupported: &mut Vec<String>,
) -> (Vec<L4>, Vec<(String, &'static [u8], L7)>) {
    let mut named = Vec::new();
    if rule.to_ports.is_empty() && rule.icmps.is_empty() {
        return (vec![(None, None, L7::None)], named);
    }
    let mut out = Vec::new();
    for (k, pr) in rule.to_ports.iter().enumerate() {
        let l7 = l7_of(pr);
        if pr.ports.is_empty() {
            out.push((None, None, l7.clone()));
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
                    named.push((name, protos, l7.clone()));
                    continue;
                }
                Err(why) => {
                    unsupported.push(format!("{at}: {why}, matches nothing"));
                    continue;
                }
            };
            out.extend(protos.iter().map(|p| (Some(*p), ports, l7.clone())));
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
                    out.push((Some(proto), Some((u16::from(ty), u16::from(ty))), L7::None));
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
