//! Policy entries on the wire: rules with their HTTP and DNS rules and `toFQDNs` selectors,
//! per endpoint.

use weft_model::desired::{Action, HttpMatch, PolicyRule, Rules};
use weft_model::identity;
use weft_model::policy::eval::Direction;
use weft_model::policy::FqdnSelector;

use super::{u16_of, u8_of, WireError};
use crate::v1 as pb;

impl From<&PolicyRule> for pb::PolicyRule {
    fn from(r: &PolicyRule) -> Self {
        pb::PolicyRule {
            direction: match r.direction {
                Direction::Ingress => pb::Direction::Ingress,
                Direction::Egress => pb::Direction::Egress,
            } as i32,
            peer_identity: r.peer_identity,
            proto: r.proto.map(u32::from),
            ports: r.ports.map(|(first, last)| pb::PortRange {
                first: u32::from(first),
                last: u32::from(last),
            }),
            action: match r.action {
                Action::Allow => pb::Action::Allow,
                Action::Deny => pb::Action::Deny,
                Action::Unsupported => pb::Action::Unsupported,
            } as i32,
            l7: r.l7,
            origin: r.origin.clone(),
            http: r.http.iter().map(pb::HttpMatch::from).collect(),
            dns: r.dns.iter().map(pb::FqdnSelector::from).collect(),
            fqdn: r.fqdn.as_ref().map(pb::FqdnSelector::from),
        }
    }
}

impl From<&FqdnSelector> for pb::FqdnSelector {
    fn from(s: &FqdnSelector) -> Self {
        pb::FqdnSelector {
            match_name: s.match_name.clone(),
            match_pattern: s.match_pattern.clone(),
        }
    }
}

/// A selector from the wire: exactly one of name and pattern (anything else could be read
/// as matching nothing or everything, neither of which was sent).
fn fqdn_selector(
    item: &impl Fn() -> String,
    field: &'static str,
    s: pb::FqdnSelector,
) -> Result<FqdnSelector, WireError> {
    if s.match_name.is_some() == s.match_pattern.is_some() {
        return Err(WireError::Invalid {
            item: item(),
            field,
            reason: "a selector has exactly one of match_name and match_pattern".into(),
        });
    }
    Ok(FqdnSelector {
        match_name: s.match_name,
        match_pattern: s.match_pattern,
    })
}

impl From<&HttpMatch> for pb::HttpMatch {
    fn from(h: &HttpMatch) -> Self {
        pb::HttpMatch {
            method: h.method.clone(),
            path: h.path.clone(),
            host: h.host.clone(),
            headers: h.headers.clone(),
        }
    }
}

impl From<pb::HttpMatch> for HttpMatch {
    fn from(h: pb::HttpMatch) -> Self {
        HttpMatch {
            method: h.method,
            path: h.path,
            host: h.host,
            headers: h.headers,
        }
    }
}

/// An endpoint's rule list, as the model keys it (`NodeDesiredState::policy` entries).
impl From<(&String, &Rules)> for pb::EndpointPolicy {
    fn from((endpoint_id, rules): (&String, &Rules)) -> Self {
        pb::EndpointPolicy {
            endpoint_id: endpoint_id.clone(),
            rules: rules.iter().map(pb::PolicyRule::from).collect(),
        }
    }
}

/// A rule on its own; inside an [`pb::EndpointPolicy`] errors name `policy/<endpoint>[i]`.
impl TryFrom<pb::PolicyRule> for PolicyRule {
    type Error = WireError;

    fn try_from(r: pb::PolicyRule) -> Result<Self, WireError> {
        rule(|| "policy rule".to_string(), r)
    }
}

fn rule(item: impl Fn() -> String, r: pb::PolicyRule) -> Result<PolicyRule, WireError> {
    let direction = match pb::Direction::try_from(r.direction) {
        Ok(pb::Direction::Ingress) => Direction::Ingress,
        Ok(pb::Direction::Egress) => Direction::Egress,
        _ => {
            return Err(WireError::Enum {
                item: item(),
                field: "direction",
                value: r.direction,
            })
        }
    };
    let action = match pb::Action::try_from(r.action) {
        Ok(pb::Action::Allow) => Action::Allow,
        Ok(pb::Action::Deny) => Action::Deny,
        Ok(pb::Action::Unsupported) => Action::Unsupported,
        _ => {
            return Err(WireError::Enum {
                item: item(),
                field: "action",
                value: r.action,
            })
        }
    };
    let ports = match r.ports {
        None => None,
        Some(p) => Some((
            u16_of(&item, "first port", p.first)?,
            u16_of(&item, "last port", p.last)?,
        )),
    };
    // HTTP or DNS rules go with L7 allows and only with them: an L7 entry without rules
    // would be read as allowing nothing or everything, neither of which was sent.
    let kinds = usize::from(!r.http.is_empty()) + usize::from(!r.dns.is_empty());
    let valid = if r.l7 {
        kinds == 1 && action == Action::Allow
    } else {
        kinds == 0
    };
    if !valid {
        return Err(WireError::Invalid {
            item: item(),
            field: "http",
            reason: "HTTP or DNS rules go with L7 allow rules, and every L7 allow rule has one kind of them".into(),
        });
    }
    // An FQDN entry's peer is FQDN_PEER and only that: any other identity (none: any peer)
    // would widen it.
    if r.fqdn.is_some() != (r.peer_identity == Some(identity::FQDN_PEER)) {
        return Err(WireError::Invalid {
            item: item(),
            field: "fqdn",
            reason: "an FQDN selector goes with the FQDN peer identity, and only with it".into(),
        });
    }
    let dns = r
        .dns
        .into_iter()
        .map(|s| fqdn_selector(&item, "dns", s))
        .collect::<Result<Vec<_>, _>>()?;
    let fqdn = r
        .fqdn
        .map(|s| fqdn_selector(&item, "fqdn", s))
        .transpose()?;
    Ok(PolicyRule {
        direction,
        peer_identity: r.peer_identity,
        proto: r.proto.map(|p| u8_of(&item, "protocol", p)).transpose()?,
        ports,
        action,
        l7: r.l7,
        http: r.http.into_iter().map(HttpMatch::from).collect(),
        dns,
        fqdn,
        origin: r.origin,
    })
}

/// An endpoint's rule list, keyed as `NodeDesiredState::policy`.
impl TryFrom<pb::EndpointPolicy> for (String, Rules) {
    type Error = WireError;

    fn try_from(p: pb::EndpointPolicy) -> Result<Self, WireError> {
        if p.endpoint_id.is_empty() {
            return Err(WireError::EmptyId { item: "policy" });
        }
        let endpoint = &p.endpoint_id;
        let rules = p
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| rule(|| format!("policy/{endpoint}[{i}]"), r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((p.endpoint_id, rules.into()))
    }
}
