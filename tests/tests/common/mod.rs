//! The minimal control-plane harness: a fresh database on the private Postgres that
//! `cargo xtask test` starts, the REST app driven without a socket, the agent service on a
//! loopback port. (Trimmed from control-api's own test harness.)
#![allow(dead_code)]

pub mod env;
pub mod nodes;
pub mod sse;

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use control_api::state::AppState;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const OPERATOR: &str = "operator-token-for-e2e-tests-0123456789abcdef";

pub struct ControlPlane {
    pub app: Router,
    pub state: AppState,
    /// The test database (for a control-api process on it).
    pub db_url: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl ControlPlane {
    /// A fresh database and the application on it.
    pub async fn new() -> ControlPlane {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn,control_api=info,node_agent=info")
            .with_test_writer()
            .try_init();
        let url = std::env::var("WEFT_TEST_DATABASE_URL").expect(
            "WEFT_TEST_DATABASE_URL is not set: run the tests with `cargo xtask test`, \
             which starts a private PostgreSQL",
        );
        let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
        let db_url = control_api::db::create_database(&url, &name)
            .await
            .expect("create the test database");
        control_api::db::migrate(&db_url).await.expect("migrate");
        let pool = control_api::db::connect(&db_url, 8).await.expect("connect");
        let state = AppState::new(
            pool,
            Some(control_api::auth::hash_token(OPERATOR)),
            None,
            control_api::ratelimit::FailureLimiter::default(),
        );
        ControlPlane {
            app: control_api::app::app(state.clone()),
            state,
            db_url,
        }
    }

    /// Serves the agent service over TLS on a free loopback port, with a certificate made
    /// for 127.0.0.1 in `dir`; returns its URL and the certificate agents must trust.
    pub async fn serve_agents(&self, dir: &std::path::Path) -> (String, std::path::PathBuf) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        self.serve_agents_on(dir, listener).await
    }

    /// Serves the agent service over TLS on `listener` (which may have been bound inside a
    /// test's network namespace), with a certificate for its address; returns its URL and
    /// the certificate agents must trust.
    pub async fn serve_agents_on(
        &self,
        dir: &std::path::Path,
        listener: std::net::TcpListener,
    ) -> (String, std::path::PathBuf) {
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (cert, key) = agent_cert(dir, addr.ip());
        let tls = control_api::agent::Tls::load(&cert, &key).expect("certificate");
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let svc = control_api::agent::AgentService::new(self.state.clone());
        let server = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .expect("TLS config");
        tokio::spawn(async move {
            let mut server = server;
            server
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        (format!("https://{addr}"), cert)
    }

    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body }
    }

    /// Tenant `acme` with cluster `prod`; returns an owner API token.
    pub async fn acme_prod(&self) -> String {
        let owner = self.tenant("acme").await;
        let r = self
            .call(
                "POST",
                "/v1/tenants/acme/clusters",
                &owner,
                Some(json!({"name": "prod"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        owner
    }

    /// A new single-use join token for `acme/prod`.
    pub async fn join_token(&self, owner: &str) -> String {
        let r = self
            .call(
                "POST",
                "/v1/tenants/acme/clusters/prod/join-tokens",
                owner,
                Some(json!({"name": format!("e2e-{}", uuid::Uuid::new_v4().simple())})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["token"].as_str().expect("token").to_string()
    }

    /// Policy `name`: endpoints labelled `app=to` admit TCP 8080 from `app=from`.
    pub async fn allow(&self, owner: &str, name: &str, to: &str, from: &str) {
        let r = self
            .call(
                "POST",
                "/v1/tenants/acme/policies",
                owner,
                Some(json!({"name": name, "spec": {
                    "endpointSelector": {"matchLabels": {"app": to}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": from}}],
                                 "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }

    pub async fn delete_policy(&self, owner: &str, name: &str) {
        let r = self
            .call(
                "DELETE",
                &format!("/v1/tenants/acme/policies/{name}"),
                owner,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }

    /// Creates a tenant and returns an owner API token for it.
    pub async fn tenant(&self, name: &str) -> String {
        let r = self
            .call("POST", "/v1/tenants", OPERATOR, Some(json!({"name": name})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = self
            .call(
                "POST",
                &format!("/v1/tenants/{name}/api-tokens"),
                OPERATOR,
                Some(json!({"name": "e2e-owner", "role": "owner"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["token"].as_str().expect("token").to_string()
    }
}

/// A self-signed certificate for the agent service at `ip`, made in `dir` with openssl;
/// returns (certificate, key).
pub fn agent_cert(
    dir: &std::path::Path,
    ip: std::net::IpAddr,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("agent.crt"), dir.join("agent.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=weft-e2e"])
        .args(["-addext", &format!("subjectAltName=IP:{ip}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(
        made.success(),
        "openssl made the agent service's certificate"
    );
    (cert, key)
}

/// Whether this machine can run the datapath; with `WEFT_REQUIRE_BPF=1` (set by
/// `cargo xtask test`) it must.
pub fn bpf_available(test: &str) -> bool {
    let required = std::env::var("WEFT_REQUIRE_BPF").is_ok_and(|v| v == "1");
    let problem = if node_agent::datapath::EMBEDDED_OBJECT.is_empty() {
        Some("node-agent was built without WEFT_BPF_OBJ (run `cargo xtask test`)")
    } else if unsafe { libc::geteuid() } != 0 {
        Some("not running as root")
    } else {
        None
    };
    match problem {
        None => true,
        Some(p) if required => panic!("{test}: WEFT_REQUIRE_BPF=1 but {p}"),
        Some(p) => {
            eprintln!("SKIPPED {test}: {p}");
            false
        }
    }
}
