//! The checked-in OpenAPI document is the contract: it must match the code.

mod common;

use axum::http::StatusCode;
use common::{Rest, TestApp};

#[test]
fn checked_in_spec_is_current() {
    let generated = control_api::api::openapi()
        .to_pretty_json()
        .expect("spec serialises");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in.trim_end() == generated.trim_end(),
        "openapi/openapi.json is stale: run `cargo xtask openapi` and commit it"
    );
}

#[test]
fn every_operation_documents_auth_and_errors() {
    let spec = serde_json::to_value(control_api::api::openapi()).expect("spec as JSON");
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 15, "only {} paths documented", paths.len());
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let public = [
                "/healthz",
                "/readyz",
                "/metrics",
                "/auth/login",
                "/auth/callback",
                "/install.sh",
                "/downloads/node-agent/{platform}",
                "/downloads/agent-ca.pem",
            ]
            .contains(&path.as_str());
            let text = format!(
                "{} {}",
                op["summary"].as_str().unwrap_or(""),
                op["description"].as_str().unwrap_or("")
            );
            let says_who = [
                "viewer",
                "editor",
                "admin",
                "owner",
                "operator",
                "no credentials",
                "any caller",
                "signed-in",
                "browser",
                "session",
            ];
            assert!(
                says_who.iter().any(|r| text.contains(r)),
                "{method} {path} does not say who may call it: {text:?}"
            );
            let responses = op["responses"].as_object().expect("responses");
            if !public {
                assert!(
                    op.get("security").is_some(),
                    "{method} {path} has no security"
                );
                assert!(responses.contains_key("401"), "{method} {path} lacks 401");
                assert!(responses.contains_key("404"), "{method} {path} lacks 404");
            }
            if ["post", "put", "patch"].contains(&method.as_str()) {
                assert!(responses.contains_key("400"), "{method} {path} lacks 400");
                assert_eq!(
                    responses["400"]["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path}"
                );
            }
        }
    }
}

#[tokio::test]
async fn served_spec_and_docs() {
    let t = TestApp::new().await;
    let r = t.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        serde_json::to_value(control_api::api::openapi()).expect("spec as JSON")
    );
    let r = t.call("GET", "/docs/", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.as_str().is_some_and(|html| html.contains("swagger")),
        "{}",
        r.body
    );
}

/// Every string enum in the spec documents exactly what serde reads and writes: each value
/// in the spec round-trips through the Rust type unchanged, and for `named_enum!` types the
/// spec lists exactly the texts of `ALL`. A new enum in the spec must be added here.
#[test]
fn every_enum_in_the_spec_is_what_serde_writes() {
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use serde_json::Value;

    fn round_trips<T: Serialize + DeserializeOwned>(documented: &[Value]) -> Vec<Value> {
        documented
            .iter()
            .map(|v| match serde_json::from_value::<T>(v.clone()) {
                Ok(t) => serde_json::to_value(t).expect("serialises"),
                Err(e) => panic!("documented value {v} is refused by serde: {e}"),
            })
            .collect()
    }
    fn written<T: Serialize>(all: &[T]) -> Vec<Value> {
        all.iter()
            .map(|t| serde_json::to_value(t).expect("serialises"))
            .collect()
    }

    let spec = serde_json::to_value(control_api::api::openapi()).expect("spec as JSON");
    let schemas = spec["components"]["schemas"].as_object().expect("schemas");
    let mut seen = 0;
    for (name, schema) in schemas {
        let Some(documented) = schema.get("enum").and_then(Value::as_array) else {
            continue;
        };
        seen += 1;
        use weft_model::{flow, policy, routing, selector, service, workload};
        // named_enum! types: the spec must equal `ALL` exactly, in order.
        let all = match name.as_str() {
            "Verdict" => Some(written(flow::Verdict::ALL)),
            "DropReason" => Some(written(flow::DropReason::ALL)),
            "FlowType" => Some(written(flow::FlowType::ALL)),
            "WorkloadKind" => Some(written(workload::WorkloadKind::ALL)),
            "ProbeOutcome" => Some(written(workload::ProbeOutcome::ALL)),
            "RoutingMode" => Some(written(routing::RoutingMode::ALL)),
            _ => None,
        };
        if let Some(all) = all {
            assert_eq!(
                documented, &all,
                "{name}: the spec differs from serde's texts"
            );
        }
        let back = match name.as_str() {
            "Verdict" => round_trips::<flow::Verdict>(documented),
            "DropReason" => round_trips::<flow::DropReason>(documented),
            "FlowType" => round_trips::<flow::FlowType>(documented),
            "WorkloadKind" => round_trips::<workload::WorkloadKind>(documented),
            "ProbeOutcome" => round_trips::<workload::ProbeOutcome>(documented),
            "RoutingMode" => round_trips::<routing::RoutingMode>(documented),
            "Algorithm" => round_trips::<service::Algorithm>(documented),
            "BackendState" => round_trips::<service::BackendState>(documented),
            "L4Protocol" => round_trips::<service::L4Protocol>(documented),
            "Entity" => round_trips::<policy::Entity>(documented),
            "IcmpFamily" => round_trips::<policy::IcmpFamily>(documented),
            "Protocol" => round_trips::<policy::Protocol>(documented),
            "SelectorOperator" => round_trips::<selector::SelectorOperator>(documented),
            "CallerKind" => round_trips::<control_api::api::me::CallerKind>(documented),
            "MemberStatus" => round_trips::<control_api::api::members::MemberStatus>(documented),
            "ProbeStatus" => {
                round_trips::<control_api::api::connectivity::probes::ProbeStatus>(documented)
            }
            "Role" => round_trips::<control_api::auth::Role>(documented),
            other => panic!("enum schema {other} has no Rust type in this test: add it"),
        };
        assert_eq!(documented, &back, "{name}: serde writes other texts");
    }
    assert!(seen >= 15, "only {seen} enums in the spec");
}
