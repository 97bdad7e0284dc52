//! `weft_service`: `/v1/tenants/{t}/clusters/{c}/services`. `cluster` forces a
//! replacement (a service cannot move); everything else is a full PUT in place.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde_json::{json, Value as J};
use tf_provider::schema::{Attribute, AttributeConstraint::*, AttributeType, Block, NestedBlock};
use tf_provider::{map, AttributePath, Diagnostics};
use weft_model::service::ServiceSpec;

use crate::client::field_path;
use crate::rest::{attr, labels_of, str_of, string_map, validate_name_labels, Kind};

pub struct Service;

/// The blocks; `session_affinity` is at most one block (a list of 0 or 1 in Terraform, an
/// object or null in the API).
const NESTED: &[&str] = &["frontends", "backends", "session_affinity[0]"];

fn block(description: &str, attributes: HashMap<String, Attribute>) -> Block {
    Block {
        description: description.into(),
        attributes,
        ..Default::default()
    }
}

impl Kind for Service {
    fn type_name(&self) -> &'static str {
        "weft_service"
    }
    fn noun(&self) -> &'static str {
        "service"
    }
    fn description(&self) -> &'static str {
        "A Weft load-balanced service of a cluster"
    }
    fn nested(&self) -> &'static [&'static str] {
        NESTED
    }
    fn replaces(&self) -> &'static [&'static str] {
        &["cluster"]
    }
    fn realizes(&self) -> bool {
        true
    }
    fn attributes(&self) -> HashMap<String, Attribute> {
        use AttributeType::String as Str;
        map! {
            "cluster" => attr(Str, Required, "the cluster (name or id); a change replaces the service"),
            "name" => attr(Str, Required, "unique in the cluster; a DNS label"),
            "labels" => attr(string_map(), Optional, "labels"),
            "algorithm" => attr(Str, Optional, "random (default) or maglev"),
            "wait_for_realization" => attr(AttributeType::Bool, Optional,
                "after a write, wait (5m) until every node applies it"),
        }
    }
    fn blocks(&self) -> HashMap<String, NestedBlock> {
        use AttributeType::{Number, String as Str};
        // tf-provider 0.2.2 sets no min_items on a list block: "at least one frontend" is
        // checked in `validate` (weft-model's rule, on the `frontends` line).
        map! {
            "frontends" => NestedBlock::List(block("a virtual address clients connect to (one or more)", map! {
                "vip" => attr(Str, Required, "virtual IP"),
                "port" => attr(Number, Required, "1 to 65535"),
                "protocol" => attr(Str, Required, "TCP or UDP"),
            })),
            "backends" => NestedBlock::List(block("a real address serving the frontends (order kept)", map! {
                "address" => attr(Str, Required, "backend IP"),
                "port" => attr(Number, Required, "1 to 65535"),
                "weight" => attr(Number, Optional, "relative share of new connections (default 1; 0 drains)"),
                "state" => attr(Str, Optional, "active (default), terminating, quarantined, maintenance"),
            })),
            "session_affinity" => NestedBlock::Optional(block("client-IP affinity (at most one)", map! {
                "timeout_seconds" => attr(Number, Required, "1 to 86400"),
            })),
        }
    }
    fn validate(&self, config: &BTreeMap<String, Option<J>>, diags: &mut Diagnostics) {
        validate_name_labels("service", config, diags);
        let get = |k: &str| config.get(k).cloned().flatten();
        let mut bad = false;
        for (list, field) in [("frontends", "vip"), ("backends", "address")] {
            if let Some(J::Array(items)) = get(list) {
                for (i, item) in items.iter().enumerate() {
                    if let Some(a) = item[field].as_str() {
                        if a.parse::<IpAddr>().is_err() {
                            bad = true;
                            diags.error(
                                "Invalid service",
                                format!("{list}[{i}].{field}: {a:?} is not an IP address"),
                                AttributePath::new(list).index(i as i64).attribute(field),
                            );
                        }
                    }
                }
            }
        }
        if matches!(get("frontends"), Some(J::Array(f)) if f.is_empty()) {
            bad = true;
            diags.error(
                "Invalid service",
                "frontends: a service needs at least one frontends block",
                AttributePath::new("frontends"),
            );
        }
        if bad {
            return;
        }
        // Every part known: the API's own checks (families, duplicates, VIP as backend...).
        let (Some(frontends), Some(backends), Some(algorithm), Some(affinity)) = (
            config.get("frontends").cloned().flatten(),
            config.get("backends").cloned().flatten(),
            config.get("algorithm").cloned().flatten(),
            config.get("session_affinity").cloned().flatten(),
        ) else {
            return;
        };
        let doc = spec_doc(&json!({
            "frontends": frontends, "backends": backends,
            "algorithm": algorithm, "session_affinity": affinity,
        }));
        match serde_json::from_value::<ServiceSpec>(doc) {
            Err(e) => diags.root_error("Invalid service", e.to_string()),
            Ok(spec) => {
                if let Err(errors) = spec.validate() {
                    for e in errors {
                        diags.error(
                            "Invalid service",
                            format!("{}: {}", e.field, e.message),
                            field_path(&e.field, NESTED),
                        );
                    }
                }
            }
        }
    }
    fn collection(&self, state: &J) -> String {
        format!("/clusters/{}/services", str_of(state, "cluster"))
    }
    fn import_state(&self, id: &str) -> Result<J, String> {
        match id.split_once('/') {
            Some((c, name)) if !c.is_empty() && !name.is_empty() => {
                Ok(json!({"cluster": c, "id": name}))
            }
            _ => Err("the import ID of a service is cluster/name (or cluster/id)".into()),
        }
    }
    fn input(&self, s: &J) -> J {
        let mut body = spec_doc(s);
        body["name"] = s["name"].clone();
        body["labels"] = if s["labels"].is_null() {
            json!({})
        } else {
            s["labels"].clone()
        };
        body
    }
    fn state_of(&self, api: &J, prior: Option<&J>) -> J {
        let prior_backends = prior.and_then(|p| p["backends"].as_array());
        let backends: Vec<J> = api["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let own = prior_backends.and_then(|p| p.get(i));
                // A default the config left out stays out.
                let keep = |k: &str, default: J| {
                    if b[k] == default && own.is_none_or(|o| o[k].is_null()) {
                        J::Null
                    } else {
                        b[k].clone()
                    }
                };
                json!({
                    "address": b["address"],
                    "port": b["port"],
                    "weight": keep("weight", json!(1)),
                    "state": keep("state", json!("active")),
                })
            })
            .collect();
        let algorithm =
            if api["algorithm"] == "random" && prior.is_none_or(|p| p["algorithm"].is_null()) {
                J::Null
            } else {
                api["algorithm"].clone()
            };
        let frontends: Vec<J> = api["frontends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|f| json!({"vip": f["vip"], "port": f["port"], "protocol": f["protocol"]}))
            .collect();
        json!({
            "id": api["id"],
            "cluster": prior.map_or(J::Null, |p| p["cluster"].clone()),
            "name": api["name"],
            "labels": labels_of(api, prior),
            "frontends": frontends,
            "backends": backends,
            "algorithm": algorithm,
            // At most one block: a list of 0 or 1.
            "session_affinity": match &api["session_affinity"] {
                J::Null => json!([]),
                a => json!([{"timeout_seconds": a["timeout_seconds"]}]),
            },
            "wait_for_realization": prior.map_or(J::Null, |p| p["wait_for_realization"].clone()),
        })
    }
}

/// The `ServiceSpec` part of a state: defaults for what the config leaves out.
fn spec_doc(s: &J) -> J {
    let backends: Vec<J> = s["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|b| {
            let mut o = json!({"address": b["address"], "port": b["port"]});
            if !b["weight"].is_null() {
                o["weight"] = b["weight"].clone();
            }
            if !b["state"].is_null() {
                o["state"] = b["state"].clone();
            }
            o
        })
        .collect();
    let mut doc = json!({
        "frontends": if s["frontends"].is_null() { json!([]) } else { s["frontends"].clone() },
        "backends": backends,
    });
    if !s["algorithm"].is_null() {
        doc["algorithm"] = s["algorithm"].clone();
    }
    // The at-most-one block is a list of 0 or 1 in Terraform, an object in the API.
    match &s["session_affinity"] {
        J::Array(a) => {
            if let Some(one) = a.first() {
                doc["session_affinity"] = one.clone();
            }
        }
        J::Null => {}
        one => doc["session_affinity"] = one.clone(),
    }
    doc
}
