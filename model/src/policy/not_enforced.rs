//! Fields Weft accepts but does not enforce yet. Each is reported, never silently inert:
//! the control plane answers a `Warning: 299` header per field path and lists a
//! `NotEnforced` condition on the policy; the compiler fails closed (the traffic such a rule
//! would need is dropped with drop reason `UNSUPPORTED_RULE`, see [`crate::desired`]).

use serde::{Deserialize, Serialize};

use super::*;

/// One accepted but not enforced field: `{type: "NotEnforced", field, reason}` in a policy's
/// `status.conditions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Condition {
    /// Always `NotEnforced`.
    #[serde(rename = "type")]
    #[schema(example = "NotEnforced")]
    pub kind: String,
    /// Path of the field, as in validation errors (`spec.egress[0].toEntities[1]`).
    pub field: String,
    /// What Weft does instead.
    pub reason: String,
}

pub const NOT_ENFORCED: &str = "NotEnforced";

/// Entities that no Weft peer carries (so a rule naming them selects nothing Weft can see),
/// with what the compiler does for them.
pub fn entity_not_enforced(entity: Entity) -> Option<&'static str> {
    Some(match entity {
        Entity::Health => "no Weft peer carries the health identity: the entry selects no peer",
        Entity::Init => "no Weft peer carries the init identity: the entry selects no peer",
        Entity::Ingress => {
            "Weft has no ingress proxy, no peer carries the ingress identity: the entry selects no peer"
        }
        Entity::Unmanaged => {
            "unmanaged workloads are not told apart from world: on allow rules the traffic is dropped (UNSUPPORTED_RULE) unless another rule allows it; on deny rules every world peer is denied"
        }
        Entity::KubeApiserver => {
            "no cluster declares its API server addresses: on allow rules traffic to world, host and remote-node on these ports is dropped (UNSUPPORTED_RULE) unless another rule allows it; on deny rules world, host and remote-node are denied"
        }
        _ => return None,
    })
}

const HOST_POLICY: &str = "host policies are not enforced: Weft does not filter the node's own traffic yet (the policy is stored and compiled, but no node interface is filtered)";

fn condition(field: String, reason: &str) -> Condition {
    Condition {
        kind: NOT_ENFORCED.to_string(),
        field,
        reason: reason.to_string(),
    }
}

impl PolicySpec {
    /// The fields of this spec that Weft accepts but does not enforce, with paths under
    /// `path` (`spec`, `specs[1]`). Only meaningful for a valid spec.
    pub fn not_enforced_at(&self, path: &str) -> Vec<Condition> {
        let mut out = Vec::new();
        if self.node_selector.is_some() {
            out.push(condition(format!("{path}.nodeSelector"), HOST_POLICY));
        }
        let ingress = [
            ("ingress", &self.ingress),
            ("ingressDeny", &self.ingress_deny),
        ];
        for (section, rules) in ingress {
            for (i, r) in rules.iter().enumerate() {
                let at = format!("{path}.{section}[{i}]");
                entities(&mut out, &at, "fromEntities", items(&r.from_entities));
            }
        }
        let egress = [("egress", &self.egress), ("egressDeny", &self.egress_deny)];
        for (section, rules) in egress {
            for (i, r) in rules.iter().enumerate() {
                let at = format!("{path}.{section}[{i}]");
                entities(&mut out, &at, "toEntities", items(&r.to_entities));
            }
        }
        out
    }
}

fn entities(out: &mut Vec<Condition>, at: &str, field: &str, list: &[String]) {
    for (k, name) in list.iter().enumerate() {
        let reason = name.parse::<Entity>().ok().and_then(entity_not_enforced);
        if let Some(reason) = reason {
            out.push(condition(format!("{at}.{field}[{k}]"), reason));
        }
    }
}

/// The conditions of a policy's specs as stored (`spec` for one, `specs[i]` for several,
/// matching how the policy reads back).
/// Fields that are enforced but may not do what their author expects, each as
/// `(field path, what to know)`; the control plane answers them as `Warning: 299` headers.
/// Today: `toFQDNs` in a policy none of whose rules sends DNS through the proxy
/// (`rules.dns`). Names are learned only from answers the DNS proxy sees, so unless another
/// policy selecting the same endpoints has such a rule, the selector never matches an
/// address: it allows nothing (fail closed, never wider).
pub fn advice(specs: &[PolicySpec]) -> Vec<(String, String)> {
    let single = specs.len() == 1;
    let mut out = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let path = if single {
            "spec".to_string()
        } else {
            format!("specs[{i}]")
        };
        let dns_visible = s.egress.iter().any(|r| {
            r.to_ports
                .iter()
                .any(|p| p.rules.as_ref().is_some_and(|l7| !l7.dns.is_empty()))
        });
        if dns_visible {
            continue;
        }
        for (j, r) in s.egress.iter().enumerate() {
            if r.to_fqdns.as_ref().is_some_and(|f| !f.is_empty()) {
                out.push((
                    format!("{path}.egress[{j}].toFQDNs"),
                    "names are learned only from DNS answers that pass the DNS proxy, and no \
                     rule of this policy sends DNS there (toPorts with rules.dns, e.g. port 53 \
                     of the resolver with matchPattern '*'): unless another policy selecting \
                     the same endpoints does, this rule allows nothing"
                        .to_string(),
                ));
            }
        }
    }
    out
}

pub fn conditions(specs: &[PolicySpec]) -> Vec<Condition> {
    let single = specs.len() == 1;
    specs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.not_enforced_at(&if single {
                "spec".to_string()
            } else {
                format!("specs[{i}]")
            })
        })
        .collect()
}
