//! `PolicySpec` validation: every problem is collected, each with the path of the field.

use std::net::IpAddr;

use ipnet::IpNet;

use super::*;
use crate::error::FieldError;

/// Parses a CIDR as Cilium accepts it: `addr/len`, or a bare address meaning a single host.
/// Host bits may be set (`10.0.0.1/8`, as Cilium accepts); the text is kept as written and
/// the network is its truncation (`10.0.0.0/8`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net = if s.contains('/') {
        s.parse::<IpNet>()
            .map_err(|e| format!("invalid CIDR {s:?}: {e}"))?
    } else {
        let ip = s
            .parse::<IpAddr>()
            .map_err(|e| format!("invalid CIDR {s:?}: {e}"))?;
        IpNet::from(ip)
    };
    Ok(net.trunc())
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }
    fn unsupported(&mut self, value: &Unsupported, field: String, hint: &str) {
        if value.is_some() {
            let name = field.rsplit('.').next().unwrap_or(&field).to_string();
            self.push(field, format!("{name} is not supported by Weft{hint}"));
        }
    }
}

pub(super) fn validate_spec(spec: &PolicySpec, path: &str) -> Vec<FieldError> {
    let mut e = Errors(Vec::new());
    match (&spec.endpoint_selector, &spec.node_selector) {
        (Some(_), Some(_)) => e.push(
            format!("{path}.nodeSelector"),
            "endpointSelector and nodeSelector are mutually exclusive",
        ),
        (None, None) => e.push(
            format!("{path}.endpointSelector"),
            "one of endpointSelector or nodeSelector is required (use {} to select every endpoint)",
        ),
        _ => {}
    }
    if let Some(sel) = &spec.endpoint_selector {
        e.0.extend(sel.validate(&format!("{path}.endpointSelector")));
    }
    if let Some(sel) = &spec.node_selector {
        e.0.extend(sel.validate(&format!("{path}.nodeSelector")));
    }
    for (i, rule) in spec.ingress.iter().enumerate() {
        ingress(&mut e, rule, &format!("{path}.ingress[{i}]"), false);
    }
    for (i, rule) in spec.ingress_deny.iter().enumerate() {
        ingress(&mut e, rule, &format!("{path}.ingressDeny[{i}]"), true);
    }
    for (i, rule) in spec.egress.iter().enumerate() {
        egress(&mut e, rule, &format!("{path}.egress[{i}]"), false);
    }
    for (i, rule) in spec.egress_deny.iter().enumerate() {
        egress(&mut e, rule, &format!("{path}.egressDeny[{i}]"), true);
    }
    for (i, label) in spec.labels.iter().enumerate() {
        if label.trim().is_empty() {
            e.push(
                format!("{path}.labels[{i}]"),
                "rule label must not be empty",
            );
        }
    }
    e.0
}

fn ingress(e: &mut Errors, rule: &IngressRule, path: &str, deny: bool) {
    one_peer_kind(
        e,
        path,
        &[
            ("fromEndpoints", !items(&rule.from_endpoints).is_empty()),
            ("fromCIDR", !items(&rule.from_cidr).is_empty()),
            ("fromCIDRSet", !items(&rule.from_cidr_set).is_empty()),
            ("fromEntities", !items(&rule.from_entities).is_empty()),
        ],
    );
    for (i, pr) in rule.to_ports.iter().enumerate() {
        if pr.rules.as_ref().is_some_and(|r| !r.dns.is_empty()) {
            e.push(
                format!("{path}.toPorts[{i}].rules.dns"),
                "DNS rules are only allowed on egress (as in Cilium)",
            );
        }
    }
    peers(
        e,
        path,
        "from",
        items(&rule.from_endpoints),
        items(&rule.from_cidr),
        items(&rule.from_cidr_set),
        items(&rule.from_entities),
    );
    ports(e, path, &rule.to_ports, &rule.icmps, deny);
    e.unsupported(
        &rule.from_requires,
        format!("{path}.fromRequires"),
        " (deprecated in Cilium)",
    );
    e.unsupported(
        &rule.from_nodes,
        format!("{path}.fromNodes"),
        "; use fromEntities: [host, remote-node]",
    );
    e.unsupported(
        &rule.from_groups,
        format!("{path}.fromGroups"),
        "; use fromCIDRSet",
    );
    e.unsupported(&rule.authentication, format!("{path}.authentication"), "");
}

