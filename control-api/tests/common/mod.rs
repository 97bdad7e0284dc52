//! Test harness: a fresh database per test on the private Postgres that
//! `cargo xtask test` starts, and the real application driven without a socket (all from
//! `weft-testkit`; what is here is control-api's own view: counts, revisions, replicas).
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod oidc;

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use control_api::state::AppState;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
pub use weft_testkit::fixtures::Rest;
use weft_testkit::fixtures::Via;
pub use weft_testkit::server::Reply;

pub const OPERATOR: &str = "operator-token-for-tests-0123456789abcdef";

pub struct TestApp {
    pub app: Router,
    /// The application's state, for serving the agent service in tests.
    pub state: AppState,
    pub pool: PgPool,
    /// URL of this test's own database.
    pub url: String,
}

impl Rest for TestApp {
    fn via(&self) -> Via<'_> {
        Via::App(&self.app)
    }
}

impl TestApp {
    pub async fn new() -> TestApp {
        Self::with_state(None, control_api::ratelimit::FailureLimiter::default()).await
    }

    /// For tests that make many failed attempts on purpose.
    pub async fn with_limiter(limiter: control_api::ratelimit::FailureLimiter) -> TestApp {
        Self::with_state(None, limiter).await
    }

    /// A fresh database, and the application with OIDC and the failure limiter as given.
    pub async fn with_state(
        oidc: Option<Arc<control_api::oidc::Oidc>>,
        limiter: control_api::ratelimit::FailureLimiter,
    ) -> TestApp {
        weft_testkit::db::init_tracing("warn,control_api=debug");
        let db_url = weft_testkit::db::fresh("t").await;
        // The app runs as the restricted role; the test's own pool is the schema owner,
        // so fixtures and checks see every tenant's rows.
        let state = weft_testkit::server::state(&db_url, OPERATOR, oidc, limiter).await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await
            .expect("owner pool");
        TestApp {
            app: control_api::app::app(state.clone()),
            state,
            pool,
            url: db_url,
        }
    }

    /// Another control-api replica on the same database: its own pool and listener.
    pub async fn replica(&self) -> AppState {
        weft_testkit::server::state(
            &self.url,
            OPERATOR,
            self.state.oidc.clone(),
            control_api::ratelimit::FailureLimiter::default(),
        )
        .await
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        weft_testkit::server::send(&self.app, req).await
    }

    /// Creates a tenant as the operator and returns an owner token for it.
    pub async fn tenant(&self, name: &str) -> String {
        self.tenant_with(name, "owner", OPERATOR).await
    }

    /// Creates an API token with `role` in `tenant`, as `by`.
    pub async fn token(&self, tenant: &str, role: &str, by: &str) -> String {
        self.api_token(tenant, role, by).await
    }

    pub async fn revision(&self) -> i64 {
        sqlx::query_scalar("SELECT revision FROM desired_state")
            .fetch_one(&self.pool)
            .await
            .expect("revision")
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

/// Serves the agent service of `state` (a replica) on a free loopback port and connects a
/// client to it.
pub async fn agent_on(
    state: AppState,
) -> weft_proto::v1::agent_client::AgentClient<tonic::transport::Channel> {
    weft_testkit::server::serve_agents(state).await
}

/// A request carrying a node credential.
pub use weft_testkit::server::authed;

/// Opens a node's `Sync` stream, resuming from `resume_from`, announcing `capability`.
pub async fn open_sync(
    client: &mut weft_proto::v1::agent_client::AgentClient<tonic::transport::Channel>,
    credential: &str,
    resume_from: u64,
    capability: u32,
) -> tonic::Streaming<weft_proto::v1::SyncResponse> {
    let req = weft_proto::v1::SyncRequest {
        resume_from_revision: resume_from,
        capability_version: capability,
    };
    client
        .sync(authed(req, credential))
        .await
        .expect("sync")
        .into_inner()
}

/// Reports the node's endpoints (all of them: the report replaces what it had).
pub async fn report_endpoints(
    client: &mut weft_proto::v1::agent_client::AgentClient<tonic::transport::Channel>,
    credential: &str,
    endpoints: Vec<weft_proto::v1::ReportedEndpoint>,
) {
    let report = weft_proto::v1::EndpointReport { endpoints };
    client
        .report_endpoints(authed(report, credential))
        .await
        .expect("report endpoints");
}

/// Acknowledges `revision` as applied without errors.
pub async fn ack(
    client: &mut weft_proto::v1::agent_client::AgentClient<tonic::transport::Channel>,
    credential: &str,
    revision: u64,
) {
    let req = weft_proto::v1::AckRequest {
        revision,
        errors: vec![],
    };
    client.ack(authed(req, credential)).await.expect("ack");
}

/// The next message of a sync stream (within 5 s).
pub async fn next_sync(
    stream: &mut tonic::Streaming<weft_proto::v1::SyncResponse>,
) -> weft_proto::v1::SyncResponse {
    tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("a sync message within 5 s")
        .expect("stream ok")
        .expect("stream open")
}

/// The next message that changes something for the node: empty deltas (a revision that
/// changed nothing here, sent so the node can say it is current) are skipped.
pub async fn next_change(
    stream: &mut tonic::Streaming<weft_proto::v1::SyncResponse>,
) -> weft_proto::v1::SyncResponse {
    loop {
        let m = next_sync(stream).await;
        match &m.kind {
            Some(weft_proto::v1::sync_response::Kind::Delta(d))
                if *d == weft_proto::v1::Delta::default() => {}
            _ => return m,
        }
    }
}
