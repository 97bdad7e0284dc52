//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, Result};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Liveness: the process answers (no credentials).
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Readiness: Postgres answers too (no credentials).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health),
              (status = 503, body = crate::error::Problem, content_type = "application/problem+json")))]
async fn readyz(State(st): State<AppState>) -> Result<axum::Json<Health>> {
    crate::store::ping(&st.pool)
        .await
        .map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
    Ok(axum::Json(Health { status: "ready" }))
}

/// Prometheus text exposition of the control plane's metrics (no credentials).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(st): State<AppState>) -> Response {
    match st.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::Internal(anyhow::anyhow!("encoding metrics: {e}")).into_response(),
    }
}
