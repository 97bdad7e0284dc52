//! `weft_service`: `/v1/tenants/{t}/clusters/{c}/services`. `cluster` forces a
//! replacement (a service cannot move); everything else is a full PUT in place.
//!
//! `frontends`, `backends` and `session_affinity` are attributes written as in the issue
//! (`frontends = [{ vip = "10.96.0.10", port = 80, protocol = "TCP" }]`). tf-provider 0.2.2
//! cannot declare nested attributes (it sends them with both `type` and `nested_type`, which
//! Terraform refuses), and a plain `list(object(...))` cannot leave `weight`/`state` out, so
//! they are `dynamic`: this module checks their shape itself. On the wire a dynamic value is
//! `[type JSON, value]` (cty's msgpack form); the value the config wrote (with its type) is
//! kept in state while the API's means the same, else the API's form is written (drift).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde_json::{json, Map, Value as J};
use tf_provider::schema::{Attribute, AttributeConstraint::*, AttributeType};
use tf_provider::{map, AttributePath, Diagnostics};
use weft_model::service::{Backend, Frontend, ServiceSpec, SessionAffinity};

use crate::client::field_path;
use crate::rest::{attr, labels_of, str_of, string_map, validate_name_labels, Kind};

pub struct Service;

/// The dynamic attributes; API field errors may point inside them.
const NESTED: &[&str] = &["frontends", "backends", "session_affinity"];

/// The value of a dynamic attribute as Terraform sends it (`[type JSON, value]`, or null).
fn value_of(j: &J) -> J {
    match j {
        J::Array(a) if a.len() == 2 && a[0].is_string() => a[1].clone(),
        other => other.clone(),
    }
}

/// A value as a dynamic attribute, its type inferred (tuples of objects, as HCL literals).
fn dynamic(v: J) -> J {
    if v.is_null() {
        return J::Null;
    }
    json!([type_of(&v).to_string(), v])
}

fn type_of(v: &J) -> J {
    match v {
        J::String(_) => json!("string"),
        J::Number(_) => json!("number"),
        J::Bool(_) => json!("bool"),
        J::Null => json!("dynamic"),
        J::Array(a) => json!(["tuple", a.iter().map(type_of).collect::<Vec<_>>()]),
        J::Object(o) => json!([
            "object",
            o.iter()
                .map(|(k, v)| (k.clone(), type_of(v)))
                .collect::<Map<_, _>>()
        ]),
    }
}

/// One problem of a dynamic attribute's shape: `backends[1].port: must be a number 1-65535`.
struct Shape {
    message: String,
    path: AttributePath,
}

/// The fields an object of `list` may have: (name, required, check).
type Check = fn(&J) -> Result<(), &'static str>;

fn ip(v: &J) -> Result<(), &'static str> {
    match v.as_str() {
        Some(s) if s.parse::<IpAddr>().is_ok() => Ok(()),
        Some(_) => Err("is not an IP address"),
        None => Err("must be a string (an IP address)"),
    }
}

fn port(v: &J) -> Result<(), &'static str> {
    match v.as_u64() {
        Some(1..=65535) => Ok(()),
        _ => Err("must be a number 1-65535"),
    }
}

fn protocol(v: &J) -> Result<(), &'static str> {
    match v.as_str() {
        Some("TCP" | "UDP") => Ok(()),
        _ => Err("must be \"TCP\" or \"UDP\""),
    }
}

fn weight(v: &J) -> Result<(), &'static str> {
    match v.as_u64() {
        Some(0..=65535) => Ok(()),
        _ => Err("must be a number 0-65535"),
    }
}

fn state(v: &J) -> Result<(), &'static str> {
    match v.as_str() {
        Some("active" | "terminating" | "quarantined" | "maintenance") => Ok(()),
        _ => Err("must be one of \"active\", \"terminating\", \"quarantined\", \"maintenance\""),
    }
}

fn timeout(v: &J) -> Result<(), &'static str> {
    match v.as_u64() {
        Some(1..=86400) => Ok(()),
        _ => Err("must be a number 1-86400"),
    }
}

const FRONTEND: &[(&str, bool, Check)] = &[
    ("vip", true, ip),
    ("port", true, port),
    ("protocol", true, protocol),
];
const BACKEND: &[(&str, bool, Check)] = &[
    ("address", true, ip),
    ("port", true, port),
    ("weight", false, weight),
    ("state", false, state),
];
const AFFINITY: &[(&str, bool, Check)] = &[("timeout_seconds", true, timeout)];

