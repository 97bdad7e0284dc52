//! Test harness: a fresh database per test on the private Postgres that
//! `cargo xtask test` starts, and the real application driven without a socket.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod oidc;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use control_api::state::AppState;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tower::ServiceExt;

pub const OPERATOR: &str = "operator-token-for-tests-0123456789abcdef";

pub struct TestApp {
    pub app: Router,
    /// The application's state, for serving the agent service in tests.
    pub state: AppState,
    pub pool: PgPool,
    /// URL of this test's own database.
    pub url: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
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
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn,control_api=debug")
            .with_test_writer()
            .try_init();
        let url = std::env::var("WEFT_TEST_DATABASE_URL").expect(
            "WEFT_TEST_DATABASE_URL is not set: run the tests with `cargo xtask test`, \
             which starts a private PostgreSQL",
        );
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let db_url = control_api::db::create_database(&url, &name)
            .await
            .expect("create the test database");
        control_api::db::migrate(&db_url).await.expect("migrate");
        // The app runs as the restricted role; the test's own pool is the schema owner,
        // so fixtures and checks see every tenant's rows.
        let app_pool = control_api::db::connect(&db_url, 8).await.expect("connect");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await
            .expect("owner pool");
        let operator = Some(control_api::auth::hash_token(OPERATOR));
        let state = AppState::new(app_pool, operator, oidc, limiter);
        TestApp {
            app: control_api::app::app(state.clone()),
            state,
            pool,
            url: db_url,
        }
    }

    /// Another control-api replica on the same database: its own pool and listener.
    pub async fn replica(&self) -> AppState {
        let pool = control_api::db::connect(&self.url, 8)
            .await
            .expect("connect");
        AppState::new(
            pool,
            Some(control_api::auth::hash_token(OPERATOR)),
            self.state.oidc.clone(),
            control_api::ratelimit::FailureLimiter::default(),
        )
    }

    /// Sends a request; `body` is sent as JSON when given.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
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
        self.send(req.body(body).expect("request")).await
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        // A live event stream never ends: answer with its headers only.
        if headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
        {
            return Reply {
                status,
                headers,
                body: Value::Null,
            };
        }
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Creates a tenant as the operator and returns an owner token for it.
    pub async fn tenant(&self, name: &str) -> String {
        let r = self
            .call(
                "POST",
                "/v1/tenants",
                Some(OPERATOR),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        self.token(name, "owner", OPERATOR).await
    }

    /// Creates an API token with `role` in `tenant`, as `by`.
    pub async fn token(&self, tenant: &str, role: &str, by: &str) -> String {
        let name = format!("{role}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let r = self
            .call(
                "POST",
                &format!("/v1/tenants/{tenant}/api-tokens"),
                Some(by),
                Some(json!({"name": name, "role": role})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["token"].as_str().expect("token").to_string()
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc = control_api::agent::AgentService::new(state);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    weft_proto::v1::agent_client::AgentClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// A request carrying a node credential.
pub fn authed<T>(msg: T, credential: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().expect("header"),
    );
    req
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
