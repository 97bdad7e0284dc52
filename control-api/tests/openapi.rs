//! The checked-in OpenAPI document is the contract: it must match the code.

mod common;

use axum::http::StatusCode;
use common::TestApp;

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
