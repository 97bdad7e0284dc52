//! `dry_run=true` on policy writes: every check of the write, the policy as it would be,
//! and nothing written — no policy, no revision, no change log, no audit entry.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Rest, TestApp};
use serde_json::{json, Value};

fn policy(name: &str, cidr: &str) -> Value {
    json!({
        "name": name,
        "labels": {"team": "web"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromCIDR": [cidr]}]
        }
    })
}

/// What a write would leave behind: policies, revision, change log, audit log.
async fn written(t: &TestApp) -> (i64, i64, i64, i64) {
    (
        t.count("policies").await,
        t.revision().await,
        t.count("desired_state_changes").await,
        t.count("audit_log").await,
    )
}

#[tokio::test]
async fn dry_run_create_checks_and_writes_nothing() {
    let t = TestApp::new().await;
    let tok = t.tenant("acme").await;
    let before = written(&t).await;

    let r = t
        .post(
            "/v1/tenants/acme/policies?dry_run=true",
            &tok,
            policy("web", "10.0.0.0/8"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["name"], "web");
    assert_eq!(
        r.body["specs"][0]["ingress"][0]["fromCIDR"][0],
        "10.0.0.0/8"
    );
    assert!(r.headers.get(header::ETAG).is_none(), "no revision to tag");
    assert!(r.headers.get(header::LOCATION).is_none());
    assert_eq!(written(&t).await, before, "a dry run writes nothing");

    // The same checks as the write: fields ...
    let r = t
        .post(
            "/v1/tenants/acme/policies?dry_run=true",
            &tok,
            policy("web", "10.0.0.0/33"),
        )
        .await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    assert_eq!(r.fields(), ["spec.ingress[0].fromCIDR[0]"]);
    // ... the cluster lookup ...
    let mut scoped = policy("web", "10.0.0.0/8");
    scoped["clusters"] = json!(["nope"]);
    let r = t
        .post("/v1/tenants/acme/policies?dry_run=true", &tok, scoped)
        .await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    assert_eq!(r.fields(), ["clusters[0]"]);
    assert_eq!(written(&t).await, before);

    // ... and a taken name.
    t.created(
        "/v1/tenants/acme/policies",
        &tok,
        policy("web", "10.0.0.0/8"),
    )
    .await;
    let after_create = written(&t).await;
    let r = t
        .post(
            "/v1/tenants/acme/policies?dry_run=true",
            &tok,
            policy("web", "10.0.0.0/8"),
        )
        .await;
    assert!(r.is_problem(409, "conflict"), "{}", r.body);
    assert_eq!(written(&t).await, after_create);

    // `dry_run=false` is an ordinary write; an unknown parameter is refused.
    t.created(
        "/v1/tenants/acme/policies?dry_run=false",
        &tok,
        policy("web2", "10.0.0.0/8"),
    )
    .await;
    let r = t
        .post(
            "/v1/tenants/acme/policies?dryrun=true",
            &tok,
            policy("web3", "10.0.0.0/8"),
        )
        .await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
}

#[tokio::test]
async fn dry_run_put_and_patch_show_the_result_and_keep_the_policy() {
    let t = TestApp::new().await;
    let tok = t.tenant("acme").await;
    let r = t
        .post(
            "/v1/tenants/acme/policies",
            &tok,
            policy("web", "10.0.0.0/8"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let etag = r.etag();
    let original = r.body.clone();
    let before = written(&t).await;

    let r = t
        .put(
            "/v1/tenants/acme/policies/web?dry_run=true",
            &tok,
            policy("web", "192.168.0.0/16"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["specs"][0]["ingress"][0]["fromCIDR"][0],
        "192.168.0.0/16"
    );
    assert_eq!(r.body["id"], original["id"]);

    let patch = Request::builder()
        .method("PATCH")
        .uri("/v1/tenants/acme/policies/web?dry_run=true")
        .header(header::AUTHORIZATION, format!("Bearer {tok}"))
        .header(header::CONTENT_TYPE, "application/merge-patch+json")
        .header(header::IF_MATCH, &etag)
        .body(Body::from(
            json!({"description": "from the console"}).to_string(),
        ))
        .expect("request");
    let r = t.send(patch).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["description"], "from the console");
    assert_eq!(
        r.body["specs"], original["specs"],
        "the merge keeps the rest"
    );

    // A stale If-Match fails the dry run as it would fail the write.
    let stale = Request::builder()
        .method("PUT")
        .uri("/v1/tenants/acme/policies/web?dry_run=true")
        .header(header::AUTHORIZATION, format!("Bearer {tok}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::IF_MATCH, "\"1\"")
        .body(Body::from(policy("web", "10.0.0.0/8").to_string()))
        .expect("request");
    let r = t.send(stale).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.body);

    // A bad field is reported at its path.
    let r = t
        .put(
            "/v1/tenants/acme/policies/web?dry_run=true",
            &tok,
            policy("web", "10.0.0.0/33"),
        )
        .await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    assert_eq!(r.fields(), ["spec.ingress[0].fromCIDR[0]"]);

    assert_eq!(written(&t).await, before, "dry runs write nothing");
    let r = t.get("/v1/tenants/acme/policies/web", &tok).await;
    assert_eq!(r.body, original, "the policy is as it was");
    assert_eq!(r.etag(), etag);

    // Viewers may not even dry-run a write.
    let viewer = t.token("acme", "viewer", &tok).await;
    let r = t
        .post(
            "/v1/tenants/acme/policies?dry_run=true",
            &viewer,
            policy("other", "10.0.0.0/8"),
        )
        .await;
    assert!(r.is_problem(403, "forbidden"), "{}", r.body);
}
