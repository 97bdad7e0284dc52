//! control-api for a test: its state over a database, served on loopback (REST, the agent
//! service) or driven in-process, and the [`Reply`] every call answers with.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use control_api::ratelimit::FailureLimiter;
use control_api::state::AppState;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use weft_proto::v1::agent_client::AgentClient;

/// The application's state on `db_url` (the restricted role's pool, as the API connects),
/// with `operator` as the operator token.
pub async fn state(
    db_url: &str,
    operator: &str,
    oidc: Option<Arc<control_api::oidc::Oidc>>,
    limiter: FailureLimiter,
) -> AppState {
    let pool = control_api::db::connect(db_url, 8).await.expect("connect");
    AppState::new(
        pool,
        Some(control_api::auth::hash_token(operator)),
        oidc,
        limiter,
    )
}

/// A fresh database (`prefix_…`) and the application's state on it, with neither OIDC nor a
/// custom failure limiter.
pub async fn fresh_state(prefix: &str, operator: &str) -> (AppState, String) {
    let db_url = crate::db::fresh(prefix).await;
    let state = state(&db_url, operator, None, FailureLimiter::default()).await;
    (state, db_url)
}

/// Serves the REST API of `state` on a free loopback port; returns its base URL.
pub async fn serve_rest(state: AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = control_api::app::app(state);
    // The binary's own server loop (timeouts, connect info).
    tokio::spawn(control_api::server::serve(
        listener,
        app,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// Serves the REST API of `state` over TLS on a free loopback port, with a self-signed
/// certificate for 127.0.0.1 made in `dir`: the `https://` base URL and the certificate.
pub async fn serve_rest_tls(
    state: AppState,
    dir: &std::path::Path,
) -> (String, std::path::PathBuf) {
    let (cert, key) = self_signed(dir, [127, 0, 0, 1].into());
    let config = control_api::tls::server_config(&cert, &key).expect("TLS configuration");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let listener = control_api::tls::TlsListener::new(listener, config).expect("TLS listener");
    tokio::spawn(control_api::server::serve(
        listener,
        control_api::app::app(state),
        std::future::pending(),
    ));
    (format!("https://127.0.0.1:{port}"), cert)
}

/// Serves the agent service of `state` (plain gRPC) on a free loopback port; its URL.
pub async fn agent_url(state: AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc = control_api::agent::AgentService::new(state);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            // As `serve` does (tonic's default): without it, small messages wait for delayed
            // ACKs (a steady 40 ms a round trip on loopback).
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
    });
    format!("http://{addr}")
}

/// An agent-service request carrying a node credential.
pub fn authed<T>(msg: T, credential: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().expect("header"),
    );
    req
}

/// Serves the agent service of `state` (plain gRPC) on a free loopback port and connects a
/// client to it.
pub async fn serve_agents(state: AppState) -> AgentClient<tonic::transport::Channel> {
    AgentClient::connect(agent_url(state).await)
        .await
        .expect("connect")
}

/// What a REST call answered.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The JSON body; `Null` when empty (or a live event stream), a string when not JSON.
    pub body: Value,
}

impl Reply {
    pub fn etag(&self) -> String {
        self.headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// The `field`s of a problem document's `errors`.
    pub fn fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["field"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An `application/problem+json` answer with this status and `urn:weft:problem:{kind}`.
    pub fn is_problem(&self, status: u16, kind: &str) -> bool {
        self.status.as_u16() == status
            && self
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                == Some("application/problem+json")
            && self.body["type"] == format!("urn:weft:problem:{kind}")
            && self.body["status"] == status
            && self.body["detail"].as_str().is_some_and(|d| !d.is_empty())
    }

    pub(crate) fn parse(status: StatusCode, headers: HeaderMap, bytes: &[u8]) -> Reply {
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// Sends `req` through the REST app, without a socket. A live event stream never ends: it
/// answers with its headers only.
pub async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    if headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        return Reply::parse(status, headers, b"");
    }
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    Reply::parse(status, headers, &bytes)
}

/// A request with an optional bearer token and an optional JSON body.
pub fn request(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Request<Body> {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    req.body(body).expect("request")
}

/// The REST API over HTTP at `url` (see [`serve_rest`]).
#[derive(Clone)]
pub struct Http {
    pub url: String,
    pub client: reqwest::Client,
}

impl Http {
    pub fn new(url: &str) -> Http {
        Http {
            url: url.to_string(),
            client: reqwest::Client::new(),
        }
    }
}

/// A self-signed certificate for a server at `ip` (a leaf, not a CA: rustls refuses a CA
/// certificate as the server's own), made in `dir` with openssl as the demo makes one;
/// returns (certificate, key).
pub fn self_signed(
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
        .args(["-nodes", "-days", "1", "-subj", "/CN=weft-test"])
        .args(["-addext", &format!("subjectAltName=IP:{ip}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(made.success(), "openssl made the certificate");
    (cert, key)
}

/// control-api served on loopback over a fresh database, called over HTTP: what the tests
/// of the CLI and of the terraform provider drive their binaries against.
pub struct Loopback {
    /// The REST API's base URL.
    pub url: String,
    pub state: AppState,
    operator: String,
    http: Http,
}

impl crate::fixtures::Rest for Loopback {
    fn via(&self) -> crate::fixtures::Via<'_> {
        crate::fixtures::Via::Http(&self.http)
    }
}

impl Loopback {
    /// A fresh database (`prefix_…`) and the API on it, with `operator` as the operator
    /// token and OIDC as given.
    pub async fn start(
        prefix: &str,
        operator: &str,
        oidc: Option<Arc<control_api::oidc::Oidc>>,
    ) -> Loopback {
        let db_url = crate::db::fresh(prefix).await;
        let state = state(&db_url, operator, oidc, FailureLimiter::default()).await;
        let url = serve_rest(state.clone()).await;
        Loopback {
            http: Http::new(&url),
            url,
            state,
            operator: operator.to_string(),
        }
    }

    /// A REST call as the test itself (setting the scene, checking what the binary did):
    /// the status and the JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let r = crate::fixtures::Rest::call(self, method, path, Some(token), body).await;
        (r.status.as_u16(), r.body)
    }

    /// Creates a tenant as the operator and returns an API token of `role` for it.
    pub async fn tenant(&self, name: &str, role: &str) -> String {
        crate::fixtures::Rest::tenant_with(self, name, role, &self.operator).await
    }

    /// An API token of `role` in `tenant`, made by the operator.
    pub async fn token(&self, tenant: &str, role: &str) -> String {
        crate::fixtures::Rest::api_token(self, tenant, role, &self.operator).await
    }
}
