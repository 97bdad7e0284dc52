//! What the control plane's benchmark examples share: their arguments, an in-process
//! control plane with an operator token, calls to its REST app, node credentials on agent
//! calls, and percentiles. Each example includes it with `#[path = "../common/mod.rs"]`.

#![allow(dead_code)] // each example uses its own part

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::http::{header, Request};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// The operator token the benchmarks' control plane accepts.
pub const OPERATOR: &str = "operator-token-for-the-control-plane-benchmarks-0123456789";

pub struct Args {
    pub database_url: String,
    pub out: std::path::PathBuf,
    pub quick: bool,
    /// `--control-api BIN` and `--node-agent BIN`: the release binaries, for benchmarks
    /// that run them as processes.
    pub control_api: Option<std::path::PathBuf>,
    pub node_agent: Option<std::path::PathBuf>,
}

/// `--database-url URL --out FILE [--quick] [--control-api BIN] [--node-agent BIN]`.
pub fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let (mut url, mut out, mut quick) = (None, None, false);
    let (mut control_api, mut node_agent) = (None, None);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--database-url" => url = it.next(),
            "--out" => out = it.next().map(Into::into),
            "--quick" => quick = true,
            "--control-api" => control_api = it.next().map(Into::into),
            "--node-agent" => node_agent = it.next().map(Into::into),
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(Args {
        database_url: url.context("--database-url is required")?,
        out: out.context("--out is required")?,
        quick,
        control_api,
        node_agent,
    })
}

/// A fresh database on the cluster at `admin_url`, migrated, and the control plane's state
/// on it (operator token [`OPERATOR`]).
pub async fn control_plane(
    admin_url: &str,
    prefix: &str,
) -> Result<(control_api::state::AppState, String)> {
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let url = control_api::db::create_database(admin_url, &name).await?;
    control_api::db::migrate(&url).await?;
    Ok((replica(&url).await?, url))
}

/// Another control-api replica on the database at `url`: its own pool, change listener,
/// shared views and writers, as a separate process would have.
pub async fn replica(url: &str) -> Result<control_api::state::AppState> {
    let pool = control_api::db::connect(url, 32).await?;
    Ok(control_api::state::AppState::new(
        pool,
        Some(control_api::auth::hash_token(OPERATOR)),
        None,
        control_api::ratelimit::FailureLimiter::default(),
    ))
}

pub fn authed<T>(msg: T, credential: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {credential}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

pub async fn call(app: &axum::Router, method: &str, path: &str, body: Value) -> Result<Value> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {OPERATOR}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))?;
    let resp = app.clone().oneshot(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{method} {path}: {status} {v}");
    }
    Ok(v)
}

/// A REST call over HTTP to `base` as the operator: the JSON body, or an error with the
/// status and body.
pub async fn rest(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let m = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut rq = http
        .request(m, format!("{base}{path}"))
        .bearer_auth(OPERATOR);
    if let Some(b) = body {
        rq = rq
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = rq
        .send()
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{method} {path}: {status} {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx.min(v.len() - 1)]
}
