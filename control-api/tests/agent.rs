//! The agent service over real gRPC: join tokens, registration, node credentials,
//! reports, and what REST then shows.

mod common;

use axum::http::StatusCode;
use common::TestApp;
use serde_json::json;
use tonic::transport::Channel;
use tonic::{Code, Request};
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{
    AckRequest, EndpointReport, HealthReport, ItemError, RegisterRequest, ReportedEndpoint,
};

/// Serves the agent service on a free loopback port and connects a client to it.
async fn agent(t: &TestApp) -> AgentClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc = control_api::agent::AgentService::new(t.state.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    AgentClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

async fn join_token(t: &TestApp, owner: &str, cluster: &str, body: serde_json::Value) -> String {
    let r = t
        .call(
            "POST",
            &format!("/v1/tenants/acme/clusters/{cluster}/join-tokens"),
            Some(owner),
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["token"].as_str().expect("token").to_string()
}

fn register(token: &str, name: &str, replace: bool) -> RegisterRequest {
    RegisterRequest {
        join_token: token.into(),
        node_name: name.into(),
        addresses: vec!["192.0.2.10".into()],
        replace,
        capability_version: weft_proto::CAPABILITY_VERSION,
        agent_version: "0.1.0-test".into(),
        kernel_version: "6.18".into(),
        pod_cidrs: vec!["10.0.1.0/24".into()],
        ..Default::default()
    }
}

fn authed<T>(msg: T, credential: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().expect("header"),
    );
    req
}

#[tokio::test]
async fn join_tokens_register_nodes_once() {
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    t.call(
        "POST",
        "/v1/tenants/acme/clusters",
        Some(&owner),
        Some(json!({"name": "prod"})),
    )
    .await;
    let mut client = agent(&t).await;
    let single = join_token(&t, &owner, "prod", json!({"name": "once"})).await;

    let r = client
        .register(register(&single, "node-1", false))
        .await
        .expect("register");
    let resp = r.into_inner();
    assert!(resp.node_credential.starts_with("weft_"));
    assert_eq!(resp.capability_version, weft_proto::CAPABILITY_VERSION);
    // The credential is stored hashed only.
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT credential_hash FROM nodes WHERE name = 'node-1'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(stored, control_api::auth::hash_token(&resp.node_credential));

    // A single-use token is spent.
    let e = client
        .register(register(&single, "node-2", false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = client
        .register(register("weft_nonsense", "node-2", false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A multi-use token; an existing name needs `replace`, which rotates the credential.
    let multi = join_token(&t, &owner, "prod", json!({"name": "fleet", "max_uses": 0})).await;
    let e = client
        .register(register(&multi, "node-1", false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    let e = client
        .register(register(&multi, "Bad_Name", false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let replaced = client
        .register(register(&multi, "node-1", true))
        .await
        .expect("replace")
        .into_inner();
    assert_eq!(replaced.node_id, resp.node_id, "same node, new credential");
    let e = client
        .report_health(authed(HealthReport::default(), &resp.node_credential))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unauthenticated,
        "the replaced credential no longer works"
    );
    client
        .report_health(authed(HealthReport::default(), &replaced.node_credential))
        .await
        .expect("new credential works");

    // Listing never shows secrets; a revoked token registers nothing.
    let list = t
        .call(
            "GET",
            "/v1/tenants/acme/clusters/prod/join-tokens",
            Some(&owner),
            None,
        )
        .await;
    assert!(!list.body.to_string().contains(&multi));
    assert_eq!(list.body["items"][1]["uses"], 1);
    let r = t
        .call(
            "DELETE",
            "/v1/tenants/acme/clusters/prod/join-tokens/fleet",
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let e = client
        .register(register(&multi, "node-3", false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(t.count("nodes").await, 1);
}

#[tokio::test]
async fn reports_show_up_in_node_status_and_inventory() {
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    for c in ["prod", "staging"] {
        t.call(
            "POST",
            "/v1/tenants/acme/clusters",
            Some(&owner),
            Some(json!({"name": c})),
        )
        .await;
    }
    let mut client = agent(&t).await;
    let tok_prod = join_token(&t, &owner, "prod", json!({"name": "p"})).await;
    let tok_stg = join_token(&t, &owner, "staging", json!({"name": "s"})).await;
    let n1 = client
        .register(register(&tok_prod, "node-1", false))
        .await
        .unwrap()
        .into_inner();
    let n2 = client
        .register(register(&tok_stg, "node-1", false))
        .await
        .unwrap()
        .into_inner();

    let ep = |name: &str, app: &str, ip: &str| ReportedEndpoint {
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ips: vec![ip.into()],
    };
    let rev0 = t.revision().await;
    client
        .report_endpoints(authed(
            EndpointReport {
                endpoints: vec![ep("web-1", "web", "10.0.1.5"), ep("db-1", "db", "10.0.1.6")],
            },
            &n1.node_credential,
        ))
        .await
        .expect("report");
    client
        .report_endpoints(authed(
            EndpointReport {
                endpoints: vec![ep("web-9", "web", "10.0.2.5")],
            },
            &n2.node_credential,
        ))
        .await
        .expect("report");
    assert!(t.revision().await > rev0, "new endpoints bump the revision");

    let r = t
        .call("GET", "/v1/tenants/acme/endpoints", Some(&owner), None)
        .await;
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let identity = |name: &str| {
        items.iter().find(|e| e["name"] == name).unwrap()["identity"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(
        identity("web-1"),
        identity("web-9"),
        "same labels, same identity across clusters"
    );
    assert_ne!(identity("web-1"), identity("db-1"));
    assert!(identity("web-1") >= 256 && identity("db-1") >= 256);

    // Reporting the same set again changes nothing; dropping one removes it.
    let rev1 = t.revision().await;
    client
        .report_endpoints(authed(
            EndpointReport {
                endpoints: vec![ep("web-1", "web", "10.0.1.5"), ep("db-1", "db", "10.0.1.6")],
            },
            &n1.node_credential,
        ))
        .await
        .unwrap();
    assert_eq!(t.revision().await, rev1);
    client
        .report_endpoints(authed(
            EndpointReport {
                endpoints: vec![ep("web-1", "web", "10.0.1.5")],
            },
            &n1.node_credential,
        ))
        .await
        .unwrap();
    let r = t
        .call(
            "GET",
            "/v1/tenants/acme/endpoints?cluster=prod",
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);

    // Health and acks become the node's status.
    client
        .report_health(authed(
            HealthReport {
                agent_version: "0.2.0".into(),
                kernel_version: "6.18.44".into(),
                datapath_status: "ok".into(),
                map_fill: [("WEFT_CT".to_string(), 0.25)].into(),
                lost_events: 3,
                last_error: String::new(),
            },
            &n1.node_credential,
        ))
        .await
        .unwrap();
    let applied = t.revision().await as u64;
    client
        .ack(authed(
            AckRequest {
                revision: applied,
                errors: vec![ItemError {
                    item: "service/x".into(),
                    message: "map full".into(),
                }],
            },
            &n1.node_credential,
        ))
        .await
        .unwrap();
    let r = t
        .call(
            "GET",
            "/v1/tenants/acme/clusters/prod/nodes/node-1",
            Some(&owner),
            None,
        )
        .await;
    let status = &r.body["status"];
    assert_eq!(status["connected"], true, "{}", r.body);
    assert_eq!(status["agent_version"], "0.2.0");
    assert_eq!(status["applied_revision"], applied);
    assert_eq!(status["health"]["datapath_status"], "ok");
    assert_eq!(status["health"]["lost_events"], 3);
    assert_eq!(status["health"]["apply_errors"][0]["item"], "service/x");

    // Without a credential nothing is accepted.
    let e = client
        .report_health(HealthReport::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = client
        .report_health(authed(HealthReport::default(), "weft_forged"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}
