//! `weft_policy`: `/v1/tenants/{t}/policies`. `spec`/`specs` are JSON strings of
//! CiliumNetworkPolicy's `spec`, compared in meaning (both sides parsed into weft-model's
//! `PolicySpec`), so the API's normal form never shows as a diff.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value as J};
use tf_provider::schema::{Attribute, AttributeConstraint::*, AttributeType};
use tf_provider::{map, AttributePath, Diagnostics};
use weft_model::policy::PolicySpec;

use crate::rest::{attr, labels_of, string_map, text_of, validate_name_labels, Kind};

pub struct Policy;

/// A spec in a normal form: parsed as `PolicySpec`, written back, empty lists and nulls
/// dropped. `None` when it does not parse.
fn canonical(v: &J) -> Option<J> {
    let spec: PolicySpec = serde_json::from_value(v.clone()).ok()?;
    let mut j = serde_json::to_value(spec).ok()?;
    prune(&mut j);
    Some(j)
}

fn prune(j: &mut J) {
    match j {
        J::Object(m) => {
            for v in m.values_mut() {
                prune(v);
            }
            m.retain(|_, v| {
                !(v.is_null()
                    || v.as_array().is_some_and(Vec::is_empty)
                    || v.as_object().is_some_and(|o| o.is_empty()))
            });
        }
        J::Array(a) => a.iter_mut().for_each(prune),
        _ => {}
    }
}

/// Whether a spec text of the config means the same as a spec (text or API JSON).
fn same(text: &str, other: &J) -> bool {
    let other = match other {
        J::String(s) => match serde_json::from_str(s) {
            Ok(j) => j,
            Err(_) => return false,
        },
        j => j.clone(),
    };
    match (
        serde_json::from_str::<J>(text)
            .ok()
            .as_ref()
            .and_then(canonical),
        canonical(&other),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Checks one spec text at plan: parse (unknown or refused Cilium fields named), then
/// weft-model's validation with every problem in the detail.
fn check_spec(text: &str, path: AttributePath, diags: &mut Diagnostics) {
    let value: J = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            diags.error("Invalid policy spec", format!("not JSON: {e}"), path);
            return;
        }
    };
    let spec: PolicySpec = match serde_json::from_value(value) {
        Ok(s) => s,
        Err(e) => {
            diags.error("Invalid policy spec", e.to_string(), path);
            return;
        }
    };
    let errors = spec.validate_at("");
    if !errors.is_empty() {
        let detail: Vec<String> = errors
            .iter()
            .map(|e| {
                let field = e.field.trim_start_matches('.');
                format!("{field}: {}", e.message)
            })
            .collect();
        diags.error("Invalid policy spec", detail.join("\n"), path);
    }
}

