//! The node-local API of `node-agent run`: JSON over HTTP/1.1 on a unix socket (default
//! `/run/weft/agent.sock`, mode 0600, so only root reaches it), and the client the
//! `node-agent endpoint ...` commands use.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/endpoints` | 200, `[EndpointView]` |
//! | `POST /v1/endpoints` with an `EndpointSpec` | 201, `EndpointView` (also for a repeated identical add) |
//! | `DELETE /v1/endpoints/{name}` | 200, `{"name", "deleted": bool}` (idempotent) |
//! | `GET /v1/status` | 200, `{"endpoints": n, "flows": FlowStatsView}` |
//!
//! Errors are `application/problem+json` with `status` and a `detail` naming what was wrong.
//! `curl --unix-socket /run/weft/agent.sock http://agent/v1/endpoints` works too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::manager::{EndpointView, Manager};
use super::{EndpointError, EndpointSpec};
use crate::flows::FlowStats;

/// Default path of the socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/agent.sock";

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub manager: Arc<Manager>,
    pub flows: Arc<FlowStats>,
}

fn problem(status: u16, detail: String) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "type": "urn:weft:problem:node-agent",
        "title": code.canonical_reason().unwrap_or("error"),
        "status": status,
        "detail": detail,
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

impl IntoResponse for EndpointError {
    fn into_response(self) -> Response {
        problem(self.status(), self.to_string())
    }
}

async fn list(State(st): State<ApiState>) -> Json<Vec<EndpointView>> {
    Json(st.manager.list().await)
}

async fn add(State(st): State<ApiState>, body: Bytes) -> Response {
    let spec: EndpointSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return problem(400, format!("invalid endpoint: {e}")),
    };
    match st.manager.add(spec).await {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn del(State(st): State<ApiState>, UrlPath(name): UrlPath<String>) -> Response {
    match st.manager.del(&name).await {
        Ok(deleted) => Json(json!({"name": name, "deleted": deleted})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn status(State(st): State<ApiState>) -> Json<Value> {
    Json(json!({
        "endpoints": st.manager.count().await,
        "flows": st.flows.view(),
    }))
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/endpoints", get(list).post(add))
        .route("/v1/endpoints/{name}", delete(del))
        .route("/v1/status", get(status))
        .with_state(state)
}

/// Binds the socket (replacing a stale one; the directory is created 0700 when missing),
/// makes it 0600 and serves until the task is dropped or aborted.
pub async fn serve(path: &Path, state: ApiState) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "node-local API serving");
    let app = router(state);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "node-local API stopped");
        }
    }))
}

// ---------------------------------------------------------------------------------------
// Client

/// Why a call to the agent's API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path} (is `node-agent run` running, with --api-socket {path}?): {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Http(String),
    /// The agent refused: its problem detail.
    #[error("{0}")]
    Refused(String),
}

/// One request to the agent's API; the JSON answer of a 2xx status.
pub async fn call(
    socket: &Path,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> Result<Value, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let http = |e: &dyn std::fmt::Display| ClientError::Http(e.to_string());
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "node-agent");
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = sender
        .send_request(req.body(body).map_err(|e| http(&e))?)
        .await
        .map_err(|e| http(&e))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        Err(ClientError::Refused(
            value["detail"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{status}: {}", String::from_utf8_lossy(&bytes))),
        ))
    }
}

/// A typed client of the endpoint API.
pub struct Client {
    pub socket: PathBuf,
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| ClientError::Http(format!("unexpected answer: {e}")))
}

impl Client {
    pub async fn add(&self, spec: &EndpointSpec) -> Result<EndpointView, ClientError> {
        let body = serde_json::to_value(spec).map_err(|e| ClientError::Http(e.to_string()))?;
        decode(call(&self.socket, "POST", "/v1/endpoints", Some(body)).await?)
    }

    /// Whether the endpoint existed.
    pub async fn del(&self, name: &str) -> Result<bool, ClientError> {
        // Names are DNS labels; anything else cannot exist, and must not bend the path.
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ClientError::Refused(format!(
                "endpoint name {name:?}: must contain only letters, digits and '-'"
            )));
        }
        let v = call(
            &self.socket,
            "DELETE",
            &format!("/v1/endpoints/{name}"),
            None,
        )
        .await?;
        Ok(v["deleted"].as_bool().unwrap_or(false))
    }

    pub async fn list(&self) -> Result<Vec<EndpointView>, ClientError> {
        decode(call(&self.socket, "GET", "/v1/endpoints", None).await?)
    }

    pub async fn status(&self) -> Result<Value, ClientError> {
        call(&self.socket, "GET", "/v1/status", None).await
    }
}

/// `endpoint list` as a table.
pub fn table(list: &[EndpointView]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.ip.clone(),
                super::format_labels(&e.labels),
                e.netns.clone(),
                e.interface.clone(),
                e.identity.map_or("pending".into(), |i| i.to_string()),
                e.endpoint_id.clone().unwrap_or_else(|| "pending".into()),
            ]
        })
        .collect();
    crate::debug::table(
        &[
            "NAME",
            "IP",
            "LABELS",
            "NETNS",
            "INTERFACE",
            "IDENTITY",
            "ENDPOINT-ID",
        ],
        &rows,
    )
}
