//! The minimal control-plane harness: a fresh database on the private Postgres that
//! `cargo xtask test` starts, the REST app driven without a socket, the agent service on a
//! loopback port (all from `weft-testkit`).
#![allow(dead_code, unused_imports)] // each test binary uses its own part

pub mod env;
pub mod nodes;

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::Router;
use control_api::state::AppState;
use serde_json::{json, Value};
pub use weft_testkit::bpf::bpf_available;
use weft_testkit::fixtures::{Rest, Via};
pub use weft_testkit::server::{self_signed as agent_cert, Reply};

pub const OPERATOR: &str = "operator-token-for-e2e-tests-0123456789abcdef";

pub struct ControlPlane {
    pub app: Router,
    pub state: AppState,
    /// The test database (for a control-api process on it).
    pub db_url: String,
}

impl Rest for ControlPlane {
    fn via(&self) -> Via<'_> {
        Via::App(&self.app)
    }
}

impl ControlPlane {
    /// A fresh database and the application on it.
    pub async fn new() -> ControlPlane {
        weft_testkit::db::init_tracing("warn,control_api=info,node_agent=info");
        let (state, db_url) = weft_testkit::server::fresh_state("e2e", OPERATOR).await;
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
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        tokio::spawn(control_api::agent::serve_on(
            self.state.clone(),
            listener,
            Some(tls),
            std::future::pending(),
        ));
        (format!("https://{addr}"), cert)
    }

    /// Another replica on the same database: its own pool, change listener and shared
    /// views, as a second control-api process has.
    pub async fn replica(&self) -> ControlPlane {
        let state = weft_testkit::server::state(
            &self.db_url,
            OPERATOR,
            None,
            control_api::ratelimit::FailureLimiter::default(),
        )
        .await;
        ControlPlane {
            app: control_api::app::app(state.clone()),
            state,
            db_url: self.db_url.clone(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
        Rest::call(self, method, path, Some(token), body).await
    }

    /// `GET` of node `name` of `acme/prod`.
    pub async fn node(&self, owner: &str, name: &str) -> Reply {
        let path = format!("/v1/tenants/acme/clusters/prod/nodes/{name}");
        self.call("GET", &path, owner, None).await
    }

    /// Tenant `acme` with cluster `prod`; returns an owner API token.
    pub async fn acme_prod(&self) -> String {
        let owner = self.tenant("acme").await;
        self.cluster("acme", "prod", &owner).await;
        owner
    }

    /// A new single-use join token for `acme/prod`.
    pub async fn join_token(&self, owner: &str) -> String {
        Rest::join_token(
            self,
            "acme",
            "prod",
            owner,
            json!({"name": format!("e2e-{}", uuid::Uuid::new_v4().simple())}),
        )
        .await
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
        self.tenant_with(name, "owner", OPERATOR).await
    }
}
