//! The agent service over real gRPC: join tokens, registration, node credentials,
//! reports, and what REST then shows.

#[path = "agent/backpressure.rs"]
mod backpressure;
mod common;
#[path = "agent/sync.rs"]
mod sync;

use axum::http::StatusCode;
use common::{agent_on, authed, next_sync, open_sync, report_endpoints, Rest, TestApp};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::sync_response::Kind;
use weft_proto::v1::{
    AckRequest, HealthReport, ItemError, RegisterRequest, ReportedEndpoint, SyncRequest,
};

/// Serves the agent service on a free loopback port and connects a client to it.
async fn agent(t: &TestApp) -> AgentClient<Channel> {
    agent_on(t.state.clone()).await
}

async fn join_token(t: &TestApp, owner: &str, cluster: &str, body: serde_json::Value) -> String {
    t.join_token("acme", cluster, owner, body).await
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

/// An endpoint as an agent reports it: one `app` label, one address.
fn endpoint(name: &str, app: &str, ip: &str) -> ReportedEndpoint {
    ReportedEndpoint {
        named_ports: Vec::new(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ips: vec![ip.into()],
    }
}

/// Tenant `acme` with cluster `prod` and node `node-1` registered through a fresh agent
/// service, reporting `endpoints`; returns the owner token, the client and the node.
async fn node_with(
    t: &TestApp,
    endpoints: Vec<ReportedEndpoint>,
) -> (
    String,
    AgentClient<Channel>,
    weft_proto::v1::RegisterResponse,
) {
    let owner = t.tenant("acme").await;
    t.cluster("acme", "prod", &owner).await;
    let mut client = agent(t).await;
    let tok = join_token(t, &owner, "prod", json!({"name": "n"})).await;
    let node = client
        .register(register(&tok, "node-1", false))
        .await
        .unwrap()
        .into_inner();
    report_endpoints(&mut client, &node.node_credential, endpoints).await;
    (owner, client, node)
}

#[tokio::test]
async fn join_tokens_register_nodes_once() {
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    t.cluster("acme", "prod", &owner).await;
    let mut client = agent(&t).await;
    let single = join_token(&t, &owner, "prod", json!({"name": "once"})).await;
    assert!(single.starts_with("weft_join_"), "{single}");
    // A join token registers a node; it is not a bearer token for the REST API.
    let as_bearer = t.get("/v1/tenants/acme/clusters", &single).await;
    assert_eq!(
        as_bearer.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        as_bearer.body
    );

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
    // Used before it is replaced: the replica has it cached.
    client
        .report_health(authed(HealthReport::default(), &resp.node_credential))
        .await
        .expect("the credential works");
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
        .get("/v1/tenants/acme/clusters/prod/join-tokens", &owner)
        .await;
    assert!(!list.body.to_string().contains(&multi));
    assert_eq!(list.body["items"][1]["uses"], 1);
    let r = t
        .delete("/v1/tenants/acme/clusters/prod/join-tokens/fleet", &owner)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let e = client
        .register(register(&multi, "node-3", false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(t.count("nodes").await, 1);

    // Deleting the cluster takes its nodes' credentials with it.
    let r = t.delete("/v1/tenants/acme/clusters/prod", &owner).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let e = client
        .report_health(authed(HealthReport::default(), &replaced.node_credential))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unauthenticated,
        "a deleted cluster's node credential no longer works"
    );
}

#[tokio::test]
async fn reports_show_up_in_node_status_and_inventory() {
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    for c in ["prod", "staging"] {
        t.cluster("acme", c, &owner).await;
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

    let rev0 = t.revision().await;
    report_endpoints(
        &mut client,
        &n1.node_credential,
        vec![
            endpoint("web-1", "web", "10.0.1.5"),
            endpoint("db-1", "db", "10.0.1.6"),
        ],
    )
    .await;
    report_endpoints(
        &mut client,
        &n2.node_credential,
        vec![endpoint("web-9", "web", "10.0.2.5")],
    )
    .await;
    assert!(t.revision().await > rev0, "new endpoints bump the revision");

    let r = t.get("/v1/tenants/acme/endpoints", &owner).await;
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
    report_endpoints(
        &mut client,
        &n1.node_credential,
        vec![
            endpoint("web-1", "web", "10.0.1.5"),
            endpoint("db-1", "db", "10.0.1.6"),
        ],
    )
    .await;
    assert_eq!(t.revision().await, rev1);
    report_endpoints(
        &mut client,
        &n1.node_credential,
        vec![endpoint("web-1", "web", "10.0.1.5")],
    )
    .await;
    let r = t
        .get("/v1/tenants/acme/endpoints?cluster=prod", &owner)
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
                fqdn_addresses_evicted: 7,
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
        .get("/v1/tenants/acme/clusters/prod/nodes/node-1", &owner)
        .await;
    let status = &r.body["status"];
    assert_eq!(status["connected"], true, "{}", r.body);
    assert_eq!(status["agent_version"], "0.2.0");
    // An ack with errors does not realize the revision.
    assert_eq!(status["applied_revision"], 0, "{}", r.body);
    assert_eq!(status["health"]["apply_errors"][0]["item"], "service/x");
    client
        .ack(authed(
            AckRequest {
                revision: applied,
                errors: vec![],
            },
            &n1.node_credential,
        ))
        .await
        .unwrap();
    let r = t
        .get("/v1/tenants/acme/clusters/prod/nodes/node-1", &owner)
        .await;
    let status = &r.body["status"];
    assert_eq!(status["applied_revision"], applied);
    assert_eq!(status["health"]["datapath_status"], "ok");
    assert_eq!(status["health"]["lost_events"], 3);
    assert_eq!(status["health"]["fqdn_addresses_evicted"], 7);
    assert_eq!(status["health"]["apply_errors"], serde_json::json!([]));
    // The FQDN cap's evictions are a metric per node.
    let m = t.call("GET", "/metrics", None, None).await;
    let text = m.body.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("weft_fqdn_addresses_evicted{tenant=\"acme\",node=\"node-1\"} 7"),
        "{text}"
    );

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

/// A flood of wrong join tokens is limited (per address and per token); a valid token from
/// the same address still registers.
#[tokio::test]
async fn wrong_join_tokens_are_limited_and_a_valid_one_still_registers() {
    let t = TestApp::with_limiter(control_api::ratelimit::FailureLimiter::new(
        5,
        std::time::Duration::from_secs(60),
    ))
    .await;
    let owner = t.tenant("acme").await;
    t.cluster("acme", "prod", &owner).await;
    let mut client = agent(&t).await;
    let mut codes = Vec::new();
    for i in 0..8 {
        let e = client
            .register(register(&format!("weft_jt_wrong{i}"), "node-x", false))
            .await
            .expect_err("refused");
        codes.push(e.code());
    }
    assert_eq!(
        codes,
        [
            [Code::Unauthenticated; 5].as_slice(),
            [Code::ResourceExhausted; 3].as_slice()
        ]
        .concat()
    );
    let tok = join_token(&t, &owner, "prod", json!({"name": "n"})).await;
    let node = client
        .register(register(&tok, "node-1", false))
        .await
        .expect("a valid join token is never limited")
        .into_inner();
    assert!(!node.node_credential.is_empty());
}

/// The agent service of `t` over TLS with a self-signed certificate for 127.0.0.1 (as the
/// demo makes one), on a free port: the port and the certificate (PEM).
async fn tls_agent_service(t: &TestApp) -> (u16, Vec<u8>) {
    let dir = weft_testkit::tmp::dir("tls");
    let (cert, key) = weft_testkit::server::self_signed(dir.path(), [127, 0, 0, 1].into());
    let tls = control_api::agent::Tls::load(&cert, &key).expect("certificate");
    let ca = std::fs::read(&cert).expect("certificate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let state = t.state.clone();
    tokio::spawn(async move {
        let served =
            control_api::agent::serve_on(state, listener, Some(tls), std::future::pending());
        if let Err(e) = served.await {
            panic!("agent service: {e:#}");
        }
    });
    (port, ca)
}

/// A client of the TLS agent service trusting `ca`.
async fn tls_agent(port: u16, ca: &[u8]) -> AgentClient<Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("url")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .expect("TLS config");
    AgentClient::new(endpoint.connect().await.expect("TLS connection"))
}

#[tokio::test]
async fn the_agent_service_speaks_tls() {
    use tonic::transport::Endpoint;
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    t.cluster("acme", "prod", &owner).await;
    let tok = join_token(&t, &owner, "prod", json!({"name": "p", "max_uses": 0})).await;
    let (port, ca) = tls_agent_service(&t).await;
    let mut client = tls_agent(port, &ca).await;
    let r = client
        .register(register(&tok, "node-1", false))
        .await
        .expect("register over TLS");
    assert!(r.into_inner().node_credential.starts_with("weft_"));

    // A plaintext client gets nowhere: TCP connects (HTTP/2 starts lazily), then the TLS
    // listener hangs up on the HTTP/2 preface, so the call fails in transport, with no
    // status of the service's own.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("the TCP connection is accepted");
    let e = AgentClient::new(plain)
        .register(register(&tok, "node-2", false))
        .await
        .expect_err("plaintext must not be served");
    assert_eq!(e.code(), tonic::Code::Unknown, "{e:?}");
    assert_eq!(e.message(), "transport error", "{e:?}");
    let mut cause = std::error::Error::source(&e);
    let io = loop {
        match cause {
            Some(c) => match c.downcast_ref::<std::io::Error>() {
                Some(io) => break Some(io.kind()),
                None => cause = c.source(),
            },
            None => break None,
        }
    };
    assert!(
        matches!(
            io,
            Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
        ),
        "the server hung up: {e:?}"
    );
    assert_eq!(t.count("nodes").await, 1);
}

/// A TLS handshake with the agent service from `local` (any 127/8 address is this
/// machine's), trusting only `roots`: whether it completed.
async fn handshake_from(local: std::net::IpAddr, port: u16, roots: rustls::RootCertStore) -> bool {
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind((local, 0).into()).expect("bind");
    let Ok(tcp) = socket.connect(([127, 0, 0, 1], port).into()).await else {
        return false;
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .is_ok()
}

#[tokio::test]
async fn failed_tls_handshakes_are_limited_per_address_and_good_agents_connect() {
    use rustls::pki_types::pem::PemObject;
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    t.cluster("acme", "prod", &owner).await;
    let tok = join_token(&t, &owner, "prod", json!({"name": "p", "max_uses": 0})).await;
    let (port, ca) = tls_agent_service(&t).await;
    let mut trusted = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        trusted.add(c.expect("PEM")).expect("root");
    }
    let bad: std::net::IpAddr = [127, 0, 0, 2].into();
    assert!(
        handshake_from(bad, port, trusted.clone()).await,
        "a client that trusts the certificate completes its handshake"
    );
    // Clients that do not trust the server's certificate abort their handshakes.
    let limit = control_api::ratelimit::MAX_FAILURES;
    for _ in 0..limit {
        assert!(!handshake_from(bad, port, rustls::RootCertStore::empty()).await);
    }
    // Past the limit the address is hung up on before any handshake, even when it would
    // now succeed (the last failures may still be counting: a few tries).
    let mut refused = false;
    for _ in 0..20 {
        if !handshake_from(bad, port, trusted.clone()).await {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        refused,
        "127.0.0.2 is hung up on after {limit} failed handshakes"
    );
    // An agent from another address is served as before.
    let mut good = tls_agent(port, &ca).await;
    let r = good
        .register(register(&tok, "node-1", false))
        .await
        .expect("register over TLS");
    assert!(r.into_inner().node_credential.starts_with("weft_"));
}
