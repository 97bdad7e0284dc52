//! `weft_service`: `/v1/tenants/{t}/clusters/{c}/services`. `cluster` forces a
//! replacement (a service cannot move); everything else is a full PUT in place.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde_json::{json, Value as J};
use tf_provider::schema::{Attribute, AttributeConstraint::*, AttributeType};
use tf_provider::{map, AttributePath, Diagnostics};
use weft_model::service::ServiceSpec;

use crate::client::field_path;
use crate::rest::{attr, labels_of, str_of, string_map, validate_name_labels, Kind};

pub struct Service;

const NESTED: &[&str] = &["frontends", "backends", "session_affinity"];

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
        use AttributeType::{Number, String as Str};
        map! {
            "cluster" => attr(Str, Required, "the cluster (name or id); a change replaces the service"),
            "name" => attr(Str, Required, "unique in the cluster; a DNS label"),
            "labels" => attr(string_map(), Optional, "labels"),
            "frontends" => attr(AttributeType::AttributeList(map! {
                "vip" => attr(Str, Required, "virtual IP"),
                "port" => attr(Number, Required, "1 to 65535"),
                "protocol" => attr(Str, Required, "TCP or UDP"),
            }), Required, "virtual addresses clients connect to"),
            "backends" => attr(AttributeType::AttributeList(map! {
                "address" => attr(Str, Required, "backend IP"),
                "port" => attr(Number, Required, "1 to 65535"),
                "weight" => attr(Number, Optional, "relative share of new connections (default 1; 0 drains)"),
                "state" => attr(Str, Optional, "active (default), terminating, quarantined, maintenance"),
            }), Optional, "real addresses serving the frontends (order kept)"),
            "algorithm" => attr(Str, Optional, "random (default) or maglev"),
            "session_affinity" => attr(AttributeType::AttributeSingle(map! {
                "timeout_seconds" => attr(Number, Required, "1 to 86400"),
            }), Optional, "client-IP affinity"),
            "wait_for_realization" => attr(AttributeType::Bool, Optional,
                "after a write, wait (5m) until every node applies it"),
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
        let backends = if backends.is_empty() && prior.is_none_or(|p| p["backends"].is_null()) {
            J::Null
        } else {
            J::Array(backends)
        };
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
            "session_affinity": api["session_affinity"],
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
        "frontends": s["frontends"],
        "backends": backends,
    });
    if !s["algorithm"].is_null() {
        doc["algorithm"] = s["algorithm"].clone();
    }
    if !s["session_affinity"].is_null() {
        doc["session_affinity"] = s["session_affinity"].clone();
    }
    doc
}