/// Checks one object against its fields; `at` names it (`backends[1]`).
fn check_object(
    v: &J,
    at: &str,
    path: AttributePath,
    fields: &[(&'static str, bool, Check)],
    out: &mut Vec<Shape>,
) {
    let names: Vec<&str> = fields.iter().map(|f| f.0).collect();
    let Some(o) = v.as_object() else {
        out.push(Shape {
            message: format!("{at}: must be an object {{ {} }}", names.join(", ")),
            path,
        });
        return;
    };
    for k in o.keys() {
        if !names.contains(&k.as_str()) {
            out.push(Shape {
                message: format!("{at}.{k}: unknown field (expected {})", names.join(", ")),
                path: path.clone().attribute(k.clone()),
            });
        }
    }
    for (name, required, check) in fields {
        match o.get(*name) {
            None | Some(J::Null) if *required => out.push(Shape {
                message: format!("{at}.{name}: required"),
                path: path.clone().attribute(*name),
            }),
            None | Some(J::Null) => {}
            Some(x) => {
                if let Err(e) = check(x) {
                    let shown = if x.is_string() {
                        format!(" ({x})")
                    } else {
                        String::new()
                    };
                    out.push(Shape {
                        message: format!("{at}.{name}{shown}: {e}"),
                        path: path.clone().attribute(*name),
                    });
                }
            }
        }
    }
}

/// Checks the shape of a list attribute (`frontends`, `backends`) given as its value.
fn check_list(
    list: &'static str,
    v: &J,
    fields: &[(&'static str, bool, Check)],
    out: &mut Vec<Shape>,
) {
    match v {
        J::Null => {}
        J::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_object(
                    item,
                    &format!("{list}[{i}]"),
                    AttributePath::new(list).index(i as i64),
                    fields,
                    out,
                );
            }
        }
        _ => {
            let names: Vec<&str> = fields.iter().map(|f| f.0).collect();
            out.push(Shape {
                message: format!(
                    "{list}: must be a list of objects [{{ {} }}, ...]",
                    names.join(", ")
                ),
                path: AttributePath::new(list),
            });
        }
    }
}

/// Every shape problem of a config's (known) dynamic attributes.
fn shape(config: &BTreeMap<String, Option<J>>) -> Vec<Shape> {
    let mut out = Vec::new();
    let get = |k: &str| config.get(k).cloned().flatten().map(|j| value_of(&j));
    if let Some(f) = get("frontends") {
        check_list("frontends", &f, FRONTEND, &mut out);
        if f.as_array().is_some_and(Vec::is_empty) {
            out.push(Shape {
                message: "frontends: a service needs at least one frontend".into(),
                path: AttributePath::new("frontends"),
            });
        }
    }
    if let Some(b) = get("backends") {
        check_list("backends", &b, BACKEND, &mut out);
    }
    if let Some(a) = get("session_affinity") {
        if !a.is_null() {
            check_object(
                &a,
                "session_affinity",
                AttributePath::new("session_affinity"),
                AFFINITY,
                &mut out,
            );
        }
    }
    out
}

/// Whether two values of an attribute mean the same service (defaults applied, addresses
/// parsed); `false` when either does not parse.
fn same(key: &str, a: &J, b: &J) -> bool {
    fn list<T: serde::de::DeserializeOwned + PartialEq>(a: &J, b: &J) -> bool {
        let parse = |j: &J| match j {
            J::Null => Some(Vec::new()),
            j => serde_json::from_value::<Vec<T>>(j.clone()).ok(),
        };
        matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
    }
    match key {
        "frontends" => list::<Frontend>(a, b),
        "backends" => list::<Backend>(a, b),
        _ => {
            let parse = |j: &J| serde_json::from_value::<Option<SessionAffinity>>(j.clone()).ok();
            matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
        }
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
            "frontends" => attr(AttributeType::Any, Required,
                "list of { vip, port (1-65535), protocol (TCP or UDP) }: the virtual addresses clients connect to (one or more)"),
            "backends" => attr(AttributeType::Any, Optional,
                "list of { address, port, weight (default 1; 0 drains), state (active (default), terminating, quarantined, maintenance) }, order kept"),
            "session_affinity" => attr(AttributeType::Any, Optional,
                "{ timeout_seconds (1-86400) }: client-IP affinity"),
            "wait_for_realization" => attr(AttributeType::Bool, Optional,
                "after a write, wait (5m) until every node applies it"),
        }
    }
    fn validate(&self, config: &BTreeMap<String, Option<J>>, diags: &mut Diagnostics) {
        validate_name_labels("service", config, diags);
        let problems = shape(config);
        if !problems.is_empty() {
            for p in problems {
                diags.error("Invalid service", p.message, p.path);
            }
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
        let list = |k: &str| api[k].as_array().cloned().unwrap_or_default();
        // The API's form, its defaults left out (as a config would write it).
        let frontends: Vec<J> = list("frontends")
            .iter()
            .map(|f| json!({"vip": f["vip"], "port": f["port"], "protocol": f["protocol"]}))
            .collect();
        let backends: Vec<J> = list("backends")
            .iter()
            .map(|b| {
                let mut o = json!({"address": b["address"], "port": b["port"]});
                if !b["weight"].is_null() && b["weight"] != json!(1) {
                    o["weight"] = b["weight"].clone();
                }
                if !b["state"].is_null() && b["state"] != json!("active") {
                    o["state"] = b["state"].clone();
                }
                o
            })
            .collect();
        let affinity = match &api["session_affinity"] {
            J::Null => J::Null,
            a => json!({"timeout_seconds": a["timeout_seconds"]}),
        };
        // The prior's own value (as the config wrote it, with its type) while it means
        // the same as the API's; else the API's (a drift the plan shows).
        let keep = |k: &str, api_form: J| match prior {
            Some(p) if same(k, &value_of(&p[k]), &api_form) => p[k].clone(),
            _ => dynamic(api_form),
        };
        let backends = if backends.is_empty() && prior.is_some_and(|p| p["backends"].is_null()) {
            J::Null
        } else {
            keep("backends", J::Array(backends))
        };
        let algorithm =
            if api["algorithm"] == "random" && prior.is_none_or(|p| p["algorithm"].is_null()) {
                J::Null
            } else {
                api["algorithm"].clone()
            };
        json!({
            "id": api["id"],
            "cluster": prior.map_or(J::Null, |p| p["cluster"].clone()),
            "name": api["name"],
            "labels": labels_of(api, prior),
            "frontends": keep("frontends", J::Array(frontends)),
            "backends": backends,
            "algorithm": algorithm,
            "session_affinity": keep("session_affinity", affinity),
            "wait_for_realization": prior.map_or(J::Null, |p| p["wait_for_realization"].clone()),
        })
    }
}

/// The `ServiceSpec` document of a state or config: dynamic values unwrapped, the defaults
/// of what it leaves out written (weight 1, state active, algorithm as the API defaults).
fn spec_doc(s: &J) -> J {
    let backends: Vec<J> = value_of(&s["backends"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|b| {
            let or = |k: &str, d: J| if b[k].is_null() { d } else { b[k].clone() };
            json!({
                "address": b["address"],
                "port": b["port"],
                "weight": or("weight", json!(1)),
                "state": or("state", json!("active")),
            })
        })
        .collect();
    let frontends = match value_of(&s["frontends"]) {
        J::Null => json!([]),
        f => f,
    };
    let mut doc = json!({"frontends": frontends, "backends": backends});
    if !s["algorithm"].is_null() {
        doc["algorithm"] = s["algorithm"].clone();
    }
    let affinity = value_of(&s["session_affinity"]);
    if !affinity.is_null() {
        doc["session_affinity"] = affinity;
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, J)]) -> BTreeMap<String, Option<J>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.clone())))
            .collect()
    }

    #[test]
    fn shapes_are_checked_with_the_element_named() {
        let c = config(&[
            (
                "frontends",
                dynamic(json!([{"vip": "10.96.0.10", "port": 80, "protocol": "TCP"}])),
            ),
            (
                "backends",
                dynamic(
                    json!([{"address": "10.0.1.5", "port": 8080}, {"address": "10.0.1.6", "port": "x", "colour": 1}]),
                ),
            ),
            ("session_affinity", dynamic(json!([300]))),
        ]);
        let msgs: Vec<String> = shape(&c).into_iter().map(|s| s.message).collect();
        assert!(
            msgs.contains(&"backends[1].port (\"x\"): must be a number 1-65535".to_string()),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("backends[1].colour: unknown field")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("session_affinity: must be an object")),
            "{msgs:?}"
        );
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        let c = config(&[(
            "frontends",
            dynamic(json!([{"vip": "10.96.0.10", "port": 80}])),
        )]);
        let msgs: Vec<String> = shape(&c).into_iter().map(|s| s.message).collect();
        assert_eq!(msgs, vec!["frontends[0].protocol: required".to_string()]);
    }

    #[test]
    fn defaults_apply_and_equal_values_keep_the_config_form() {
        let written = json!({
            "frontends": dynamic(json!([{"vip": "10.96.0.10", "port": 80, "protocol": "TCP"}])),
            "backends": dynamic(json!([{"address": "10.0.1.5", "port": 8080}])),
            "session_affinity": dynamic(json!({"timeout_seconds": 300})),
        });
        let doc = spec_doc(&written);
        assert_eq!(
            doc["backends"],
            json!([{"address": "10.0.1.5", "port": 8080, "weight": 1, "state": "active"}])
        );
        assert_eq!(doc["session_affinity"], json!({"timeout_seconds": 300}));
        let mut api = doc.clone();
        api["algorithm"] = json!("random");
        let state = Service.state_of(&api, Some(&written));
        for k in NESTED {
            assert_eq!(state[*k], written[*k], "{k}");
        }
        // Drift: the API's form, defaults left out.
        api["backends"][0]["weight"] = json!(3);
        let state = Service.state_of(&api, Some(&written));
        assert_eq!(
            value_of(&state["backends"]),
            json!([{"address": "10.0.1.5", "port": 8080, "weight": 3}])
        );
        assert_eq!(
            state["backends"][0],
            json!(
                r#"["tuple",[["object",{"address":"string","port":"number","weight":"number"}]]]"#
            )
        );
    }
}