impl Kind for Policy {
    fn type_name(&self) -> &'static str {
        "weft_policy"
    }
    fn noun(&self) -> &'static str {
        "policy"
    }
    fn description(&self) -> &'static str {
        "A Weft network policy: one (`spec`) or several (`specs`) CiliumNetworkPolicy specs"
    }
    fn attributes(&self) -> HashMap<String, Attribute> {
        map! {
            "name" => attr(AttributeType::String, Required, "unique in the tenant; a DNS label"),
            "description" => attr(AttributeType::String, Optional, "free text"),
            "labels" => attr(string_map(), Optional, "labels"),
            "clusters" => attr(AttributeType::Set(AttributeType::String.into()), Optional,
                "names of the clusters it applies to; null: every cluster"),
            "spec" => attr(AttributeType::String, Optional,
                "one rule: JSON of a CiliumNetworkPolicy spec (jsonencode({...}))"),
            "specs" => attr(AttributeType::List(AttributeType::String.into()), Optional,
                "several rules, each a JSON CiliumNetworkPolicy spec"),
            "wait_for_realization" => attr(AttributeType::Bool, Optional,
                "after a write, wait (5m) until every node applies it"),
        }
    }
    fn realizes(&self) -> bool {
        true
    }
    fn validate(&self, config: &BTreeMap<String, Option<J>>, diags: &mut Diagnostics) {
        validate_name_labels("policy", config, diags);
        // `Some(None)`: set, not known yet.
        let set = |k: &str| {
            config
                .get(k)
                .is_some_and(|v| v.as_ref().is_none_or(|j| !j.is_null()))
        };
        if set("spec") && set("specs") {
            diags.error(
                "Invalid policy",
                "set either spec (one rule) or specs (several), not both",
                AttributePath::new("spec"),
            );
        } else if !set("spec") && !set("specs") {
            diags.error(
                "Invalid policy",
                "one of spec or specs is required",
                AttributePath::new("spec"),
            );
        }
        if let Some(Some(J::String(text))) = config.get("spec") {
            check_spec(text, AttributePath::new("spec"), diags);
        }
        if let Some(Some(J::Array(list))) = config.get("specs") {
            if list.is_empty() || list.len() > 64 {
                diags.error(
                    "Invalid policy",
                    "specs holds 1 to 64 rules",
                    AttributePath::new("specs"),
                );
            }
            for (i, t) in list.iter().enumerate() {
                if let Some(text) = t.as_str() {
                    check_spec(text, AttributePath::new("specs").index(i as i64), diags);
                }
            }
        }
        if let Some(Some(J::Array(clusters))) = config.get("clusters") {
            for c in clusters.iter().filter_map(J::as_str) {
                if looks_like_uuid(c) {
                    diags.error(
                        "Invalid policy clusters",
                        format!("{c:?} is an id: clusters holds names, as the API reads them back; use weft_cluster.<x>.name"),
                        AttributePath::new("clusters"),
                    );
                }
            }
        }
    }
    fn collection(&self, _state: &J) -> String {
        "/policies".into()
    }
    fn input(&self, s: &J) -> J {
        let parse = |t: &J| t.as_str().and_then(|t| serde_json::from_str::<J>(t).ok());
        let mut body = json!({
            "name": s["name"],
            "description": s["description"].as_str().unwrap_or_default(),
            "labels": if s["labels"].is_null() { json!({}) } else { s["labels"].clone() },
            "clusters": s["clusters"],
        });
        if let Some(list) = s["specs"].as_array() {
            body["specs"] = J::Array(list.iter().filter_map(parse).collect());
        } else {
            body["spec"] = parse(&s["spec"]).unwrap_or(J::Null);
        }
        body
    }
    fn state_of(&self, api: &J, prior: Option<&J>) -> J {
        let api_specs = api["specs"].as_array().cloned().unwrap_or_default();
        let prior_spec = prior.and_then(|p| p["spec"].as_str());
        let prior_specs = prior.and_then(|p| p["specs"].as_array());
        let as_list = match (prior_specs, prior_spec) {
            (Some(_), _) => true,
            (None, Some(_)) => false,
            (None, None) => api_specs.len() != 1,
        };
        let text = |own: Option<&str>, api: &J| match own {
            Some(t) if same(t, api) => J::String(t.to_string()),
            _ => J::String(serde_json::to_string(api).unwrap_or_default()),
        };
        let (spec, specs) = if !as_list && api_specs.len() == 1 {
            (text(prior_spec, &api_specs[0]), J::Null)
        } else {
            let list = api_specs
                .iter()
                .enumerate()
                .map(|(i, s)| text(prior_specs.and_then(|p| p.get(i)).and_then(J::as_str), s))
                .collect();
            (J::Null, J::Array(list))
        };
        json!({
            "id": api["id"],
            "name": api["name"],
            "description": text_of(api, "description", prior),
            "labels": labels_of(api, prior),
            "clusters": api["clusters"],
            "spec": spec,
            "specs": specs,
            "wait_for_realization": prior.map_or(J::Null, |p| p["wait_for_realization"].clone()),
        })
    }
    fn normalize_plan(&self, prior: &J, planned: &mut J) {
        if let (Some(p), Some(n)) = (prior["spec"].as_str(), planned["spec"].as_str()) {
            if p != n && same(n, &prior["spec"]) {
                planned["spec"] = prior["spec"].clone();
            }
        }
        if let (Some(p), Some(n)) = (prior["specs"].as_array(), planned["specs"].as_array()) {
            if p.len() == n.len()
                && p.iter()
                    .zip(n)
                    .all(|(p, n)| n.as_str().is_some_and(|n| same(n, p)))
            {
                planned["specs"] = prior["specs"].clone();
            }
        }
    }
}