fn egress(e: &mut Errors, rule: &EgressRule, path: &str, deny: bool) {
    one_peer_kind(
        e,
        path,
        &[
            ("toEndpoints", !items(&rule.to_endpoints).is_empty()),
            ("toCIDR", !items(&rule.to_cidr).is_empty()),
            ("toCIDRSet", !items(&rule.to_cidr_set).is_empty()),
            ("toEntities", !items(&rule.to_entities).is_empty()),
            ("toFQDNs", !items(&rule.to_fqdns).is_empty()),
        ],
    );
    peers(
        e,
        path,
        "to",
        items(&rule.to_endpoints),
        items(&rule.to_cidr),
        items(&rule.to_cidr_set),
        items(&rule.to_entities),
    );
    if deny && rule.to_fqdns.is_some() {
        e.push(
            format!("{path}.toFQDNs"),
            "toFQDNs is not allowed on deny rules (as in Cilium)",
        );
    }
    for (i, fqdn) in items(&rule.to_fqdns).iter().enumerate() {
        fqdn_selector(e, fqdn, &format!("{path}.toFQDNs[{i}]"));
    }
    ports(e, path, &rule.to_ports, &rule.icmps, deny);
    e.unsupported(
        &rule.to_services,
        format!("{path}.toServices"),
        "; select the backends with toEndpoints",
    );
    e.unsupported(
        &rule.to_groups,
        format!("{path}.toGroups"),
        "; use toCIDRSet",
    );
    e.unsupported(
        &rule.to_requires,
        format!("{path}.toRequires"),
        " (deprecated in Cilium)",
    );
    e.unsupported(
        &rule.to_nodes,
        format!("{path}.toNodes"),
        "; use toEntities: [host, remote-node]",
    );
    e.unsupported(&rule.authentication, format!("{path}.authentication"), "");
}

/// Cilium refuses a rule that mixes kinds of peers; Weft does too, so that every Weft spec is
/// also a valid Cilium rule (the evaluator would simply take the union).
fn one_peer_kind(e: &mut Errors, path: &str, kinds: &[(&str, bool)]) {
    let present: Vec<&str> = kinds
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
    if let [first, second, ..] = present[..] {
        e.push(
            path,
            format!("combining {first} and {second} in one rule is not supported (as in Cilium); write one rule per kind of peer"),
        );
    }
}

fn peers(
    e: &mut Errors,
    path: &str,
    dir: &str,
    endpoints: &[LabelSelector],
    cidrs: &[String],
    cidr_sets: &[CidrRule],
    entities: &[String],
) {
    for (i, sel) in endpoints.iter().enumerate() {
        e.0.extend(sel.validate(&format!("{path}.{dir}Endpoints[{i}]")));
    }
    for (i, cidr) in cidrs.iter().enumerate() {
        if let Err(msg) = parse_cidr(cidr) {
            e.push(format!("{path}.{dir}CIDR[{i}]"), msg);
        }
    }
    for (i, set) in cidr_sets.iter().enumerate() {
        let base = format!("{path}.{dir}CIDRSet[{i}]");
        e.unsupported(
            &set.cidr_group_ref,
            format!("{base}.cidrGroupRef"),
            "; write the cidr",
        );
        e.unsupported(
            &set.cidr_group_selector,
            format!("{base}.cidrGroupSelector"),
            "; write the cidr",
        );
        if set.cidr.is_empty() {
            if set.cidr_group_ref.is_none() && set.cidr_group_selector.is_none() {
                e.push(format!("{base}.cidr"), "cidr is required");
            }
            continue;
        }
        let net = match parse_cidr(&set.cidr) {
            Ok(net) => net,
            Err(msg) => {
                e.push(format!("{base}.cidr"), msg);
                continue;
            }
        };
        for (j, except) in set.except.iter().enumerate() {
            let field = format!("{base}.except[{j}]");
            match parse_cidr(except) {
                Err(msg) => e.push(field, msg),
                Ok(ex) if !net.contains(&ex) => e.push(
                    field,
                    format!("except {except:?} is not inside cidr {:?}", set.cidr),
                ),
                Ok(_) => {}
            }
        }
    }
    for (i, entity) in entities.iter().enumerate() {
        if let Err(err) = entity.parse::<Entity>() {
            e.push(format!("{path}.{dir}Entities[{i}]"), err.to_string());
        }
    }
}

fn ports(e: &mut Errors, path: &str, rules: &[PortRule], icmps: &[IcmpRule], deny: bool) {
    if !rules.is_empty() && !icmps.is_empty() {
        e.push(
            format!("{path}.icmps"),
            "icmps and toPorts cannot be in the same rule (as in Cilium); write a separate rule",
        );
    }
    for (i, rule) in rules.iter().enumerate() {
        let base = format!("{path}.toPorts[{i}]");
        for (j, pp) in rule.ports.iter().enumerate() {
            port_protocol(e, pp, &format!("{base}.ports[{j}]"));
        }
        e.unsupported(&rule.terminating_tls, format!("{base}.terminatingTLS"), "");
        e.unsupported(&rule.originating_tls, format!("{base}.originatingTLS"), "");
        e.unsupported(&rule.server_names, format!("{base}.serverNames"), "");
        e.unsupported(&rule.listener, format!("{base}.listener"), "");
        let Some(l7) = &rule.rules else { continue };
        if deny {
            e.push(
                format!("{base}.rules"),
                "L7 rules are not allowed on deny rules",
            );
            continue;
        }
        l7_rules(e, rule, l7, &format!("{base}.rules"));
    }
    for (i, icmp) in icmps.iter().enumerate() {
        for (j, field) in icmp.fields.iter().enumerate() {
            if let Err(msg) = field.resolve() {
                e.push(format!("{path}.icmps[{i}].fields[{j}].type"), msg);
            }
        }
    }
}

