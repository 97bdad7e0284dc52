//! Credentials, roles and tenant isolation.

mod common;

use axum::http::StatusCode;
use common::{Rest, TestApp, OPERATOR};
use serde_json::json;

#[tokio::test]
async fn tokens_are_shown_once_hashed_and_revocable() {
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    let r = t
        .created(
            "/v1/tenants/acme/api-tokens",
            &owner,
            json!({"name": "ci", "role": "editor"}),
        )
        .await;
    let secret = r["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("weft_"));
    // The secret is not stored, only its SHA-256.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_all(&t.pool)
        .await
        .unwrap();
    assert!(stored
        .iter()
        .all(|h| h.len() == 32 && h.as_slice() != secret.as_bytes()));
    assert!(stored.contains(&control_api::auth::hash_token(&secret)));
    // Listing never shows secrets.
    let list = t.get("/v1/tenants/acme/api-tokens", &owner).await;
    assert!(!list.body.to_string().contains(&secret));
    assert!(list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i.get("token").is_none()));
    // It works, then is revoked, then fails with 401.
    assert_eq!(
        t.get("/v1/tenants/acme/clusters", &secret).await.status,
        StatusCode::OK
    );
    let r = t.delete("/v1/tenants/acme/api-tokens/ci", &owner).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = t.get("/v1/tenants/acme/clusters", &secret).await;
    assert!(r.is_problem(401, "unauthenticated"));
    assert!(
        !r.body.to_string().contains(&secret),
        "errors never echo the token"
    );
}

#[tokio::test]
async fn credentials_are_required_and_checked() {
    let t = TestApp::new().await;
    t.tenant("acme").await;
    for token in [None, Some("weft_forged"), Some("not-a-token")] {
        let r = t
            .call("GET", "/v1/tenants/acme/clusters", token, None)
            .await;
        assert!(
            r.is_problem(401, "unauthenticated"),
            "{token:?}: {}",
            r.body
        );
        assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
    }
}

#[tokio::test]
async fn roles_limit_what_a_token_may_do() {
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    let viewer = t.token("acme", "viewer", &owner).await;
    let editor = t.token("acme", "editor", &owner).await;
    let admin = t.token("acme", "admin", &owner).await;
    let cluster = json!({"name": "prod"});
    let r = t
        .post("/v1/tenants/acme/clusters", &viewer, cluster.clone())
        .await;
    assert!(r.is_problem(403, "forbidden"), "{}", r.body);
    assert_eq!(
        t.count("clusters").await,
        0,
        "a refused write writes nothing"
    );
    assert_eq!(
        t.get("/v1/tenants/acme/clusters", &viewer).await.status,
        StatusCode::OK
    );
    t.created("/v1/tenants/acme/clusters", &editor, cluster)
        .await;
    // Editors cannot manage tokens; admins cannot mint owners; nobody below owner deletes the tenant.
    let r = t
        .post(
            "/v1/tenants/acme/api-tokens",
            &editor,
            json!({"name": "x", "role": "viewer"}),
        )
        .await;
    assert!(r.is_problem(403, "forbidden"));
    let r = t
        .post(
            "/v1/tenants/acme/api-tokens",
            &admin,
            json!({"name": "y", "role": "owner"}),
        )
        .await;
    assert!(r.is_problem(403, "forbidden"), "{}", r.body);
    let r = t.delete("/v1/tenants/acme", &admin).await;
    assert!(r.is_problem(403, "forbidden"));
    assert_eq!(t.count("tenants").await, 1);
}

#[tokio::test]
async fn another_tenant_is_invisible() {
    let t = TestApp::new().await;
    let acme = t.tenant("acme").await;
    let globex = t.tenant("globex").await;
    let r = t.cluster("acme", "prod", &acme).await;
    let cluster_id = r["id"].as_str().unwrap().to_string();
    let acme_id = t.get("/v1/tenants/acme", &acme).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Every read and write of acme by globex's owner looks exactly like a missing tenant.
    for (method, path) in [
        ("GET", format!("/v1/tenants/{acme_id}")),
        ("GET", "/v1/tenants/acme/clusters".to_string()),
        ("GET", format!("/v1/tenants/acme/clusters/{cluster_id}")),
        ("DELETE", "/v1/tenants/acme/clusters/prod".to_string()),
        ("PATCH", "/v1/tenants/acme".to_string()),
    ] {
        let body = (method == "PATCH").then(|| json!({"display_name": "pwned"}));
        let r = t.call(method, &path, Some(&globex), body).await;
        assert!(
            r.is_problem(404, "not-found"),
            "{method} {path}: {}",
            r.body
        );
    }
    // Not even by addressing acme's cluster id under globex's own tenant.
    let r = t
        .get(
            &format!("/v1/tenants/globex/clusters/{cluster_id}"),
            &globex,
        )
        .await;
    assert!(r.is_problem(404, "not-found"));
    assert_eq!(t.count("clusters").await, 1);
    let r = t.get("/v1/tenants/acme", OPERATOR).await;
    assert_eq!(r.body["display_name"], "");
}

#[tokio::test]
async fn failed_attempts_are_limited_but_never_lock_out_a_valid_credential() {
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{header, Request};
    use std::net::SocketAddr;

    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    let from = |addr: &str, token: &str| {
        let mut req = Request::builder()
            .uri("/v1/tenants/acme/clusters")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(addr.parse::<SocketAddr>().unwrap()));
        req
    };
    let limit = control_api::ratelimit::MAX_FAILURES;
    // 100 bad tokens from one address: the first `limit` are answered 401, the rest are
    // slowed with 429 and Retry-After.
    for i in 0..100 {
        let r = t
            .send(from("192.0.2.7:4000", &format!("weft_guess{i}")))
            .await;
        if i < limit {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        } else {
            assert!(
                r.is_problem(429, "too-many-requests"),
                "attempt {i}: {}",
                r.body
            );
            let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&after), "Retry-After {after}");
        }
    }
    // A valid token from that same address still gets through...
    let r = t.send(from("192.0.2.7:4001", &owner)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // ...while the address's bad ones are still slowed.
    let r = t.send(from("192.0.2.7:4002", "weft_guess-again")).await;
    assert!(r.is_problem(429, "too-many-requests"), "{}", r.body);
    // Another source's bad token is answered 401, not 429.
    let r = t.send(from("192.0.2.8:4000", "weft_typo")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // One stale credential retried from many addresses is limited as a credential.
    for i in 0..limit {
        let r = t
            .send(from(&format!("198.51.100.{i}:4000"), "weft_stale"))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = t.send(from("198.51.100.200:4000", "weft_stale")).await;
    assert!(r.is_problem(429, "too-many-requests"), "{}", r.body);
    assert!(r.headers.get("retry-after").is_some());
    // The addresses it came from are not locked for valid credentials either.
    let r = t.send(from("198.51.100.3:4000", &owner)).await;
    assert_eq!(r.status, StatusCode::OK);
}
