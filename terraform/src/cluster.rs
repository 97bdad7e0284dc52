//! `weft_cluster`: `/v1/tenants/{t}/clusters`. Every call after create uses the id, so a
//! rename is an update in place.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value as J};
use tf_provider::schema::{Attribute, AttributeConstraint::*, AttributeType};
use tf_provider::{map, AttributePath, Diagnostics};

use weft_model::routing::RoutingMode;

use crate::rest::{attr, labels_of, string_map, text_of, validate_name_labels, Kind};

pub struct Cluster;

impl Kind for Cluster {
    fn type_name(&self) -> &'static str {
        "weft_cluster"
    }
    fn noun(&self) -> &'static str {
        "cluster"
    }
    fn description(&self) -> &'static str {
        "A Weft cluster"
    }
    fn attributes(&self) -> HashMap<String, Attribute> {
        map! {
            "name" => attr(AttributeType::String, Required, "unique in the tenant; a DNS label"),
            "description" => attr(AttributeType::String, Optional, "free text"),
            "labels" => attr(string_map(), Optional, "labels"),
            "routing_mode" => attr(AttributeType::String, Optional,
                "how the nodes reach each other's pods: `tunnel` (the default: VXLAN between node addresses) or `native` (a route per node pod CIDR; the network must carry pod addresses)"),
        }
    }
    fn validate(&self, config: &BTreeMap<String, Option<J>>, diags: &mut Diagnostics) {
        validate_name_labels("cluster", config, diags);
        if let Some(Some(J::String(mode))) = config.get("routing_mode") {
            if let Err(e) = mode.parse::<RoutingMode>() {
                diags.error(
                    "Invalid routing mode",
                    format!("routing_mode: {e}"),
                    AttributePath::new("routing_mode"),
                );
            }
        }
    }
    fn collection(&self, _state: &J) -> String {
        "/clusters".into()
    }
    fn input(&self, s: &J) -> J {
        json!({
            "name": s["name"],
            "description": s["description"].as_str().unwrap_or_default(),
            "labels": if s["labels"].is_null() { json!({}) } else { s["labels"].clone() },
            "routing": {"mode": s["routing_mode"].as_str().unwrap_or(RoutingMode::default().as_str())},
        })
    }
    fn state_of(&self, api: &J, prior: Option<&J>) -> J {
        json!({
            "id": api["id"],
            "name": api["name"],
            "description": text_of(api, "description", prior),
            "labels": labels_of(api, prior),
            // Unset in the configuration and the default on the server: stays unset.
            "routing_mode": match api["routing"]["mode"].as_str() {
                Some(m) if m != RoutingMode::default().as_str()
                    || prior.is_some_and(|p| !p["routing_mode"].is_null()) => J::String(m.to_string()),
                _ => J::Null,
            },
        })
    }
}
