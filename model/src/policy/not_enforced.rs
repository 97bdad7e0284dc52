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