fn port_protocol(e: &mut Errors, pp: &PortProtocol, path: &str) {
    let value = match &pp.port {
        None => Some(PortValue::Any),
        Some(port) => match port.value() {
            Ok(v) => Some(v),
            Err(msg) => {
                e.push(format!("{path}.port"), msg);
                None
            }
        },
    };
    let Some(end) = pp.end_port else { return };
    let field = format!("{path}.endPort");
    if !(0..=65535).contains(&end) {
        e.push(field, format!("endPort {end} out of range 0..65535"));
        return;
    }
    match value {
        None => {}
        Some(PortValue::Any) if end == 0 => {}
        Some(PortValue::Any) => e.push(field, "endPort requires a non-zero numeric port"),
        Some(PortValue::Named(name)) => e.push(
            field,
            format!("endPort cannot be used with named port {name:?}"),
        ),
        Some(PortValue::Number(start)) if end < i64::from(start) => {
            e.push(field, format!("endPort {end} is lower than port {start}"))
        }
        Some(PortValue::Number(_)) => {}
    }
}

fn l7_rules(e: &mut Errors, rule: &PortRule, l7: &L7Rules, path: &str) {
    if !l7.http.is_empty() {
        let non_tcp = rule
            .ports
            .iter()
            .find(|p| !matches!(p.protocol, Protocol::Tcp | Protocol::Any));
        if let Some(p) = non_tcp {
            e.push(
                format!("{path}.http"),
                format!("HTTP rules need TCP ports, not {:?}", p.protocol),
            );
        }
    }
    for (i, http) in l7.http.iter().enumerate() {
        let base = format!("{path}.http[{i}]");
        for (name, value) in [
            ("method", &http.method),
            ("path", &http.path),
            ("host", &http.host),
        ] {
            if let Some(re) = value {
                if let Err(err) = regex::Regex::new(re) {
                    e.push(
                        format!("{base}.{name}"),
                        format!("invalid regular expression {re:?}: {err}"),
                    );
                }
            }
        }
        for (j, header) in http.headers.iter().enumerate() {
            let name = header.split(':').next().unwrap_or_default().trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                e.push(
                    format!("{base}.headers[{j}]"),
                    format!("invalid header {header:?}: expected \"Name\" or \"Name: value\""),
                );
            }
        }
        e.unsupported(
            &http.header_matches,
            format!("{base}.headerMatches"),
            "; use headers",
        );
    }
    for (i, dns) in l7.dns.iter().enumerate() {
        fqdn_selector(e, dns, &format!("{path}.dns[{i}]"));
    }
    e.unsupported(&l7.kafka, format!("{path}.kafka"), "");
    e.unsupported(&l7.l7proto, format!("{path}.l7proto"), "");
    e.unsupported(&l7.l7, format!("{path}.l7"), "");
}

fn fqdn_selector(e: &mut Errors, sel: &FqdnSelector, path: &str) {
    match (&sel.match_name, &sel.match_pattern) {
        (Some(_), Some(_)) => e.push(path, "set either matchName or matchPattern, not both"),
        (None, None) => e.push(path, "one of matchName or matchPattern is required"),
        (Some(name), None) => {
            if let Err(msg) = check_dns(name, false) {
                e.push(
                    format!("{path}.matchName"),
                    format!("invalid DNS name {name:?}: {msg}"),
                );
            }
        }
        (None, Some(pattern)) => {
            if let Err(msg) = check_dns(pattern, true) {
                e.push(
                    format!("{path}.matchPattern"),
                    format!("invalid DNS pattern {pattern:?}: {msg}"),
                );
            }
        }
    }
}

/// DNS names as Cilium accepts them: letters, digits, '-', '_' and '.', an optional final
/// dot, at most 255 characters; patterns may also use '*'.
pub fn check_dns(s: &str, pattern: bool) -> Result<(), String> {
    if pattern && s == "*" {
        return Ok(());
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 255 {
        return Err("must be at most 255 characters".into());
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (pattern && c == '*');
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (\"..\" or leading '.')".into());
        }
        if let Some(c) = label.chars().find(|c| !ok(*c)) {
            return Err(format!("character {c:?} is not allowed"));
        }
    }
    Ok(())
}
